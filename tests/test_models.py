"""Model registry: shapes for any channel/class count, internal normalisation, stem/head splits."""

from __future__ import annotations

import pytest
import torch

from workbench.core.models import MODELS, build_model
from workbench.core.validation import WorkbenchError


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize(("channels", "classes", "size"), [(1, 10, 28), (3, 43, 32)])
def test_output_shape_and_split(name: str, channels: int, classes: int, size: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, in_channels=channels, num_classes=classes, image_size=size).eval()
    x = torch.rand(2, channels, size, size)
    logits = model(x)
    assert logits.shape == (2, classes)
    for at in model.split_points[1:]:
        stem, head = model.split(at)
        assert torch.allclose(head(stem(x)), logits, atol=1e-5)


def test_wrn_default_split_matches_trap_and_replace() -> None:
    model = build_model("wrn16_1", in_channels=3, num_classes=10, image_size=32)
    stem, head = model.split()
    assert stem(torch.rand(1, 3, 32, 32)).shape == (1, 64, 8, 8)
    assert [name for name, _ in head.named_children()] == ["block3_1", "final", "fc"]
    assert sum(p.numel() for p in model.parameters()) < 200_000  # WRN-16-1 is ~0.17 M parameters


def test_normalisation_is_inside_and_saved() -> None:
    model = build_model("lenet5", in_channels=1, num_classes=10, image_size=28, mean=(0.2,), std=(0.5,))
    state = model.state_dict()
    assert torch.allclose(state["normalize.mean"].flatten(), torch.tensor([0.2]))
    x = torch.rand(1, 1, 28, 28)
    stem, _ = model.split("conv2")
    expected = model.stages.conv1((x - 0.2) / 0.5)
    assert torch.allclose(stem(x), expected)


def test_bad_requests() -> None:
    with pytest.raises(WorkbenchError, match="unknown model 'resnet50'"):
        build_model("resnet50", in_channels=3, num_classes=10, image_size=32)
    with pytest.raises(WorkbenchError, match="num_classes >= 2"):
        build_model("lenet5", in_channels=1, num_classes=1, image_size=28)
    with pytest.raises(WorkbenchError, match="mean/std need 1 or 3 values"):
        build_model("resnet_small", in_channels=3, num_classes=10, image_size=32, mean=(0.1, 0.2), std=(1, 1))
    with pytest.raises(WorkbenchError, match="unknown split point 'block9'"):
        build_model("wrn16_1", in_channels=3, num_classes=10, image_size=32).split("block9")
