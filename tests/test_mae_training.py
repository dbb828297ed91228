"""Tiny-MAE pretraining resumes exactly where it stopped."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import workbench.core.pretraining as pretraining
from workbench.core.mae import MAEArchitecture
from workbench.core.mae_training import MAETrainConfig, train_mae
from workbench.core.validation import WorkbenchError

ARCH = MAEArchitecture(img_size=16, patch_size=4, in_chans=3, embed_dim=16, depth=1, num_heads=2,
                       decoder_embed_dim=8, decoder_depth=1, decoder_num_heads=2)


def test_interrupted_training_resumes_to_the_same_weights(tiny_mirror: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    config = MAETrainConfig(arch=ARCH, datasets=("cifar10", "mnist"), steps=200, batch_size=8, warmup_steps=20)
    straight, metrics = train_mae(config, checkpoint_dir=tmp_path / "straight", progress=False)
    assert metrics["train_images"] == 190 + 228  # CIFAR-10 train split + MNIST pool, minus holdouts

    real_checkpoint = pretraining._checkpoint

    def checkpoint_then_crash(*args: object, **kwargs: object) -> None:
        real_checkpoint(*args, **kwargs)
        raise KeyboardInterrupt  # the machine stops right after the step-100 checkpoint

    monkeypatch.setattr(pretraining, "_checkpoint", checkpoint_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train_mae(config, checkpoint_dir=tmp_path / "resumed", progress=False)
    monkeypatch.setattr(pretraining, "_checkpoint", real_checkpoint)
    resumed, resumed_metrics = train_mae(config, checkpoint_dir=tmp_path / "resumed", progress=False)
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
    assert resumed_metrics["loss_curve"] == metrics["loss_curve"]


def test_a_later_stage_starts_from_the_previous_one(tiny_mirror: Path, tmp_path: Path) -> None:
    from workbench.core.artefacts import ArtefactStore
    from workbench.core.mae_training import load_workbench_mae, save_workbench_mae

    first = MAETrainConfig(arch=ARCH, datasets=("cifar10",), steps=20, batch_size=8, warmup_steps=5)
    mae, metrics = train_mae(first, checkpoint_dir=tmp_path / "first", progress=False)
    save_workbench_mae(mae, first, metrics, ArtefactStore())  # the isolated cache of this test
    second = MAETrainConfig(arch=ARCH, datasets=("cifar10",), steps=1, batch_size=8, warmup_steps=1, lr=1e-12,
                            init=first)
    assert second.stages() == [first, second]
    continued, _ = train_mae(second, checkpoint_dir=tmp_path / "second", progress=False)
    for (name, a), (_, b) in zip(load_workbench_mae(first).state_dict().items(), continued.state_dict().items(),
                                 strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


def test_held_out_evaluation_known_answers(tiny_mirror: Path) -> None:
    from workbench.core.mae import MaskedAutoencoderViT
    from workbench.core.mae_training import held_out_evaluation

    torch.manual_seed(0)
    mae = MaskedAutoencoderViT(ARCH)
    errors, rows = held_out_evaluation(mae, ("cifar10", "mnist"), images=16, examples=2)
    assert set(errors) == {"cifar10", "mnist"} and all(0 < e < 1 for e in errors.values())
    assert [r.shape for r in rows] == [(4, 3, 32, 32)] * 3  # 2 examples per dataset, shown as RGB 32 px
    assert not torch.equal(rows[0], rows[2])  # a random MAE restores badly
    masked = rows[1] == 0.5
    assert 0.5 < float(masked.float().mean()) < 0.95  # about 75 % of the pixels are masked (grey)
    assert errors == held_out_evaluation(mae, ("cifar10", "mnist"), images=16, examples=2)[0]  # seeded


def test_a_checkpoint_of_another_recipe_is_refused_and_a_truncated_one_discarded(tiny_mirror: Path,
                                                                                tmp_path: Path) -> None:
    """Issue 25: a checkpoint folder reused for another recipe used to resume into different weights, and a
    truncated checkpoint crashed with a raw SafetensorError."""
    config = MAETrainConfig(arch=ARCH, datasets=("cifar10",), steps=20, batch_size=8, warmup_steps=5)
    other = MAETrainConfig(arch=ARCH, datasets=("cifar10",), steps=20, batch_size=8, warmup_steps=5, lr=1e-4)
    folder = tmp_path / "checkpoints"
    reference, _ = train_mae(config, checkpoint_dir=tmp_path / "reference", progress=False)
    train_mae(config, checkpoint_dir=folder, progress=False)
    with pytest.raises(WorkbenchError, match="belongs to another training recipe"):
        train_mae(other, checkpoint_dir=folder, progress=False)
    state = folder / "state.safetensors"
    state.write_bytes(state.read_bytes()[:500])
    with pytest.warns(UserWarning, match="discarding the unreadable checkpoint"):
        retrained, _ = train_mae(config, checkpoint_dir=folder, progress=False)
    for (name, a), (_, b) in zip(reference.state_dict().items(), retrained.state_dict().items(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name  # trained again from step 0, to the same weights
