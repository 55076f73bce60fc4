"""Self-supervised pretraining: a generic trainer (DDP, AMP, checkpoints, exact resume, export)
and the methods that plug into it (DrasCLR; see :mod:`drasclr_monailabel.ssl.method`)."""
