"""The volume losses reach the 2D slice encoder: L_inter and masked prediction each give the ResNet
trunk a gradient through the method's real step; a sampled subset of slices carries it, scaled so
that on average it is the gradient through every slice; activation recomputation changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from drasclr_monailabel.models.slice_encoder import SliceEncoderArchitecture
from drasclr_monailabel.models.volume_transformer import VolumeTransformerArchitecture
from drasclr_monailabel.ssl.distributed import setup
from drasclr_monailabel.ssl.joint2d3d.method import Joint2d3dMethod
from drasclr_monailabel.ssl.joint2d3d.network import Joint2d3dNetwork, StepPlan

ONLY = {"inter": "{intra: 0.0, masked: 0.0, inter: 1.0}", "masked": "{intra: 0.0, masked: 1.0, inter: 0.0}"}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/fixtures/threads.py


def _trunk_gradients(tiny_recipe, volumes: Path, stage: str, *overrides: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Gradients of the slice encoder's parameters after one real step whose only loss is
    ``stage``'s; also the step's ``backprop`` mask (all True when every slice back-propagates)."""
    config = tiny_recipe(f"schedule=[{stage}]", *overrides)
    method = Joint2d3dMethod(config, setup("cpu"), volumes)
    dataset, sampler = method.build_data()
    sampler.set_epoch(0)
    generator = torch.Generator().manual_seed(0)
    batch = method.prepare_batch(dataset[next(iter(sampler))], generator)
    method.training_step(method.network, batch, generator).loss.backward()
    slices = method.network.encoder.slices
    gradients = {name: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for name, p in slices.named_parameters()}
    return gradients, batch.get("backprop", torch.ones(batch["views"].shape[0], dtype=torch.bool))


@pytest.mark.parametrize("loss", ["inter", "masked"])
def test_each_volume_loss_trains_the_resnet_trunk(tiny_recipe, phantom_volume_dir: Path, loss: str) -> None:
    gradients, backprop = _trunk_gradients(tiny_recipe, phantom_volume_dir, ONLY[loss], "volume_backprop.slices=3")
    assert int(backprop.sum()) == 3 * backprop.numel() // 8  # 3 of the 8 slices of every view
    trunk = {name: g for name, g in gradients.items() if not name.startswith("token.")}
    assert float(gradients["stem.0.weight"].abs().sum()) > 0  # the first convolution learns from the volume loss
    for stage in range(4):  # and every stage (residual branches start at zero, so their last BatchNorm moves first)
        assert any(float(g.abs().sum()) > 0 for name, g in trunk.items() if name.startswith(f"stages.{stage}.")), stage
    frozen, _ = _trunk_gradients(tiny_recipe, phantom_volume_dir, ONLY[loss].replace("}", ", encoder_in_3d: false}"))
    assert all(float(g.abs().sum()) == 0 for name, g in frozen.items() if not name.startswith("token."))
    assert float(frozen["token.weight"].abs().sum()) > 0  # the token projection still learns without the trunk


def _network() -> Joint2d3dNetwork:
    torch.manual_seed(0)
    return Joint2d3dNetwork(SliceEncoderArchitecture(depth=18, width=8, embedding_dim=16), VolumeTransformerArchitecture(depth=1, heads=2, points=2),
                            projection_hidden=16, projection_dim=8, slice_prototypes=4, volume_prototypes=3, heads=1, learned_prototypes=True)


def _gradient(network: Joint2d3dNetwork, slices: torch.Tensor, weights: torch.Tensor, backprop: torch.Tensor | None,
              recompute: bool = False) -> torch.Tensor:
    """Gradient of a fixed linear function of the view features w.r.t. the stem convolution."""
    network.zero_grad()
    plan = StepPlan(intra=False, inter=True, masked=False, encoder_in_3d=True, freeze_prototypes=False, recompute=recompute)
    (network.view_features(slices, backprop, plan) * weights).sum().backward()
    return network.encoder.slices.stem[0].weight.grad.clone()


def test_a_scaled_slice_subset_is_on_average_the_gradient_through_every_slice() -> None:
    network = _network().eval()  # population BatchNorm: features do not depend on how the slices are split
    slices = torch.randn(8, 1, 32, 32)
    weights = torch.randn(8, network.encoder.slices.token.in_features)
    full = _gradient(network, slices, weights, None)
    subsets = [torch.arange(8) % 4 == part for part in range(4)]  # 4 disjoint pairs
    average = torch.stack([_gradient(network, slices, weights, chosen) for chosen in subsets]).mean(dim=0)
    torch.testing.assert_close(average, full, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(_gradient(network, slices, weights, subsets[0]), full, rtol=1e-2)  # one pair alone is an estimate


def test_recomputation_gives_the_same_features_and_gradients() -> None:
    network = _network().train()
    slices = torch.randn(6, 1, 32, 32)
    weights = torch.randn(6, network.encoder.slices.token.in_features)
    chosen = torch.tensor([True, False, True, False, False, True])
    torch.testing.assert_close(_gradient(network, slices, weights, chosen, recompute=True), _gradient(network, slices, weights, chosen))
