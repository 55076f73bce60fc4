"""One rank of a DrasCLR pretraining run under torchrun, for tests/unit/test_moco_ddp.py.

Runs the real trainer and method, records the keys of this rank's own samples at every step
(before they are enqueued) and writes its final state to ``OUT/rank<RANK>.pt``:

    torchrun --nnodes 2 --nproc_per_node 1 --rdzv_backend c10d --rdzv_endpoint 127.0.0.1:PORT \
        -m tests.unit.ddp_pretrain_worker ATLAS CACHE OUT [KEY=VALUE ...]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch


def main(argv: list[str]) -> None:
    atlas, cache, out, *overrides = argv
    torch.set_num_threads(1)
    from drasclr_monailabel.ssl.distributed import setup, teardown
    from drasclr_monailabel.ssl.drasclr import DrasclrMethod
    from drasclr_monailabel.ssl.recipe import load_recipe
    from drasclr_monailabel.ssl.trainer import Trainer

    config = load_recipe(None, [*overrides, f"data.atlas={atlas}"])
    context = setup("cpu")
    torch.manual_seed(config.train.seed)
    method = DrasclrMethod(config, context, Path(cache))
    own_keys: list[dict] = []  # this rank's samples at each step: landmark, subjects, keys
    embed_keys = method._embed_keys

    def recording_embed_keys(views, subjects, location, generator):
        keys, key_subjects, own = embed_keys(views, subjects, location, generator)
        own_keys.append({"keys": keys[own].detach().float().clone(), "subjects": key_subjects[own].clone(),
                         "global_subjects": key_subjects.clone()})
        return keys, key_subjects, own

    method._embed_keys = recording_embed_keys
    landmarks: list[int] = []
    training_step = method.training_step

    def recording_training_step(network, batch, generator):
        landmarks.append(batch["landmark"])
        return training_step(network, batch, generator)

    method.training_step = recording_training_step
    Trainer(method, config, Path(out) / "run", context).fit()
    for record, landmark in zip(own_keys, landmarks):
        record["landmark"] = landmark
    torch.save({"rank": context.rank, "world_size": context.world_size, "queues": method.queues.state_dict(),
                "network": {k: v.clone() for k, v in method.network.state_dict().items()},
                "key_network": {k: v.clone() for k, v in method.key_network.state_dict().items()},
                "own_keys": own_keys}, Path(out) / f"rank{context.rank}.pt")
    teardown(context)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main(sys.argv[1:])
