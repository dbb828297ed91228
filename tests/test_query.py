"""The black-box wrapper counts queries, refuses undeclared access and validates inputs."""

from __future__ import annotations

import pytest
import torch

from workbench.core.metrics import (
    attack_success_rate,
    backdoor_accuracy,
    clean_accuracy,
    confusion_matrix,
    patch_position_asr,
)
from workbench.core.models import build_model
from workbench.core.query import AccessError, QueryModel
from workbench.core.validation import WorkbenchError


@pytest.fixture
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("lenet5", in_channels=1, num_classes=10, image_size=28)


def test_counts_images_and_calls(model: torch.nn.Module) -> None:
    wrapper = QueryModel(model, "logits", batch_size=4)
    x = torch.rand(10, 1, 28, 28)
    labels = wrapper.labels(x)
    assert labels.shape == (10,) and labels.dtype == torch.long
    assert wrapper.probs(x[:3]).sum(1).allclose(torch.ones(3))
    assert wrapper.logits(x[:2]).shape == (2, 10)
    assert (wrapper.queries, wrapper.calls) == (15, 3)
    assert torch.equal(wrapper.logits(x).argmax(1), labels)
    wrapper.reset_queries()
    assert wrapper.queries == 0


def test_refuses_more_than_declared(model: torch.nn.Module) -> None:
    x = torch.rand(2, 1, 28, 28)
    labels_only = QueryModel(model, "label")
    with pytest.raises(AccessError, match="access='label'; 'probs' outputs are not available"):
        labels_only.probs(x)
    with pytest.raises(AccessError):
        labels_only.logits(x)
    with pytest.raises(AccessError):
        QueryModel(model, "probs").logits(x)
    assert labels_only.queries == 0
    with pytest.raises(WorkbenchError, match="unknown access level 'scores'"):
        QueryModel(model, "scores")


def test_validates_inputs_and_keeps_mode(model: torch.nn.Module) -> None:
    wrapper = QueryModel(model, "label", input_shape=(1, 28, 28))
    model.train()
    with pytest.raises(WorkbenchError, match=r"must lie in \[0, 1\]"):
        wrapper.labels(torch.rand(2, 1, 28, 28) + 1)
    with pytest.raises(WorkbenchError, match="must be 28x28 pixels"):
        wrapper.labels(torch.rand(2, 1, 32, 32))
    with pytest.raises(WorkbenchError, match="must have 1 channel"):
        wrapper.labels(torch.rand(2, 3, 28, 28))
    with pytest.raises(WorkbenchError, match="empty"):
        wrapper.labels(torch.rand(0, 1, 28, 28))
    wrapper.labels(torch.rand(2, 1, 28, 28))
    assert model.training  # the caller's mode is restored


def test_metrics_known_answers() -> None:
    class Fixed(torch.nn.Module):
        """Predicts class 0 for images whose mean is above 0.5, class 1 otherwise."""

        def __init__(self) -> None:
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            bright = (x.mean(dim=(1, 2, 3)) > 0.5).float()
            return torch.stack([bright, 1 - bright], dim=1)

    x = torch.cat([torch.full((3, 1, 4, 4), 0.9), torch.full((1, 1, 4, 4), 0.1)])
    y = torch.tensor([0, 0, 1, 1])
    wrapper = QueryModel(Fixed(), "label")
    assert clean_accuracy(wrapper, x, y) == 0.75
    assert attack_success_rate(wrapper, x, target=0) == 0.75
    assert backdoor_accuracy(wrapper, x, y) == 0.75
    assert wrapper.queries == 12
    assert confusion_matrix(torch.tensor([0, 0, 0, 1]), y, 2).tolist() == [[2, 0], [1, 1]]


def test_patch_position_asr_finds_where_a_trigger_fires() -> None:
    class Corner(torch.nn.Module):
        """Class 1 when the 2x2 block at rows 3-4, cols 5-6 is white, else class 0: a location-specific trigger
        (a fixed rule without parameters: such a model is queried in float32 on the CPU)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            fired = (x[:, :, 3:5, 5:7] > 0.99).flatten(1).all(dim=1).float()
            return torch.stack([1 - fired, fired], dim=1)

    x = torch.rand(5, 1, 8, 9) * 0.5
    asr = patch_position_asr(Corner(), x, torch.ones(1, 2, 2), target=1)
    assert asr.shape == (7, 8)
    assert asr[3, 5] == 1 and asr.sum() == 1  # fires at its own place only
    wide = patch_position_asr(Corner(), x, torch.ones(1, 3, 3), target=1)  # a larger patch covers it from 4 places
    assert wide.sum() == 4 and wide[2:4, 4:6].eq(1).all()
    with pytest.raises(WorkbenchError, match="does not fit"):
        patch_position_asr(Corner(), x, torch.ones(1, 9, 2), target=1)


def test_workbench_models_declare_their_input_shape(model: torch.nn.Module) -> None:
    with pytest.raises(WorkbenchError, match="must be 28x28 pixels"):
        QueryModel(model, "label").labels(torch.rand(1, 1, 32, 32))
    with pytest.raises(WorkbenchError, match="NaN"):
        clean_accuracy(model, torch.full((1, 1, 28, 28), float("nan")), torch.tensor([0]))
    with pytest.raises(WorkbenchError, match="one label per image"):
        clean_accuracy(model, torch.rand(3, 1, 28, 28), torch.zeros(3, 1, dtype=torch.long))
    with pytest.raises(WorkbenchError, match="batch_size must be a positive integer"):
        QueryModel(model, batch_size=0)
