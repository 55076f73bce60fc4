"""Joint image-volume self-supervised pretraining (intra-inter contrastive clustering).

Modules: ``config`` (the recipe), ``sources`` and ``stacks`` (finding and reading volumes),
``data`` (dataset and sampler), ``augment`` (multi-crop on the device), ``network`` (encoder and
heads), ``losses`` (SwAV, DeepCluster-v2, masked prediction), ``method`` (the trainer plug-in),
``embed`` (slice and volume embeddings from an exported encoder).
"""
