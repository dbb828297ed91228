"""The fuzz suite's catalogue of the public API (issue 25): one valid call per public function and class.

`tests/test_fuzz_api.py` enumerates every public function and class of `workbench.core` and `workbench.defenses`
and requires each to be here (or to be an exception, a Protocol, or a registered defence class, which
`tests/test_fuzz.py` drives through `create`). For each entry it runs the valid call (so the example stays honest:
a check that refuses good input fails too), then corrupts one argument at a time with hypothesis-drawn bad values
of that argument's kind and requires a one-line `WorkbenchError` naming the argument.

An `Example` names which of its arguments hold images, labels, datasets, other tensors or registered names; every
numeric argument (given, or a numeric default of the signature / dataclass field) is fuzzed with non-numbers,
non-finite and negative values. The catalogue modules (`core`, `defenses`, `baselines`) only list entries.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import torch

from workbench.core.data import ImageDataset


@dataclass(frozen=True)
class Example:
    """One valid call of a public function or class, and what each of its arguments holds.

    Attributes:
        call: the public function or class.
        arguments: builds the keyword arguments of a valid call (fresh objects each time).
        images: arguments holding float images (N, C, H, W) in [0, 1].
        labels: arguments holding class labels, one per image of `of_images` (the first images argument).
        datasets: arguments holding an `ImageDataset`.
        tensors: other tensor arguments (a NaN or an extra dimension must be refused).
        names: string arguments naming something registered (an unknown name must be refused).
        paths: arguments holding a file or folder to read (a missing one must be refused).
        components: strings that become one path component (a name with a separator or "..", or empty, must be
            refused: it would leave its folder).
        signed: numeric arguments for which a negative number is valid (offsets counted from the end, seeds).
        skip: arguments the fuzzer leaves alone, each with the reason (as a comment in the catalogue).
        valid: argument -> corruption kinds that are valid input for it (the result is then correct).
        mentions: argument -> other words a message may use for it (e.g. the config field it is checked as).
        public: the public object `call` exercises when `call` is a wrapper (a context manager is entered).
        record: a result record the library builds from inputs it has checked (a `Detection`, a `SplittingResult`):
            constructed here, never fuzzed, since its fields are measured values (NaN included) and not settings.
    """

    call: Callable[..., Any]
    arguments: Callable[[], dict[str, Any]] = dict
    images: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    datasets: tuple[str, ...] = ()
    tensors: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    components: tuple[str, ...] = ()
    signed: tuple[str, ...] = ("seed",)
    skip: tuple[str, ...] = ()
    valid: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    mentions: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    record: bool = False
    public: Any = None

    def full_arguments(self) -> dict[str, Any]:
        """The example's arguments plus every numeric default it leaves out (those are fuzzed too)."""
        given = self.arguments()
        return {**_numeric_defaults(self.call), **given}


def _numeric_defaults(call: Callable[..., Any]) -> dict[str, Any]:
    if dataclasses.is_dataclass(call) and inspect.isclass(call):
        defaults = {f.name: f.default for f in dataclasses.fields(call) if f.init}
    else:
        target = call.__init__ if inspect.isclass(call) else call
        defaults = {p.name: p.default for p in inspect.signature(target).parameters.values()}
    return {k: v for k, v in defaults.items() if _is_number(v)}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


IMAGE_KINDS = ("no batch dimension", "wrong channels", "wrong size", "uint8", "0..255 floats", "negative values",
               "NaN", "empty batch")
LABEL_KINDS = ("too few", "out of range", "negative", "floating point", "two-dimensional")
DATASET_KINDS = ("labels out of range", "wrong channels", "wrong size", "empty")
TENSOR_KINDS = ("NaN", "extra dimension")
NUMBER_KINDS = ("NaN", "infinite", "negative", "string", "list")


def kinds_of(example: Example, argument: str, value: Any) -> tuple[str, ...]:
    """The corruption kinds that apply to `argument` (those the example marks valid removed)."""
    if example.record or argument in example.skip:
        return ()
    if argument in example.images:
        kinds = IMAGE_KINDS
    elif argument in example.labels:
        kinds = LABEL_KINDS
    elif argument in example.datasets:
        kinds = DATASET_KINDS
    elif argument in example.tensors:
        kinds = TENSOR_KINDS
    elif argument in example.names:
        kinds = ("unknown name",)
    elif argument in example.paths:
        kinds = ("missing path",)
    elif argument in example.components:
        kinds = ("leaves its folder",)
    elif _is_number(value):
        kinds = tuple(k for k in NUMBER_KINDS if k != "negative" or argument not in example.signed)
        if isinstance(value, int):
            kinds += ("fraction",)
    else:
        return ()
    return tuple(k for k in kinds if k not in example.valid.get(argument, ()))


