"""Issue 26, GPU-fast training: the trainer's fast path (`workbench.core.training._Batches`).

No GPU here: the fast path's bookkeeping (data held where the model trains, the epoch's order moved once, the loss
checked once an epoch, deterministic algorithms for the run) is driven on the CPU by switching the path on, and must
leave the weights exactly as the plain path trains them (bf16 autocast is CUDA's: it stays off on CPU tensors).
The CPU path's bit-identity with the trainer before the fast path was checked when it was written (see the README).
"""

from __future__ import annotations

import pytest
import torch

from workbench.core import training
from workbench.core.data import ImageDataset
from workbench.core.training import TrainConfig, TrainingDiverged, new_model, train_classifier

pytestmark = pytest.mark.filterwarnings("ignore:CUDA is not available:UserWarning")  # autocast("cuda") here

CONFIG = TrainConfig(dataset="cifar10", model="resnet_small", model_options={"widths": [4, 4, 8, 8]}, epochs=2,
                     batch_size=8, lr=0.05)


def _data() -> ImageDataset:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8, generator=gen)
    return ImageDataset("cifar10", images, torch.arange(32) % 10, tuple(str(k) for k in range(10)))


def _fast_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(training, "_fast_path", lambda dev: True)
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what the fast path sets, restored after the test


def test_fast_path_switch_follows_the_device_and_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.delenv(training.FAST_GPU_VARIABLE, raising=False)
    assert training._fast_path(cuda) and not training._fast_path(cpu)
    monkeypatch.setenv(training.FAST_GPU_VARIABLE, "0")
    assert not training._fast_path(cuda)
    monkeypatch.setenv(training.FAST_GPU_VARIABLE, "1")
    assert training._fast_path(cuda) and not training._fast_path(cpu)


def test_fast_path_bookkeeping_changes_no_weight(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = new_model(CONFIG)
    plain_history = train_classifier(plain, _data(), CONFIG, device="cpu", progress=False)
    _fast_on_cpu(monkeypatch)
    seen = []

    def loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        seen.append(torch.are_deterministic_algorithms_enabled())
        return torch.nn.functional.cross_entropy(model(x), y, label_smoothing=CONFIG.label_smoothing)

    fast = new_model(CONFIG)
    fast_history = train_classifier(fast, _data(), CONFIG, device="cpu", progress=False, batch_loss=loss)
    assert seen and all(seen) and not torch.are_deterministic_algorithms_enabled()  # on for the run, then restored
    assert torch.utils.deterministic.fill_uninitialized_memory
    for (name, a), b in zip(plain.state_dict().items(), fast.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert [h["loss"] for h in fast_history] == [h["loss"] for h in plain_history]  # summed on the device, same sum


def test_fast_path_stops_a_diverged_run(monkeypatch: pytest.MonkeyPatch) -> None:
    _fast_on_cpu(monkeypatch)

    def nan_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return model(x).sum() * float("nan")

    with pytest.raises(TrainingDiverged, match="diverged in epoch 1"):  # checked at the epoch's end, not every step
        train_classifier(new_model(CONFIG), _data(), CONFIG, device="cpu", progress=False, batch_loss=nan_loss)
