"""The attack interface and its registry.

An attack is a frozen dataclass of documented parameters whose `apply` maps a float image batch
(N, C, H, W) in [0, 1] to its triggered version. Parameters are plain values, so an attack serialises to
JSON (`to_dict` / `attack_from_dict`) and takes part in the content hash of a trained model's config.
Patterns that depend on the image shape are generated deterministically from the parameters (and seed)
on first use for that shape, then cached.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from workbench.core.validation import WorkbenchError, check_images, check_name, check_positive_int, check_seed

ATTACK_FAMILIES: dict[str, type[Attack]] = {}
#: fields that several families share, and what each must be
_POSITION_FIELDS, _SIZE_FIELDS = ("row", "col"), ("channels", "generator_width")
ATTACK_PRESETS: dict[str, Callable[[], Attack]] = {}
PRESET_NOTES: dict[str, str] = {}


@dataclasses.dataclass(frozen=True)
class Attack:
    """Base class: subclasses define `family`, their parameters and `_apply`."""

    family: ClassVar[str] = ""
    #: True when the attack has a training-time "noise mode" (WaNet): see `apply_noise_mode`.
    has_noise_mode: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.family:
            ATTACK_FAMILIES[cls.family] = cls
        own_check = cls.__dict__.get("__post_init__")

        def __post_init__(self: Attack) -> None:  # every family checks its common fields, then its own
            _check_common_fields(self)
            if own_check is not None:
                own_check(self)

        cls.__post_init__ = __post_init__

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Return the triggered images (a new tensor on `x`'s device).

        Args:
            x: images (N, C, H, W), float in [0, 1].
        """
        check_images(x)
        return self._apply(x)

    __call__ = apply

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def apply_noise_mode(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Training-time noise-mode version of the trigger (label kept); only where `has_noise_mode`."""
        raise WorkbenchError(f"attack {self.family!r} has no noise mode; use noise_ratio=0")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able parameters, with the family under "family"."""
        return {"family": self.family, **dataclasses.asdict(self)}

    def replace(self, **changes: Any) -> Attack:
        """A copy with some parameters changed (e.g. a lower test-time blend alpha)."""
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in dataclasses.asdict(self).items())
        return f"{self.family}({params})"

    @functools.lru_cache(maxsize=32)  # noqa: B019 - instances are small, frozen and hashable
    def pattern_for(self, channels: int, height: int, width: int) -> Any:
        """The shape-dependent pattern for this attack, built once per image shape."""
        return self._build_pattern(channels, height, width)

    def _build_pattern(self, channels: int, height: int, width: int) -> Any:
        raise NotImplementedError


def _check_common_fields(attack: Attack) -> None:
    """Seeds are integers, patch positions integers (or None = the family's default), channel counts and widths
    positive integers: checked for every family, whatever its own `__post_init__` checks."""
    family = type(attack).__name__
    for f in dataclasses.fields(attack):
        value = getattr(attack, f.name)
        if f.name == "seed" or f.name.endswith("_seed"):
            check_seed(value, f"{family} {f.name}")
        elif f.name in _POSITION_FIELDS:
            _check_position(value, f"{family} {f.name}", optional=True)
        elif f.name in _SIZE_FIELDS:
            check_positive_int(value, f"{family} {f.name}")


def _check_position(value: object, name: str, *, optional: bool = False) -> None:
    """A patch coordinate: an integer pixel index, negative counting from the far edge (or None when `optional`)."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise WorkbenchError(f"{name} must be an integer pixel index (negative counts from the end)"
                             f"{' or None' if optional else ''}, got {value!r}")


def _check_finite(value: object, name: str) -> float:
    """A finite number (any sign)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise WorkbenchError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def register_preset(name: str, note: str) -> Callable[[Callable[[], Attack]], Callable[[], Attack]]:
    """Register a named attack configuration from a paper (decorator on a zero-argument factory)."""
    def decorate(factory: Callable[[], Attack]) -> Callable[[], Attack]:
        ATTACK_PRESETS[name] = factory
        PRESET_NOTES[name] = note
        return factory
    return decorate


def make_attack(name: str, **params: Any) -> Attack:
    """Build an attack by family name ("badnets", "blended", ...) or preset name ("bdmae_badnets_colour", ...).

    Keyword arguments set (family) or override (preset) parameters.
    """
    check_name("attack", name, [*ATTACK_FAMILIES, *ATTACK_PRESETS])
    try:
        if name in ATTACK_PRESETS:
            return ATTACK_PRESETS[name]().replace(**params) if params else ATTACK_PRESETS[name]()
        return ATTACK_FAMILIES[name](**params)
    except TypeError as exc:  # unknown keyword
        raise WorkbenchError(f"bad parameters for attack {name!r}: {exc}") from exc


def attack_from_dict(data: dict[str, Any]) -> Attack:
    """Inverse of `Attack.to_dict`."""
    params = dict(data)
    family = params.pop("family", None)
    if family is None:
        raise WorkbenchError(f"attack dict needs a 'family' key, got keys {sorted(data)}")
    check_name("attack family", family, ATTACK_FAMILIES)
    for key, value in params.items():  # JSON turns tuples into lists; dataclass fields want hashable tuples
        if isinstance(value, list):
            params[key] = tuple(value)
    return ATTACK_FAMILIES[family](**params)


def resolve_position(value: int, extent: int, size: int, what: str) -> int:
    """A patch coordinate: non-negative from the top/left, negative from the bottom/right edge.

    Args:
        value: the coordinate (`what` in messages, e.g. "row").
        extent: the image's side along that axis, in pixels.
        size: the patch's side along that axis, in pixels.
    """
    _check_position(value, what)
    check_positive_int(extent, f"extent (the image side along {what})")
    check_positive_int(size, f"size (the patch side along {what})")
    pos = value + extent if value < 0 else value
    if not 0 <= pos <= extent - size:
        raise WorkbenchError(f"{what}={value} puts a {size}-pixel patch outside a {extent}-pixel image; "
                             f"use 0..{extent - size} (or {-extent}..{-size} from the far edge)")
    return pos

