"""Classifier registry: LeNet-5, a small fast CIFAR ResNet, ResNet-18 (CIFAR stem) and WRN-16-1.

Every model takes images in [0, 1] and normalises them internally (mean/std buffers saved with the weights),
and is a `StagedClassifier`: an ordered list of named stages, so any model can be split into a stem and a
head at a named point (`split`), as Trap and Replace needs. Each model carries dropout layers at p = 0 (identity,
no weights) where a classification head would use them (before the last linear layer, and inside WRN blocks), so
`set_dropout` can switch them on when a head is retrained (T&R stage 2).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from workbench.core.validation import WorkbenchError, check_fraction, check_name, check_positive_int


class Normalize(nn.Module):
    """(x - mean) / std with per-channel buffers."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class StagedClassifier(nn.Module):
    """Normalisation followed by named stages; logits out.

    Attributes:
        stages: the named stages in order (`split_points` lists their names).
        default_split: the stage where the default classification head starts.
        input_shape: (C, H, W) of the images the model was built for (checked by `QueryModel`).
        feature_split: the stage whose input is the last convolutional feature map (for CAM methods).
    """

    def __init__(self, normalize: Normalize, stages: OrderedDict[str, nn.Module], default_split: str,
                 input_shape: tuple[int, int, int], feature_split: str) -> None:
        super().__init__()
        for split, name in ((default_split, "default_split"), (feature_split, "feature_split")):
            if split not in stages:
                raise WorkbenchError(f"{name} {split!r} is not one of the stages {list(stages)}")
        self.normalize = normalize
        self.stages = nn.Sequential(stages)
        self.default_split = default_split
        self.input_shape = input_shape
        self.feature_split = feature_split

    @property
    def split_points(self) -> list[str]:
        return [name for name, _ in self.stages.named_children()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.normalize(x))

    def split(self, at: str | None = None) -> tuple[nn.Sequential, nn.Sequential]:
        """(stem, head) sharing this model's modules: stem = normalisation + stages before `at`.

        `head(stem(x))` equals `model(x)`. `at` defaults to `default_split`.
        """
        at = self.default_split if at is None else at
        names = self.split_points
        check_name("split point", at, names)
        cut = names.index(at)
        children = list(self.stages.named_children())
        stem = nn.Sequential(OrderedDict([("normalize", self.normalize), *children[:cut]]))
        return stem, nn.Sequential(OrderedDict(children[cut:]))


# ------------------------------------------------------------------------------------------------ LeNet-5
def _lenet(in_channels: int, num_classes: int, image_size: int) -> tuple[OrderedDict, str, str]:
    side = ((image_size // 2) - 4) // 2  # conv5 pad 2 -> pool -> conv5 -> pool
    if side < 1:
        raise WorkbenchError(f"LeNet-5 needs images of at least 12 px, got {image_size}")
    stages = OrderedDict([
        ("conv1", nn.Sequential(nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2))),
        ("conv2", nn.Sequential(nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2))),
        ("fc1", nn.Sequential(nn.Flatten(), nn.Linear(16 * side * side, 120), nn.ReLU())),
        ("fc2", nn.Sequential(nn.Linear(120, 84), nn.ReLU(), nn.Dropout(0.0))),
        ("fc", nn.Linear(84, num_classes)),
    ])
    return stages, "fc1", "fc1"


# ------------------------------------------------------------------------------------ small fast ResNet
class _DownResidual(nn.Module):
    """conv -> 2x2 max-pool -> BN -> GELU, then a residual conv-BN-GELU pair (cheap: runs after pooling)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.MaxPool2d(2),
                                  nn.BatchNorm2d(cout), nn.GELU())
        self.residual = nn.Sequential(nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                                      nn.GELU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)
        return x + self.residual(x)


def _resnet_small(in_channels: int, num_classes: int, image_size: int,
                  widths: Sequence[int] = (24, 32, 64, 128)) -> tuple[OrderedDict, str, str]:
    """A ResNet-style net sized for CPU work (~0.3 M parameters at the default widths).

    Downsampling by max-pooling right after each stage's first conv keeps most FLOPs at low resolution,
    in the manner of fast CIFAR-10 training recipes; measured here at ~1.3 min per CIFAR-10 epoch on 2 cores.
    """
    w0, w1, w2, w3 = widths
    stages = OrderedDict([
        ("stem", nn.Sequential(nn.Conv2d(in_channels, w0, 3, padding=1, bias=False), nn.BatchNorm2d(w0),
                               nn.GELU())),
        ("stage1", _DownResidual(w0, w1)),
        ("stage2", _DownResidual(w1, w2)),
        ("stage3", _DownResidual(w2, w3)),
        ("pool", nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Dropout(0.0))),
        ("fc", nn.Linear(w3, num_classes)),
    ])
    return stages, "stage3", "pool"


# --------------------------------------------------------------------------------- ResNet-18, CIFAR stem
class _BasicBlock(nn.Module):
    """Post-activation ResNet basic block ([ResNet])."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def _resnet18(in_channels: int, num_classes: int, image_size: int) -> tuple[OrderedDict, str, str]:
    """ResNet-18 with the CIFAR stem (3x3 conv, stride 1, no max-pool)."""
    stages: OrderedDict[str, nn.Module] = OrderedDict(
        stem=nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()))
    cin = 64
    for i, (width, stride) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2)), start=1):
        stages[f"layer{i}"] = nn.Sequential(_BasicBlock(cin, width, stride), _BasicBlock(width, width, 1))
        cin = width
    stages["pool"] = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.0))
    stages["fc"] = nn.Linear(512, num_classes)
    return stages, "layer4", "pool"


