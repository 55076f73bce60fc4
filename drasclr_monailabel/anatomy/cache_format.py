"""Version of the preprocessing cache's layout, recorded in every ``<id>_qa.json``: a cache
written under another version is redone by ``drasclr preprocess`` and refused by pretraining."""

CACHE_FORMAT = "drasclr-cache/1"
