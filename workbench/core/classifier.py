"""Any classifier in: the user's `nn.Module`, torchvision / timm models and imported model-zoo records.

The workbench's defences take a classifier on images in [0, 1] whose input shape (C, H, W) and class count are
known. Its own models (`workbench.core.models`) carry both; any other model is made one with `wrap`, which
declares the normalisation the model was trained with (torchvision and BackdoorBench normalise in the data
transforms, so the model itself expects normalised inputs), the input size and the class count. The class count
always comes from the model or the caller, never from the labels of whatever images are at hand (a class-sorted
slice of a test set holds one class).

Split points (T&R's stem / head, the CAM layer of Februus) are named modules: a workbench model's stage names
("block3"), or any dotted module name of a wrapped model ("layer4", "layer4.1").
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from workbench.core.models import Normalize, StagedClassifier
from workbench.core.validation import WorkbenchError, check_images, check_labels, check_name, check_positive_int


class WrappedClassifier(nn.Module):
    """A classifier of normalised images seen as one of [0, 1] images: `model(normalize(resize(x)))`.

    Attributes:
        model: the wrapped module (its module names are the split points, e.g. "layer4").
        input_shape: (C, H, W) of the images it is given.
        num_classes: its number of classes.
        model_size: (H, W) the wrapped model was trained on, when the images are resized to it (else None).
        cam_layer: the module whose output is the last convolutional feature map (CAM methods' default), or None.
    """

    def __init__(self, model: nn.Module, normalize: Normalize, input_shape: tuple[int, int, int], num_classes: int,
                 model_size: tuple[int, int] | None = None, cam_layer: str | None = None) -> None:
        super().__init__()
        check_positive_int(num_classes, "num_classes")
        self.normalize = normalize
        self.model = model
        self.input_shape = input_shape
        self.num_classes = num_classes
        self.model_size = model_size
        self.cam_layer = cam_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.model_size is not None and tuple(x.shape[-2:]) != self.model_size:
            x = F.interpolate(x, size=self.model_size, mode="bilinear", align_corners=False)
        return self.model(self.normalize(x))


def wrap(model: nn.Module, *, num_classes: int, input_size: int | tuple[int, int], in_channels: int = 3,
         mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
         model_size: int | tuple[int, int] | None = None, cam_layer: str | None = None) -> WrappedClassifier:
    """Declare what an arbitrary classifier expects, so every defence can use it.

    Args:
        model: any `nn.Module` mapping a (N, C, H, W) batch to (N, num_classes) logits.
        num_classes: its number of classes (checked against one forward pass).
        input_size: side (or (H, W)) of the images the defences will pass, in pixels.
        in_channels: image channels (1 for grey, 3 for RGB).
        mean, std: the per-channel normalisation the model was trained with (e.g. CIFAR-10's), applied inside the
            wrapper; None = the model already takes [0, 1] images.
        model_size: resize the images (bilinear) to this side before the model, when it was trained at another
            resolution; None = no resizing.
        cam_layer: the module whose output is the last convolutional feature map (e.g. "layer4" of a torchvision
            ResNet), the CAM layer Februus uses by default; None = Februus must be told (`layer=`).

    Returns:
        A `WrappedClassifier` on [0, 1] images, in eval mode, on the model's device.

    Example:
        >>> net = torchvision.models.resnet18(num_classes=10)  # doctest: +SKIP
        >>> classifier = wrap(net, num_classes=10, input_size=32, mean=CIFAR_MEAN, std=CIFAR_STD)  # doctest: +SKIP
    """
    if not isinstance(model, nn.Module):
        raise WorkbenchError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_positive_int(num_classes, "num_classes")
    if num_classes < 2:
        raise WorkbenchError(f"num_classes must be at least 2, got {num_classes}")
    check_positive_int(in_channels, "in_channels")
    height, width = _size_pair(input_size, "input_size")
    mean = (0.0,) * in_channels if mean is None else tuple(float(m) for m in mean)
    std = (1.0,) * in_channels if std is None else tuple(float(s) for s in std)
    if len(mean) not in (1, in_channels) or len(std) != len(mean) or min(std) <= 0:
        raise WorkbenchError(f"mean and std need 1 or {in_channels} values each (std > 0), got mean={mean}, std={std}")
    resized = None if model_size is None else _size_pair(model_size, "model_size")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    wrapped = WrappedClassifier(model, Normalize(mean, std), (in_channels, height, width), num_classes,
                                None if resized == (height, width) else resized, cam_layer).to(device).eval()
    if cam_layer is not None:
        _module_path(wrapped, cam_layer)  # a clear error now for a layer the model does not have
    produced = _logit_count(wrapped)
    if produced != num_classes:
        raise WorkbenchError(f"the model outputs {produced} logits per image but num_classes={num_classes}; pass "
                             f"num_classes={produced} or the model that has {num_classes} outputs")
    return wrapped


def _size_pair(size: int | tuple[int, int], name: str) -> tuple[int, int]:
    if not isinstance(size, (int, tuple, list)):
        raise WorkbenchError(f"{name} must be an int or (height, width), got {size!r}")
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2:
        raise WorkbenchError(f"{name} must be an int or (height, width), got {size!r}")
    return (check_positive_int(pair[0], name), check_positive_int(pair[1], name))


def input_shape_of(model: nn.Module) -> tuple[int, int, int]:
    """(C, H, W) a classifier takes: its `input_shape` attribute (workbench and wrapped models have one)."""
    shape = getattr(model, "input_shape", None)
    if shape is None:
        raise WorkbenchError(f"{type(model).__name__} does not say which images it takes: wrap it first, e.g. "
                             "workbench.wrap(model, num_classes=10, input_size=32, mean=..., std=...)")
    return tuple(int(s) for s in shape)


@torch.no_grad()
def _logit_count(model: nn.Module, input_shape: tuple[int, int, int] | None = None) -> int:
    """Number of logits the classifier outputs, from one forward pass of a grey image of `input_shape` (default:
    the model's own) in eval mode."""
    channels, height, width = input_shape or input_shape_of(model)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        out = model(torch.full((1, channels, height, width), 0.5, device=device))
    finally:
        model.train(was_training)
    if out.ndim != 2:
        raise WorkbenchError(f"the classifier must return logits of shape (N, K), got shape {tuple(out.shape)}")
    return int(out.shape[1])


def num_classes_of(model: nn.Module, num_classes: int | None = None,
                   input_shape: tuple[int, int, int] | None = None) -> int:
    """The class count: the caller's, else the model's `num_classes` attribute, else its number of logits (on
    images of `input_shape`, default the model's); a caller's count is checked against the model's output."""
    produced = getattr(model, "num_classes", None) or _logit_count(model, input_shape)
    if num_classes is not None and check_positive_int(num_classes, "num_classes") != produced:
        raise WorkbenchError(f"num_classes={num_classes} but the model outputs {produced} logits; pass "
                             f"num_classes={produced} (or None to take it from the model)")
    return int(produced)


def check_model_images(model: nn.Module, images: torch.Tensor, name: str = "images") -> torch.Tensor:
    """A non-empty image batch (N, C, H, W) in [0, 1], of the channels and size the model declares if it declares
    them (`input_shape`; any nn.Module is accepted, a foreign one unchecked for shape)."""
    shape = getattr(model, "input_shape", None)
    check_images(images, channels=shape[0] if shape else None, size=tuple(shape[1:]) if shape else None, name=name)
    if len(images) == 0:
        raise WorkbenchError(f"{name} are empty: pass at least one image")
    return images


def check_classifier(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None = None, *,
                     num_classes: int | None = None, name: str = "images") -> int:
    """Check that `images` (N, C, H, W) in [0, 1] (and `labels` (N,), in range) fit `model`; return the class
    count (see `num_classes_of`)."""
    if not isinstance(model, nn.Module):
        raise WorkbenchError(f"model must be a torch.nn.Module (a workbench model or workbench.wrap(...)), got "
                             f"{type(model).__name__}")
    channels, height, width = input_shape_of(model)
    check_images(images, channels=channels, size=(height, width), name=name)
    if len(images) == 0:
        raise WorkbenchError(f"{name} are empty: pass at least one image")
    classes = num_classes_of(model, num_classes)
    if labels is not None:
        check_labels(labels, len(images), classes)
    return classes


def _module_path(model: nn.Module, name: str) -> list[str]:
    """The dotted path of split point `name` inside `model` (a stage of a workbench model, or any module of a
    wrapped one)."""
    modules = dict(model.named_modules())
    for prefix in ("stages.", "model.", ""):  # a workbench model's stages, a wrapped model's modules, any module
        if name and prefix + name in modules:
            return (prefix + name).split(".")
    top = [n for n, _ in (model.stages if isinstance(model, StagedClassifier) else
                          getattr(model, "model", model)).named_children()]
    raise WorkbenchError(f"no module named {name!r} in this {type(model).__name__}; split points are module names "
                         f"such as {', '.join(top)} (dotted names reach inside, e.g. 'layer4.1')")


def resolve_split(model: nn.Module, split: str | None) -> str:
    """The split point: `split`, else a workbench model's `default_split` (a wrapped model has none to offer)."""
    split = split or getattr(model, "default_split", None)
    if split is None:
        top = ", ".join(n for n, _ in getattr(model, "model", model).named_children())
        raise WorkbenchError(f"this {type(model).__name__} has no default split point: pass split=<module name> "
                             f"(one of {top}, e.g. 'layer4' for a torchvision ResNet)")
    _module_path(model, split)  # refuses a name that is no module of the model
    return split


@contextmanager
def capture(model: nn.Module, name: str, *, at: str = "input", leaf: bool = False) -> Iterator[list[torch.Tensor]]:
    """Record, for every forward pass of `model` inside the block, the input (T&R's stem features f_s(x) at split
    point `name`) or the output (a CAM method's feature map of layer `name`) of module `name`.

    With `leaf=True` the recorded tensor is detached into a leaf that requires grad and the forward pass goes on
    from it, so gradients with respect to the features can be taken (`torch.autograd.grad(score, features)`),
    as Grad-CAM needs, whether or not the model's own parameters require grad.

    Yields the list the tensors are appended to, one per forward pass.
    """
    check_name("capture point", at, ("input", "output"))
    module = model.get_submodule(".".join(_module_path(model, name)))
    recorded: list[torch.Tensor] = []

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach().requires_grad_(True) if leaf else tensor
        recorded.append(tensor)
        return tensor

    if at == "input":
        handle = module.register_forward_pre_hook(lambda _module, args: (keep(args[0]), *args[1:]))
    else:
        handle = module.register_forward_hook(lambda _module, _args, output: keep(output))
    try:
        yield recorded
    finally:
        handle.remove()


def head_modules(model: nn.Module, split: str) -> list[nn.Module]:
    """The modules that run from split point `split` on: the named module, the siblings registered after it, and
    the later siblings of each of its parents (registration order is taken as execution order, as it is in
    sequential networks, ResNets and WideResNets). T&R's head (Alg. 1 line 5) is this list; the stem is the rest."""
    path = _module_path(model, split)
    head: list[nn.Module] = []
    parent = model
    for depth, part in enumerate(path):
        children = list(parent.named_children())
        start = [n for n, _ in children].index(part)
        is_split = depth == len(path) - 1  # the split module itself belongs to the head; its parents do not
        head += [module for _, module in children[start + (0 if is_split else 1):]]
        parent = children[start][1]
    return _ordered(model, head)


def _ordered(model: nn.Module, modules: list[nn.Module]) -> list[nn.Module]:
    """`modules` in the order `model.modules()` visits them (so seeded re-initialisation draws in a fixed order)."""
    wanted = {id(m) for m in modules}
    return [m for m in model.modules() if id(m) in wanted]


class FrozenStem(nn.Module):
    """Training view of a classifier whose stem is frozen: only the head modules (`head_modules`) have gradients,
    and the stem stays in eval mode (BatchNorm statistics frozen) whatever `train()` is called with (T&R stage 2,
    Alg. 1 line 6). `requires_grad` is restored by `release()`."""

    def __init__(self, model: nn.Module, head: list[nn.Module]) -> None:
        super().__init__()
        self.model = model
        self._head = head
        head_params = {id(p) for m in head for p in m.parameters()}
        self._stem_params = [p for p in model.parameters() if id(p) not in head_params]
        head_ids = {id(sub) for m in head for sub in m.modules()}
        self._stem_modules = [m for m in model.modules() if id(m) not in head_ids and not any(
            id(c) in head_ids for c in m.modules())]
        for p in self._stem_params:
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> FrozenStem:
        super().train(mode)
        for module in self._stem_modules:
            module.eval()
        return self

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The images it takes: those of the classifier it trains."""
        return input_shape_of(self.model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def release(self) -> None:
        for p in self._stem_params:
            p.requires_grad_(True)
