"""One small interface per kind of defence, behind a registry (timm's `create_model` / `list_models` shape).

    detector = create("red-a")
    verdict = detector.detect(model, clean_images, clean_labels)           # -> Detection
    purifier = create("bdmae")
    purified = purifier.purify(model_or_query, test_images)                # -> Purification
    repair = create("fine-tuning", epochs=5)
    repaired = repair.repair(model, (holdout_images, holdout_labels))      # -> Repair
    trainer = create("trap-and-replace", split="layer4", training={"epochs": 30})
    trained = trainer.train(untrained_model, (train_images, train_labels),
                            clean_holdout=(holdout_images, holdout_labels))  # -> Training

Kinds: "detector" (post-training detection: L-RED, REStore's diagnosis), "purifier" (test-time purification:
BDMAE, REStore, Blur, ShrinkPad, PatchCleanser, Februus), "repair" (post-training repair on clean data:
fine-tuning, NAD, ANP, I-BAU, T&R's head replacement) and "training" (training-time defences that train a model
of the caller's architecture on a possibly poisoned training set: T&R stages 1 + 2, ABL, DP-SGD). The defences
themselves live in their own modules (`workbench.defenses.lred`, `.restore`, `.bdmae`, `.trap_replace`,
`.baselines`); the registered classes in `workbench.defenses.registered` are thin adapters over them. Results
are dataclasses that serialise to a folder (`save`: safetensors for tensors, JSON for the rest).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn as nn
from safetensors.torch import save_file

from workbench.core.query import QueryModel
from workbench.core.storage import atomic_write, atomic_write_json
from workbench.core.validation import UnknownNameError, WorkbenchError

KINDS = ("detector", "purifier", "repair", "training")


def _json_ready(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


class _Serialises:
    """`save(folder)`: the tensor fields to `tensors.safetensors`, everything else (with the method's own summary,
    `details`) to `result.json`. Fields that are neither (a model, the method's raw result) are left out."""

    _tensor_fields: tuple[str, ...] = ()

    def summary(self) -> dict[str, Any]:
        """Every scalar field, JSON-ready."""
        skip = {*self._tensor_fields, "result", "model"}
        return {f.name: _json_ready(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name not in skip}

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {name: getattr(self, name).detach().cpu().contiguous() for name in self._tensor_fields
                   if getattr(self, name) is not None}
        if tensors:
            atomic_write(folder / "tensors.safetensors", lambda tmp: save_file(tensors, str(tmp)))
        atomic_write_json(folder / "result.json", {"type": type(self).__name__, **self.summary()})
        return folder


@dataclass
class Detection(_Serialises):
    """A detector's verdict on one classifier.

    Attributes:
        method: the registered name.
        detected: whether the model is judged backdoored.
        target: the suspected target class (reported whether or not a backdoor is detected).
        statistic: the method's detection statistic (L-RED: max 1 / ||v||; REStore: the suspect's lead in log10 rho).
        p_value: the order-statistic p-value (L-RED) or None (REStore decides on a margin).
        class_scores: (K,) the per-class statistic the verdict ranks.
        queries: model queries used (None for white-box methods, which use gradients).
        seconds: wall-clock time.
        details: the method's own JSON summary; `result` the method's full result object (not serialised).
    """

    method: str
    detected: bool
    target: int
    statistic: float
    p_value: float | None
    class_scores: torch.Tensor
    queries: int | None
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)
    result: Any = field(default=None, repr=False)
    _tensor_fields = ("class_scores",)


@dataclass
class Purification(_Serialises):
    """A test-time purifier's output on a batch of N images.

    Attributes:
        method: the registered name.
        images: (N, C, H, W) purified images in [0, 1] (None for defences that only vote on labels: PatchCleanser).
        labels: (N,) the labels the defended pipeline outputs.
        queries: label queries spent on the batch (None for white-box Februus).
        seconds: wall-clock time.
        details, result: as in `Detection`.
    """

    method: str
    images: torch.Tensor | None
    labels: torch.Tensor
    queries: int | None
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)
    result: Any = field(default=None, repr=False)
    _tensor_fields = ("images", "labels")


class _SavesModel(_Serialises):
    """`save` also writes the model's weights to `model.safetensors` beside the summary."""

    def save(self, folder: str | Path) -> Path:
        """The summary (see `_Serialises.save`) and the model's weights."""
        folder = super().save(folder)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        atomic_write(folder / "model.safetensors", lambda tmp: save_file(state, str(tmp)))
        return folder


