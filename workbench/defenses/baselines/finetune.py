"""Fine-tuning (the "Finetuning" baseline of [Fine-Pruning] / [NAD]; NAD's teacher): retrain every layer of a
(backdoored) classifier on the small clean holdout with cross-entropy.

The defaults are NAD's recipe for WRN-16-1 on CIFAR-10, so `fine_tune` with its defaults is exactly NAD's teacher
(NAD's README: the teacher is "finetuning all layers of the backdoored model using 5% clean data with data
augmentation", i.e. its `main.py` with every beta = 0):

- SGD, momentum 0.9, Nesterov, initial lr 0.1, weight decay 1e-4, batch 64 (public NAD `config.py`, `main.py`);
- lr 0.1 for the first 2 epochs, then 0.01 (public NAD `utils.adjust_learning_rate`; its later steps, at epochs 20
  and 30, are never reached in 10 or 20 epochs);
- random crop (4 px padding) + horizontal flip + Cutout with one hole (public NAD `data_loader.py`: `Cutout(1, 3)`,
  whose hole spans [c - 1, c + 1), i.e. 2 x 2 px; here `cutout=2`);
- 10 epochs (the T&R brief's teacher length; NAD's README says the teacher is fine-tuned for "5~10 epochs").

Training runs through `workbench.core.training.train_classifier`, which has only onecycle / cosine / constant
schedules; the step decay is reproduced exactly by chaining constant-lr phases (one `train_classifier` call per
phase). Deviations from the NAD code, all small: the SGD momentum buffer restarts at each lr step (a new optimiser per
phase); BatchNorm and bias parameters get no weight decay (the workbench optimiser's rule; NAD decays every
parameter); each epoch drops the last partial batch (NAD's DataLoader keeps it).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from workbench.core.data import ImageDataset
from workbench.core.models import MODELS, StagedClassifier
from workbench.core.runtime import child_seed
from workbench.core.training import BatchLoss, TrainConfig, check_training_images, train_classifier
from workbench.core.validation import (
    WorkbenchError,
    check_fraction,
    check_non_negative,
    check_positive,
    check_positive_int,
    check_seed,
    check_tensor,
)


@dataclass(frozen=True)
class FineTuneConfig:
    """Fine-tuning all layers on the clean holdout (defaults: NAD's teacher recipe, see the module docstring).

    Args:
        epochs: training epochs (10: the T&R brief's NAD teacher length; NAD's README: 5~10).
        batch_size: 64 (NAD `config.py`).
        lr: initial learning rate (0.1, NAD `config.py`).
        lr_milestones: epochs at which the lr is multiplied by `lr_decay` ((2,): NAD's `adjust_learning_rate`, lr 0.1
            for epochs 0-1 and 0.01 after); milestones >= `epochs` never apply, () keeps the lr constant.
        lr_decay: factor applied at each milestone (0.1, NAD).
        optimizer: "sgd" (Nesterov momentum, as NAD's `main.py`) or "adam".
        momentum: 0.9 (NAD). weight_decay: 1e-4 (NAD `config.py`), not applied to BatchNorm / bias parameters.
        augment: "crop_flip" (NAD's random crop with 4 px padding + horizontal flip), "crop" or "none".
        cutout: side in pixels of one square hole zeroed at a uniformly drawn centre c, spanning
            [c - cutout // 2, c - cutout // 2 + cutout) clipped at the border (2: NAD's `Cutout(1, 3)` cuts 2 x 2 px;
            0 = off).
        label_smoothing: 0 (NAD trains with plain cross-entropy).
        seed: seed of the data order, augmentation and Cutout.
    """

    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.1
    lr_milestones: tuple[int, ...] = (2,)
    lr_decay: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    augment: str = "crop_flip"
    cutout: int = 2
    label_smoothing: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "lr_milestones", tuple(self.lr_milestones))  # lists (from JSON) become tuples
        check_positive_int(self.epochs, "FineTuneConfig.epochs")
        check_positive_int(self.batch_size, "FineTuneConfig.batch_size")
        check_positive(self.lr, "FineTuneConfig.lr")
        check_fraction(self.lr_decay, "FineTuneConfig.lr_decay")
        milestones = self.lr_milestones
        if (any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in milestones)
                or list(milestones) != sorted(set(milestones))):
            raise WorkbenchError(f"FineTuneConfig.lr_milestones must be strictly increasing epochs >= 1 (e.g. (2,)), "
                                 f"got {milestones!r}")
        check_fraction(self.momentum, "FineTuneConfig.momentum", allow_zero=True, allow_one=False)
        check_non_negative(self.weight_decay, "FineTuneConfig.weight_decay")
        check_non_negative(self.cutout, "FineTuneConfig.cutout (pixels)", integer=True, meaning_of_zero="0 = off")
        check_seed(self.seed, "FineTuneConfig.seed")
        self.recipe("cifar10", "lenet5")  # validates optimizer, augment and label_smoothing

    def phases(self) -> list[tuple[int, float]]:
        """The piecewise-constant schedule as (epochs, lr) phases, e.g. 10 epochs, milestones (2,) ->
        [(2, 0.1), (8, 0.01)]."""
        bounds = [m for m in self.lr_milestones if m < self.epochs]
        starts, ends = [0, *bounds], [*bounds, self.epochs]
        return [(end - start, self.lr * self.lr_decay**k) for k, (start, end) in enumerate(zip(starts, ends,
                                                                                              strict=True))]

    def recipe(self, dataset: str, model: str, phase: int = 0) -> TrainConfig:
        """The `TrainConfig` of phase `phase` (constant lr) for `train_classifier`; `dataset` and `model` only label
        its progress bar. Each phase gets its own seed (data order and augmentation differ between phases)."""
        epochs, lr = self.phases()[phase]
        return TrainConfig(dataset=dataset, model=model, epochs=epochs, batch_size=self.batch_size,
                           optimizer=self.optimizer, lr=lr, momentum=self.momentum, weight_decay=self.weight_decay,
                           schedule="constant", label_smoothing=self.label_smoothing, augment=self.augment,
                           seed=child_seed(self.seed, "finetune_phase", phase))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FineTuneConfig:
        return cls(**data)


# --- shared by the post-training baselines (fine-tuning, NAD, ANP) -------------------------------------------------

def check_defence_inputs(model: StagedClassifier, holdout: ImageDataset) -> None:
    """Fail early, with the fix, when `model` or `holdout` cannot go together."""
    if not isinstance(model, torch.nn.Module) or getattr(model, "input_shape", None) is None:
        raise WorkbenchError(f"model must be a workbench classifier (build_model, or workbench.wrap(...) around your "
                             f"own module), got {type(model).__name__}")
    check_training_images(holdout, model, "holdout")


@functools.lru_cache(maxsize=32)
def _stage_names(name: str, channels: int, size: int) -> tuple[str, ...] | None:
    try:
        with torch.random.fork_rng(devices=[]):  # building initialises weights: keep the caller's RNG state
            stages, _, _ = MODELS[name](channels, 2, size)
    except WorkbenchError:
        return None
    return tuple(stages)


def registered_model_name(model: StagedClassifier) -> str:
    """The registered architecture whose stages `model` has (a `TrainConfig` needs one; it only labels progress)."""
    if not isinstance(model, StagedClassifier):
        return next(iter(MODELS))  # a wrapped model: the name only labels the progress bar
    channels, size, _ = model.input_shape
    for name in sorted(MODELS, key=lambda n: n == "resnet18"):  # the large one last: built only if nothing else fits
        if _stage_names(name, channels, size) == tuple(model.split_points):
            return name
    return next(iter(MODELS))  # a custom StagedClassifier: any registered name will do for the label


def cutout(x: torch.Tensor, side: int, gen: torch.Generator) -> torch.Tensor:
    """Zero one side x side square per image (N, C, H, W) at a uniformly drawn centre, clipped at the border (any
    value range: the hole is 0 whatever the images hold); `side` 0 returns x."""
    check_tensor(x, "images", ndim=4)
    check_non_negative(side, "cutout side (pixels)", integer=True, meaning_of_zero="0 = off")
    return _cutout(x, side, gen)


def _cutout(x: torch.Tensor, side: int, gen: torch.Generator) -> torch.Tensor:
    """`cutout` without its checks: the training loop calls it on every batch of checked images."""
    if side <= 0:
        return x
    n, _, height, width = x.shape
    top = torch.randint(0, height, (n, 1), generator=gen).to(x.device) - side // 2
    left = torch.randint(0, width, (n, 1), generator=gen).to(x.device) - side // 2
    rows = torch.arange(height, device=x.device).view(1, height)
    cols = torch.arange(width, device=x.device).view(1, width)
    in_rows = (rows >= top) & (rows < top + side)  # (N, H)
    in_cols = (cols >= left) & (cols < left + side)  # (N, W)
    hole = in_rows.unsqueeze(2) & in_cols.unsqueeze(1)  # (N, H, W)
    return x * (~hole).unsqueeze(1).to(x.dtype)


def train_in_phases(model: StagedClassifier, holdout: ImageDataset, config: FineTuneConfig, *, device: str,
                    progress: bool, batch_loss: BatchLoss | None = None) -> list[dict[str, float]]:
    """Train `model` in place on `holdout` with `config`'s step schedule: one constant-lr `train_classifier` run per
    phase. `batch_loss(model, x, y, generator)` (default: cross-entropy with `config.label_smoothing`) receives the
    crop/flip-augmented batch after Cutout. Returns the per-epoch history, epochs numbered across phases."""
    check_defence_inputs(model, holdout)
    name = registered_model_name(model)

    def loss_fn(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        x = _cutout(x, config.cutout, gen)
        if batch_loss is not None:
            return batch_loss(net, x, y, gen)
        return F.cross_entropy(net(x), y, label_smoothing=config.label_smoothing)

    history: list[dict[str, float]] = []
    for phase in range(len(config.phases())):
        recipe = config.recipe(holdout.name, name, phase)
        for record in train_classifier(model, holdout, recipe, device=device, progress=progress, batch_loss=loss_fn):
            history.append({**record, "epoch": len(history) + 1, "lr": recipe.lr})
    return history


def fine_tune(model: StagedClassifier, holdout: ImageDataset, config: FineTuneConfig = FineTuneConfig(), *,
              device: str = "auto", progress: bool = True) -> StagedClassifier:
    """Fine-tune a copy of `model` (every layer, BatchNorm statistics included) on the clean `holdout`.

    Args:
        model: the (backdoored) classifier; it is not modified.
        holdout: clean labelled images (uint8 (N, C, H, W) of the model's input shape), e.g. the 5 % holdout.
        config: optimisation settings (NAD's teacher recipe by default).
        device: where to train ("auto" = GPU if available).
        progress: show tqdm bars (one per lr phase).

    Returns:
        The fine-tuned copy, in eval mode, on `device`.
    """
    check_defence_inputs(model, holdout)
    tuned = copy.deepcopy(model).requires_grad_(True)  # all layers, even ones the caller had frozen
    train_in_phases(tuned, holdout, config, device=device, progress=progress)
    tuned.zero_grad(set_to_none=True)  # no stale gradients of the last step on the returned model
    return tuned.eval()
