"""PreAct-ResNet18 with BackdoorBench's parameter names, so its `attack_result.pt` state dicts load strictly.

The layout (module names, kernel sizes, strides, where the shortcut convolution sits) follows BackdoorBench v2's
`models/preact_resnet.py` (the pre-activation ResNet of [PreActResNet], in the CIFAR form: a 3x3 stem at stride 1,
no max-pooling). The code is the workbench's own.

State-dict keys: `conv1.weight`; `layer{1..4}.{0,1}.{bn1,conv1,bn2,conv2}.*` and, in the first block of layers 2-4,
`layer{2..4}.0.shortcut.0.weight`; optionally `bn.*` (a final BatchNorm + ReLU before pooling, which some
BackdoorBench-derived code bases have and upstream BackdoorBench does not); `linear.{weight,bias}`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from workbench.core.validation import check_positive_int

STAGE_WIDTHS = (64, 128, 256, 512)
"""Output channels of layer1..layer4 (BackdoorBench v2 `models/preact_resnet.py`)."""


class _PreActBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU before each 3x3 convolution, the shortcut taken after the first BN-ReLU.

    `forward`: a = relu(bn1(x)); shortcut = shortcut(a) if the block changes stride or width, else x;
    out = conv2(relu(bn2(conv1(a)))) + shortcut (BackdoorBench v2 `models/preact_resnet.py`, `PreActBlock`).

    Args:
        in_planes: input channels.
        planes: output channels.
        stride: stride of the first convolution (and of the 1x1 shortcut convolution).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = F.relu(self.bn1(x))
        shortcut = self.shortcut(activated) if hasattr(self, "shortcut") else x
        out = self.conv2(F.relu(self.bn2(self.conv1(activated))))
        return out + shortcut


class PreActResNet18(nn.Module):
    """PreAct-ResNet18 on normalised images: conv1 -> layer1..layer4 -> [bn, relu] -> avgpool -> linear.

    Args:
        num_classes: number of logits.
        in_channels: image channels taken by `conv1` (BackdoorBench always builds 3).
        final_norm: add the final `bn` (BatchNorm2d(512)) + ReLU before pooling; upstream BackdoorBench's
            PreActResNet18 has none, some derived code bases do (their state dicts hold `bn.*` keys).
    """

    cam_layer = "layer4"  # the last convolutional feature map, for CAM methods (Februus)

    def __init__(self, num_classes: int = 10, *, in_channels: int = 3, final_norm: bool = False) -> None:
        super().__init__()
        check_positive_int(num_classes, "num_classes")
        check_positive_int(in_channels, "in_channels")
        self.conv1 = nn.Conv2d(in_channels, STAGE_WIDTHS[0], kernel_size=3, stride=1, padding=1, bias=False)
        in_planes = STAGE_WIDTHS[0]
        for index, planes in enumerate(STAGE_WIDTHS, start=1):
            stride = 1 if index == 1 else 2
            self.add_module(f"layer{index}", nn.Sequential(_PreActBlock(in_planes, planes, stride),
                                                           _PreActBlock(planes, planes, 1)))
            in_planes = planes
        if final_norm:
            self.bn = nn.BatchNorm2d(in_planes)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        if hasattr(self, "bn"):
            out = F.relu(self.bn(out))
        return self.linear(torch.flatten(self.avgpool(out), 1))
