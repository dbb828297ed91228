"""The Latent Backdoor Attack (LBA; [LBA]), T&R's adaptive attack ([T&R] App. C.1, Table 7).

LBA puts the backdoor into a hidden layer instead of the output layer, so that it survives a retrained head (the
original: transfer learning; here: T&R's head replacement). Its two steps, as [LBA] describes them:

1. **Trigger generation** ([LBA] Sec. 4.2, "optimising the trigger"): with a fixed mask m (a square patch), find
   the pattern that makes triggered non-target images look like the target class at layer K of a clean model:
   min_pattern mean_x || F_K((1 - m) x + m pattern) - mean_{x_t} F_K(x_t) ||^2 (`optimise_latent_trigger`).
2. **Injection** ([LBA] Sec. 4.2, "backdoor injection"): train with the task loss plus lambda times the same
   distance on triggered images, the target representation recomputed with the model being trained
   (`LatentInjection`, `latent_distance`), so every layer before K learns to map the trigger to the target.

T&R's "LBA-n" injects into all layers before the n-th layer of WRN-16-1, counted as the 14 weight layers (conv1;
two 3x3 convolutions in each of the six residual blocks; the final linear layer): LBA-14 is the input of the
linear layer, LBA-12 the input of the last residual block (T&R's default split point), LBA-10 the input of the
first block of the third group (`LBA_LAYERS`). A layer is a module name (the input of that module is K's output),
so the attack applies to any model the workbench can hook (`workbench.core.classifier.capture`).

What T&R does not say, and what the workbench chooses (named in notebook 41):
- the threat model: T&R's other attacks only poison data, but LBA's injection needs the training loss, so the
  attacker is given it (as LBA's attacker trains the teacher, and as REStore's logit-anchor attack is); the
  triggered images are also relabelled to the target (T&R's dirty-label poisoning at 10 %), so the backdoor is
  complete without a transfer step;
- the trigger: a 6 x 6 patch in the bottom-right corner (3.5 % of a 32 px image; TrojanZoo's LBA defaults to a
  mark of 4 % of the image), optimised for 100 Adam steps at lr 0.1 on 1,000 non-target training images against a
  clean surrogate trained with the same recipe; lambda = 0.5 (TrojanZoo's `mse_weight`; [LBA] leaves it open).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from workbench.core.attacks import functional as Fn
from workbench.core.attacks.base import Attack, _check_position, resolve_position
from workbench.core.classifier import capture, check_model_images
from workbench.core.validation import (
    WorkbenchError,
    check_images,
    check_labels,
    check_non_negative,
    check_positive,
    check_positive_int,
    check_tensor,
)

#: T&R's LBA-n settings on WRN-16-1: the module whose input is layer n's input (see the module docstring).
LBA_LAYERS = {"LBA-14": "fc", "LBA-12": "block3_1", "LBA-10": "block3_0"}


@dataclasses.dataclass(frozen=True)
class PatchTrigger(Attack):
    """A patch with explicit 8-bit pixel values stamped over the image (an optimised trigger, e.g. LBA's).

    Args:
        values: the patch's pixels as integers in 0..255, channel-major ((C, size, size) flattened); the values
            are part of the attack's identity, so a model trained with this trigger is keyed by them.
        channels: C of the patch (1 = broadcast over the image's channels).
        size: side of the square patch in pixels.
        row, col: top-left pixel; negative values count from the bottom / right edge (-size = the corner).
    """

    family = "patch"
    values: tuple[int, ...] = ()
    channels: int = 3
    size: int = 6
    row: int = -6
    col: int = -6

    def __post_init__(self) -> None:
        check_positive_int(self.channels, "PatchTrigger channels")
        check_positive_int(self.size, "PatchTrigger size")
        object.__setattr__(self, "values", tuple(int(v) for v in self.values))
        expected = self.channels * self.size * self.size
        if len(self.values) != expected:
            raise WorkbenchError(f"PatchTrigger values: {len(self.values)} given, a {self.channels} x {self.size} x "
                                 f"{self.size} patch needs {expected} (channel-major)")
        if any(not 0 <= v <= 255 for v in self.values):
            raise WorkbenchError("PatchTrigger values must be 8-bit integers in 0..255; scale a [0, 1] pattern with "
                                 "PatchTrigger.from_pattern")

    @classmethod
    def from_pattern(cls, pattern: torch.Tensor, *, row: int, col: int) -> PatchTrigger:
        """The trigger of a (C, size, size) pattern in [0, 1], rounded to 8 bits."""
        if pattern.ndim != 3 or pattern.shape[1] != pattern.shape[2]:
            raise WorkbenchError(f"pattern must be (C, size, size), got {tuple(pattern.shape)}")
        values = pattern.detach().float().clamp(0, 1).mul(255).round().to(torch.int64).flatten().tolist()
        return cls(values=tuple(values), channels=pattern.shape[0], size=pattern.shape[1], row=row, col=col)

    def patch(self) -> torch.Tensor:
        """(channels, size, size) float pattern in [0, 1]."""
        return torch.tensor(self.values, dtype=torch.float32).view(self.channels, self.size, self.size) / 255

    def _build_pattern(self, channels: int, height: int, width: int) -> tuple[torch.Tensor, int, int]:
        if self.channels not in (1, channels):
            raise WorkbenchError(f"this {self.channels}-channel trigger cannot stamp {channels}-channel images")
        return (self.patch(), resolve_position(self.row, height, self.size, "row"),
                resolve_position(self.col, width, self.size, "col"))

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        patch, row, col = self.pattern_for(*x.shape[1:])
        return Fn._stamp_patch(x, patch, row, col)

    def describe(self) -> str:  # the values would fill a screen
        return f"patch({self.channels}x{self.size}x{self.size} optimised pixels at row={self.row}, col={self.col})"


@dataclasses.dataclass(frozen=True)
class LatentInjection:
    """LBA's injection term ([LBA] Sec. 4.2): during training, lambda times the mean squared distance between
    the poisoned images' representation at `layer` and the mean representation of the batch's clean target-class
    images, both computed by the model being trained (the objective is a function of the weights on both sides;
    holding the target side fixed made the features of a small LeNet grow without bound, each step chasing a mean
    that the step itself moved).

    Args:
        layer: module name whose input is the latent layer (T&R's LBA-n on WRN-16-1: `LBA_LAYERS`).
        weight: lambda (0.5, TrojanZoo's default; [LBA] does not give one).
    """

    layer: str
    weight: float = 0.5

    def __post_init__(self) -> None:
        if not isinstance(self.layer, str) or not self.layer:
            raise WorkbenchError(f"LatentInjection.layer must be a module name such as 'block3_1', got {self.layer!r}")
        check_positive(self.weight, "LatentInjection.weight")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def latent_distance(features: torch.Tensor, labels: torch.Tensor, poisoned: torch.Tensor, target: int,
                    memo: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The injection term of one batch: mean over poisoned images of the mean squared distance of their features
    to the mean feature of the batch's clean target-class images (gradients flow through both). A batch without
    clean target-class images uses the last mean (`memo`, detached); with no poisoned image, or no mean yet, the
    term is 0.

    Args:
        features: (N, ...) the batch's representation at the latent layer.
        labels: (N,) training labels; poisoned: (N,) bool, the triggered images; target: the target class.

    Returns:
        (the term, the target mean to pass as `memo` to the next batch).
    """
    check_tensor(features, "features (one row per image)", ndim=(2, 3, 4))
    check_labels(labels, len(labels) if isinstance(labels, torch.Tensor) and labels.ndim else 0)  # dtype, 1-D
    if len(labels) != len(features):
        raise WorkbenchError(f"features must hold one row per label: {len(labels)} labels, features of shape "
                             f"{tuple(features.shape)}")
    check_tensor(poisoned, "poisoned (one flag per image)", shape=tuple(labels.shape), kind="bool")
    check_non_negative(target, "target", integer=True)
    if memo is not None and (not isinstance(memo, torch.Tensor) or memo.shape != features.shape[1:]):
        raise WorkbenchError(f"memo must be None or the previous target mean, of shape {tuple(features.shape[1:])}, "
                             f"got {tuple(getattr(memo, 'shape', ())) if memo is not None else None}")
    return _latent_distance(features, labels, poisoned, target, memo)


def _latent_distance(features: torch.Tensor, labels: torch.Tensor, poisoned: torch.Tensor, target: int,
                     memo: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    anchors = (labels == target) & ~poisoned
    goal = features[anchors].mean(dim=0) if anchors.any() else memo
    if goal is None or not poisoned.any():
        return features.sum() * 0.0, memo if goal is None else goal.detach()
    return (features[poisoned] - goal).pow(2).flatten(1).mean(dim=1).mean(), goal.detach()


@torch.no_grad()
def mean_latent(model: nn.Module, images: torch.Tensor, layer: str, batch_size: int = 256) -> torch.Tensor:
    """Mean representation of `images` at `layer` (the input of that module) in eval mode."""
    check_model_images(model, images)
    check_positive_int(batch_size, "batch_size")
    model.eval()
    device = next(model.parameters()).device
    total, count = None, 0
    with capture(model, layer) as recorded:
        for batch in images.split(batch_size):
            model(batch.to(device))
            features = recorded.pop()
            total = features.sum(dim=0) if total is None else total + features.sum(dim=0)
            count += len(features)
    return total / count


@dataclasses.dataclass(frozen=True)
class TriggerSearch:
    """How LBA's trigger is optimised (the workbench's choices, see the module docstring).

    Args:
        size, row, col: the square patch (negative row / col count from the bottom / right edge).
        steps, lr, batch_size: Adam steps, learning rate and minibatch of source images.
    """

    size: int = 6
    row: int = -6
    col: int = -6
    steps: int = 100
    lr: float = 0.1
    batch_size: int = 128

    def __post_init__(self) -> None:
        for name in ("size", "steps", "batch_size"):
            check_positive_int(getattr(self, name), f"TriggerSearch.{name}")
        _check_position(self.row, "TriggerSearch.row")
        _check_position(self.col, "TriggerSearch.col")
        check_positive(self.lr, "TriggerSearch.lr")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def optimise_latent_trigger(model: nn.Module, sources: torch.Tensor, target_images: torch.Tensor, layer: str, *,
                            search: TriggerSearch = TriggerSearch(), generator: torch.Generator | None = None,
                            progress: bool = True) -> tuple[PatchTrigger, list[float]]:
    """LBA's trigger generation ([LBA] Sec. 4.2): optimise a patch so that triggered `sources` match the mean
    representation of `target_images` at `layer` of the (clean) `model`.

    The pattern is parametrised as sigmoid(w), so it stays in [0, 1], and w is optimised with Adam on minibatches
    of `sources` drawn from `generator`; the model's parameters are not changed.

    Args:
        model: a clean surrogate classifier.
        sources: non-target images (N, C, H, W) in [0, 1]; target_images: clean images of the target class.
        layer: module name whose input is the latent layer.
        search: the patch and the optimisation.

    Returns:
        The trigger (8-bit pattern) and the loss of every step.
    """
    check_model_images(model, sources, name="sources")  # non-empty, of the model's input shape where it has one
    check_model_images(model, target_images, name="target_images")
    check_images(target_images, channels=sources.shape[1], size=tuple(sources.shape[2:]), name="target_images")
    if not isinstance(search, TriggerSearch):
        raise WorkbenchError(f"search must be a TriggerSearch, got {type(search).__name__}")
    channels, height, width = sources.shape[1:]
    size = search.size
    top, left = resolve_position(search.row, height, size, "row"), resolve_position(search.col, width, size, "col")
    was_training = model.training
    device = next(model.parameters()).device
    goal = mean_latent(model, target_images, layer).to(device)
    weights = torch.zeros(channels, size, size, device=device, requires_grad=True)
    optimizer = torch.optim.Adam([weights], lr=search.lr)
    losses = []
    requires = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        with capture(model, layer) as recorded:
            for _ in tqdm(range(search.steps), desc=f"LBA trigger at {layer}", disable=not progress, leave=False):
                pick = torch.randint(len(sources), (min(search.batch_size, len(sources)),), generator=generator)
                x = Fn._stamp_patch(sources[pick].to(device), torch.sigmoid(weights), top, left)
                model(x)
                loss = (recorded.pop() - goal).pow(2).flatten(1).mean(dim=1).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
    finally:
        for param, flag in zip(model.parameters(), requires, strict=True):
            param.requires_grad_(flag)
        model.train(was_training)
    return PatchTrigger.from_pattern(torch.sigmoid(weights).detach().cpu(), row=search.row, col=search.col), losses