@dataclass
class Repair(_SavesModel):
    """A post-training repair: the repaired copy of the model (the input is not modified) and its cost.

    `save` writes the repaired weights to `model.safetensors` beside the summary.
    """

    method: str
    model: nn.Module
    seconds: float
    holdout_images: int
    details: dict[str, Any] = field(default_factory=dict)
    result: Any = field(default=None, repr=False)


@dataclass
class Training(_SavesModel):
    """A training-time defence's model: the caller's architecture trained on the training set (the module passed
    in is not modified) and what it cost.

    Attributes:
        method: the registered name.
        model: the trained classifier (eval mode).
        seconds: wall-clock time of the whole training.
        train_images: size of the (possibly poisoned) training set.
        details: the settings used and the per-phase training history; `result` the method's own result.
    """

    method: str
    model: nn.Module
    seconds: float
    train_images: int
    details: dict[str, Any] = field(default_factory=dict)
    result: Any = field(default=None, repr=False)


class Detector(Protocol):
    """Post-training detection: L-RED (Sec. 3) and REStore's diagnosis (Sec. IV-D)."""

    def detect(self, model_or_query: nn.Module | QueryModel, clean_images: torch.Tensor,
               clean_labels: torch.Tensor, *, num_classes: int | None = None, seed: int = 0) -> Detection: ...


class TestTimePurifier(Protocol):
    """Test-time purification of the inputs of a (black-box) classifier: BDMAE (Alg. 1-3), REStore (Sec. III-D3)."""

    def purify(self, model_or_query: nn.Module | QueryModel, images: torch.Tensor, *, seed: int = 0
               ) -> Purification: ...


class Repairer(Protocol):
    """Post-training repair on clean data: T&R's head replacement (Sec. 3.2) and its baselines (Sec. 4.1)."""

    def repair(self, model: nn.Module, clean_holdout: Any, *, seed: int = 0) -> Repair: ...


class TrainingDefence(Protocol):
    """Training-time defence on a possibly poisoned training set: T&R stages 1 + 2 (Alg. 1), and its baselines
    ABL and DP-SGD ([T&R] Sec. 4.1)."""

    def train(self, model: nn.Module, train_set: Any, *, clean_holdout: Any = None, seed: int = 0) -> Training: ...


@dataclass(frozen=True)
class Entry:
    """A registered defence: its kind, its class and the first line of its docstring."""

    name: str
    kind: str
    factory: Callable[..., Any]
    summary: str


_REGISTRY: dict[str, Entry] = {}


def register(name: str, kind: str) -> Callable[[type], type]:
    """Class decorator: register a defence under `name` (lower case, unique) as a `kind` ("detector", "purifier",
    "repair" or "training"). Its constructor's keyword arguments are the defence's configuration."""
    if kind not in KINDS:
        raise WorkbenchError(f"unknown defence kind {kind!r}; choose one of {', '.join(KINDS)}")

    def decorate(cls: type) -> type:
        if name in _REGISTRY:
            raise WorkbenchError(f"a defence named {name!r} is already registered ({_REGISTRY[name].factory})")
        doc = inspect.getdoc(cls) or ""
        _REGISTRY[name] = Entry(name, kind, cls, doc.splitlines()[0] if doc else "")
        return cls

    return decorate


def available(kind: str | None = None) -> list[str]:
    """Registered defence names, sorted; only those of `kind` when given."""
    if kind is not None and kind not in KINDS:
        raise WorkbenchError(f"unknown defence kind {kind!r}; choose one of {', '.join(KINDS)}")
    return sorted(name for name, entry in _REGISTRY.items() if kind is None or entry.kind == kind)


def describe(name: str) -> Entry:
    """The registry entry of `name` (kind, class, one-line summary)."""
    if name not in _REGISTRY:
        raise UnknownNameError(f"unknown defence {name!r}; choose one of: {', '.join(available())}")
    return _REGISTRY[name]


def create(name: str, **config: Any) -> Any:
    """A defence by registered name, configured with `config` (see `available()` and the class's docstring)."""
    entry = describe(name)
    try:
        return entry.factory(**config)
    except TypeError as exc:
        raise WorkbenchError(f"bad configuration for defence {name!r}: {exc}") from exc