# -------------------------------------------------------------------------------------------- WRN-16-1
class _WideBlock(nn.Module):
    """Pre-activation wide-ResNet block ([WRN]) with LeakyReLU(0.1) (follows the T&R public code's WRN, per
    docs/implementation.md#trap-and-replace-architecture); 1x1 conv shortcut on the activated input when the width
    changes; dropout between the two convolutions (p = 0 unless `set_dropout` raises it), as in the original WRN."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None if cin == cout and stride == 1 else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.leaky_relu(self.bn1(x), 0.1)
        out = self.conv2(self.dropout(F.leaky_relu(self.bn2(self.conv1(act)), 0.1)))
        return out + (x if self.shortcut is None else self.shortcut(act))


def _wrn16_1(in_channels: int, num_classes: int, image_size: int) -> tuple[OrderedDict, str, str]:
    """WRN-16-1: channels 16/16/32/64, two blocks per group, strides 1/2/2.

    Default split ([T&R]'s public code; docs/implementation.md#trap-and-replace-architecture): stem = conv1 +
    block1 (2) + block2 (2) + block3_0 (64 x 8 x 8 for 32 px inputs); head = block3_1 + BN + LeakyReLU + global
    pool + FC.
    """
    stages: OrderedDict[str, nn.Module] = OrderedDict(conv1=nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False))
    cin = 16
    for group, (width, stride) in enumerate(((16, 1), (32, 2), (64, 2)), start=1):
        for i in range(2):
            stages[f"block{group}_{i}"] = _WideBlock(cin, width, stride if i == 0 else 1)
            cin = width
    stages["final"] = nn.Sequential(nn.BatchNorm2d(64), nn.LeakyReLU(0.1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                    nn.Dropout(0.0))
    stages["fc"] = nn.Linear(64, num_classes)
    return stages, "block3_1", "final"


def set_dropout(module: nn.Module, p: float) -> nn.Module:
    """Set the probability of every dropout layer in `module` (e.g. a head from `StagedClassifier.split`)."""
    check_fraction(p, "dropout probability p", allow_zero=True, allow_one=False)
    for layer in module.modules():
        if isinstance(layer, nn.Dropout):
            layer.p = float(p)
    return module


#: name -> builder returning (stages, default stem/head split, split after the last conv feature map)
MODELS: dict[str, Callable[..., tuple[OrderedDict, str, str]]] = {
    "lenet5": _lenet, "resnet_small": _resnet_small, "resnet18": _resnet18, "wrn16_1": _wrn16_1,
}


def build_model(name: str, *, in_channels: int, num_classes: int, image_size: int,
                mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                **options: object) -> StagedClassifier:
    """Build a registered classifier with freshly initialised weights (seed torch's RNG first to fix them).

    Args:
        name: "lenet5", "resnet_small", "resnet18" or "wrn16_1".
        in_channels: image channels (1 for grey, 3 for RGB).
        num_classes: number of output classes (>= 2).
        image_size: input side in pixels (LeNet-5's FC layer depends on it).
        mean, std: per-channel normalisation (default 0.5 / 0.5); length 1 or `in_channels`.
        **options: model-specific options (e.g. `widths` for "resnet_small").
    """
    check_name("model", name, MODELS)
    for value, what in ((in_channels, "in_channels"), (num_classes, "num_classes"), (image_size, "image_size")):
        check_positive_int(value, what)
    if in_channels < 1 or num_classes < 2 or image_size < 8:
        raise WorkbenchError(f"model {name}: need in_channels >= 1, num_classes >= 2, image_size >= 8; got "
                             f"{in_channels}, {num_classes}, {image_size}")
    mean = tuple(mean) if mean is not None else (0.5,) * in_channels
    std = tuple(std) if std is not None else (0.5,) * in_channels
    if len(mean) not in (1, in_channels) or len(std) != len(mean):
        raise WorkbenchError(f"mean/std need 1 or {in_channels} values, got {len(mean)} and {len(std)}")
    try:
        stages, default_split, feature_split = MODELS[name](in_channels, num_classes, image_size, **options)
    except TypeError as exc:
        raise WorkbenchError(f"bad options for model {name!r}: {exc}") from exc
    return StagedClassifier(Normalize(mean, std), stages, default_split, (in_channels, image_size, image_size),
                            feature_split)
