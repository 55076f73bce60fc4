"""Two-process (Gloo, CPU) DDP pretraining: every rank ends with the same queues and parameters,
and the queues hold the keys of both ranks (gathered before enqueueing)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

WORLD_SIZE = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(rank: int, port: int, atlas: str, cache: str, out: str, overrides: list[str]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD_SIZE))
    torch.set_num_threads(1)
    from drasclr_monailabel.ssl.distributed import setup, teardown
    from drasclr_monailabel.ssl.drasclr import DrasclrMethod
    from drasclr_monailabel.ssl.recipe import load_recipe
    from drasclr_monailabel.ssl.trainer import Trainer

    config = load_recipe(None, [*overrides, f"data.atlas={atlas}"])
    context = setup("cpu")
    torch.manual_seed(config.train.seed)
    method = DrasclrMethod(config, context, Path(cache))
    local_keys = []  # (keys, landmark) this rank computed at each step, before the gather
    enqueue_step = method.after_step

    def recording_after_step(step: int) -> None:
        keys, landmark = method._pending
        local_keys.append((keys.detach().float().clone(), landmark))
        enqueue_step(step)

    method.after_step = recording_after_step
    Trainer(method, config, Path(out) / "run", context).fit()
    torch.save({"queues": method.queues.keys.clone(), "pointers": list(method.queues.pointers),
                "network": {k: v.clone() for k, v in method.network.state_dict().items()},
                "key_network": {k: v.clone() for k, v in method.key_network.state_dict().items()},
                "local_keys": local_keys}, Path(out) / f"rank{rank}.pt")
    teardown(context)


@pytest.mark.slow
def test_two_rank_training_keeps_queues_and_weights_identical(easy_atlas: Path, easy_cache: Path, tmp_path: Path) -> None:
    from tests.unit.test_pretrain import EASY

    overrides = [*EASY, "train.max_steps=3", "moco.queue_size=32"]
    mp.spawn(_rank_main, args=(_free_port(), str(easy_atlas), str(easy_cache), str(tmp_path), overrides), nprocs=WORLD_SIZE)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]
    assert torch.equal(ranks[0]["queues"], ranks[1]["queues"])
    assert ranks[0]["pointers"] == ranks[1]["pointers"]
    # Parameters agree exactly; BatchNorm running statistics are each rank's own between forwards
    # (DDP broadcasts rank 0's at the start of each forward; checkpoints and exports are rank 0's).
    for part in ("network", "key_network"):
        for name, tensor in ranks[0][part].items():
            if "running_" not in name and "num_batches" not in name:
                assert torch.equal(tensor, ranks[1][part][name]), f"{part}.{name}"
    queues = ranks[0]["queues"].float()
    for rank in ranks:
        assert len(rank["local_keys"]) == 3
        for keys, landmark in rank["local_keys"]:
            # each rank's keys of every step are in the queue of their landmark, on both ranks
            similarity = keys @ queues[landmark].t()
            assert torch.allclose(similarity.max(dim=1).values, torch.ones(keys.shape[0]), atol=1e-5)