def corrupt(kind: str, value: Any, draw: Callable[[Any], Any], strategies: Any) -> Any:
    """A bad value of `kind` derived from the valid `value`; `draw` and `strategies` are hypothesis's, so the
    magnitudes, positions and strings vary between runs."""
    st = strategies
    if kind == "unknown name":
        return "no-such-" + draw(st.text(alphabet="abcdefghij", min_size=1, max_size=6))
    if kind == "missing path":
        return f"{value}-missing-" + draw(st.text(alphabet="abcdefghij", min_size=1, max_size=6))
    if kind == "leaves its folder":
        return draw(st.sampled_from(("", ".", "..", "../x", "/abs", "a/b", "a\\b", "a\0b")))
    if _is_number(value):
        return _bad_number(kind, value, draw, st)
    if isinstance(value, ImageDataset):
        return _bad_dataset(kind, value, draw, st)
    return _bad_tensor(kind, value, draw, st)


def _bad_number(kind: str, value: int | float, draw: Callable[[Any], Any], st: Any) -> Any:
    if kind == "NaN":
        return math.nan
    if kind == "infinite":
        return draw(st.sampled_from((math.inf, -math.inf)))
    if kind == "negative":
        if isinstance(value, int):
            return draw(st.integers(min_value=-10**6, max_value=-1))
        return draw(st.floats(min_value=-1e6, max_value=-1e-6))
    if kind == "string":
        return str(value)
    if kind == "list":
        return [value]
    if kind == "fraction":  # an integer setting given a fractional number
        return value + draw(st.sampled_from((0.5, 0.25)))
    raise AssertionError(kind)


def _bad_tensor(kind: str, x: torch.Tensor, draw: Callable[[Any], Any], st: Any) -> torch.Tensor:
    if kind == "no batch dimension":
        return x[0]
    if kind == "wrong channels":
        return x[:, :1] if x.shape[1] != 1 else x.expand(-1, 3, -1, -1)
    if kind == "wrong size":
        side = draw(st.integers(min_value=4, max_value=x.shape[-1] - 1))
        return x[..., :side, :side].contiguous()
    if kind == "uint8":
        return (x * 255).round().to(torch.uint8)
    if kind == "0..255 floats":
        return x * 255
    if kind == "negative values":
        return x - draw(st.floats(min_value=0.01, max_value=10))
    if kind == "NaN":
        bad = x.clone().float() if not x.is_floating_point() else x.clone()
        flat = bad.view(-1)
        flat[draw(st.integers(min_value=0, max_value=flat.numel() - 1))] = math.nan
        return bad
    if kind == "empty batch":
        return x[:0]
    if kind == "extra dimension":
        return x.unsqueeze(0)
    if kind == "too few":
        return x[:draw(st.integers(min_value=0, max_value=len(x) - 1))]
    if kind == "out of range":
        return x + draw(st.integers(min_value=100, max_value=10**6))
    if kind == "negative":
        return x - draw(st.integers(min_value=100, max_value=10**6))
    if kind == "floating point":
        return x.float()
    if kind == "two-dimensional":
        return x[:, None]
    raise AssertionError(kind)


def _bad_dataset(kind: str, data: ImageDataset, draw: Callable[[Any], Any], st: Any) -> ImageDataset:
    if kind == "labels out of range":  # of the model's classes: the dataset itself names enough classes
        shift = draw(st.integers(min_value=100, max_value=1000))
        names = data.class_names + tuple(f"extra {k}" for k in range(shift))
        return ImageDataset(data.name, data.images, data.labels + shift, names, data.source)
    if kind == "empty":
        return data.subset(torch.arange(0))
    return data.replace(images=_bad_tensor(kind, data.images, draw, st))


# --- shared valid inputs: a 10-class LeNet-5 on 3 x 32 x 32 images, ten images, one per class --------------------

@cache
def _model_state() -> dict[str, torch.Tensor]:
    from workbench.core.models import build_model
    torch.manual_seed(0)
    return build_model("lenet5", in_channels=3, num_classes=10, image_size=32).state_dict()


def model(architecture: str = "lenet5") -> torch.nn.Module:
    """A fresh 10-class classifier (LeNet-5 unless named) for 3 x 32 x 32 images, in eval mode."""
    from workbench.core.models import build_model
    built = build_model(architecture, in_channels=3, num_classes=10, image_size=32)
    if architecture == "lenet5":
        built.load_state_dict(_model_state())
    return built.eval()


def images(count: int = 10) -> torch.Tensor:
    return torch.rand(count, 3, 32, 32, generator=torch.Generator().manual_seed(count))


def labels(count: int = 10) -> torch.Tensor:
    return torch.arange(count) % 10


def dataset(count: int = 20) -> ImageDataset:
    """`count` uint8 CIFAR-sized images with labels cycling over the ten classes."""
    pixels = (images(count) * 255).round().to(torch.uint8)
    return ImageDataset("cifar10", pixels, labels(count), tuple(str(k) for k in range(10)), "fuzz")
