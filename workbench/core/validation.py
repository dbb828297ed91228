"""Input validation shared by the public API.

Every public entry point checks its inputs here, so a wrong shape, range or name fails at once with a
one-line message that says what was wrong and how to fix it, instead of deep inside a convolution.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import torch


class WorkbenchError(ValueError):
    """A user-facing error: its message names the problem and the fix, on one line."""


class UnknownNameError(WorkbenchError, KeyError):
    """A dataset, model, attack or scale name that is not registered."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


def check_name(kind: str, name: str, known: Iterable[str]) -> str:
    """Return `name` if it is one of `known`, else raise naming the valid choices."""
    known = sorted(known)
    if name not in known:
        raise UnknownNameError(f"unknown {kind} {name!r}; choose one of: {', '.join(known)}")
    return name


def check_images(x: torch.Tensor, *, channels: int | None = None, size: int | tuple[int, int] | None = None,
                 name: str = "images") -> torch.Tensor:
    """Check a float image batch of shape (N, C, H, W) with values in [0, 1].

    Args:
        x: the batch.
        channels: the required channel count C, if any.
        size: the required spatial size (H == W == size, or (H, W)), if any.
        name: what to call the tensor in error messages.

    Returns:
        `x` unchanged.
    """
    if not isinstance(x, torch.Tensor):
        raise WorkbenchError(f"{name} must be a torch.Tensor of shape (N, C, H, W), got {type(x).__name__}")
    if x.ndim != 4:
        raise WorkbenchError(f"{name} must have shape (N, C, H, W), got shape {tuple(x.shape)}; "
                             "add a batch dimension with x.unsqueeze(0) for a single image")
    if not x.is_floating_point():
        raise WorkbenchError(f"{name} must be floating point in [0, 1], got dtype {x.dtype}; "
                             "convert uint8 images with x.float() / 255")
    check_positive_int(channels, "channels", optional=True)
    if size is not None and not isinstance(size, tuple):
        check_positive_int(size, "size")
    if channels is not None and x.shape[1] != channels:
        raise WorkbenchError(f"{name} must have {channels} channel(s), got {x.shape[1]} (shape {tuple(x.shape)})")
    if size is not None:
        hw = (size, size) if isinstance(size, int) else tuple(size)
        if tuple(x.shape[2:]) != hw:
            raise WorkbenchError(f"{name} must be {hw[0]}x{hw[1]} pixels, got {x.shape[2]}x{x.shape[3]}")
    if x.numel():
        if not bool(torch.isfinite(x).all()):
            raise WorkbenchError(f"{name} contain NaN or infinite values; check the preprocessing that made them")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise WorkbenchError(f"{name} must lie in [0, 1], got values in [{lo:.9g}, {hi:.9g}]; "
                                 "inputs are un-normalised images (models normalise internally)")
    return x


def _shape_of(value: object) -> str:
    return f"{getattr(value, 'dtype', type(value).__name__)} of shape {tuple(getattr(value, 'shape', ()))}"


def check_tensor(value: object, name: str, *, ndim: int | tuple[int, ...] | None = None, kind: str = "float",
                 shape: tuple[int | None, ...] | None = None, finite: bool = True, nonempty: bool = False
                 ) -> torch.Tensor:
    """Check a tensor that is not an image batch (logits, features, masks, indices, a trigger pattern).

    Args:
        value: the tensor.
        name: what to call it in error messages.
        ndim: the required rank, or the allowed ranks; any when None (`shape` implies it).
        kind: "float", "integer" or "bool" (the dtype family).
        shape: required sizes, None for a free dimension.
        finite: refuse NaN and infinities (floats only).
        nonempty: refuse a tensor with no elements.

    Returns:
        `value` unchanged.
    """
    ranks = (len(shape),) if shape is not None else (ndim,) if isinstance(ndim, (int, float, str)) else ndim
    for rank in ranks or ():
        check_non_negative(rank, "ndim", integer=True)
    check_name("tensor kind", kind, ("float", "integer", "bool"))
    wanted = (f"shape {tuple('N' if size is None else size for size in shape)}".replace("'N'", "N") if shape is not None
              else f"rank {' or '.join(map(str, ranks))}" if ranks else "any shape")
    article = "an" if kind == "integer" else "a"
    if not isinstance(value, torch.Tensor):
        raise WorkbenchError(f"{name} must be {article} {kind} torch.Tensor ({wanted}), got {type(value).__name__}")
    family = "bool" if value.dtype == torch.bool else "float" if value.is_floating_point() else (
        "complex" if value.is_complex() else "integer")
    if family != kind or (ranks and value.ndim not in ranks) or (shape is not None and any(
            size is not None and size != actual for size, actual in zip(shape, value.shape, strict=True))):
        raise WorkbenchError(f"{name} must be {article} {kind} tensor ({wanted}), got {_shape_of(value)}")
    if nonempty and value.numel() == 0:
        raise WorkbenchError(f"{name} is empty ({_shape_of(value)}): pass at least one element")
    if finite and kind == "float" and not bool(torch.isfinite(value).all()):
        raise WorkbenchError(f"{name} contains NaN or infinite values; check what produced it")
    return value


def check_labels(labels: torch.Tensor, count: int, num_classes: int | None = None, name: str = "labels"
                 ) -> torch.Tensor:
    """Integer class labels of shape (count,): class indices, so >= 0, and < num_classes when the count is given."""
    check_non_negative(count, "count", integer=True)
    check_positive_int(num_classes, "num_classes", optional=True)
    if (not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.is_complex()
            or labels.dtype == torch.bool):
        raise WorkbenchError(f"{name} must be an integer torch.Tensor of shape (N,) (class indices), got "
                             f"{getattr(labels, 'dtype', type(labels).__name__)}")
    if labels.shape != (count,):
        raise WorkbenchError(f"{name} must hold one label per image: {count} images but {name} of shape "
                             f"{tuple(labels.shape)}")
    if num_classes is not None and count and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise WorkbenchError(f"{name} must lie in [0, {num_classes - 1}] for a {num_classes}-class model, got "
                             f"[{int(labels.min())}, {int(labels.max())}]")
    if count and int(labels.min()) < 0:
        raise WorkbenchError(f"{name} must be class indices >= 0, got a minimum of {int(labels.min())}")
    return labels


def check_class(value: int, num_classes: int, name: str = "class") -> int:
    """Check a single class index."""
    check_positive_int(num_classes, "num_classes")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < num_classes:
        raise WorkbenchError(f"{name} must be an integer class index in [0, {num_classes - 1}], got {value!r}")
    return value


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_fraction(value: float, name: str, *, allow_zero: bool = False, allow_one: bool = True) -> float:
    """Check a fraction in (0, 1]; `allow_zero` admits 0, `allow_one=False` excludes 1."""
    interval = ("[0" if allow_zero else "(0") + (", 1]" if allow_one else ", 1)")
    if not _is_number(value):
        raise WorkbenchError(f"{name} must be a number in {interval}, got {value!r}")
    lo_ok = value >= 0 if allow_zero else value > 0
    hi_ok = value <= 1 if allow_one else value < 1
    if not (lo_ok and hi_ok):
        raise WorkbenchError(f"{name} must be in {interval}, got {value!r}")
    return float(value)


def check_positive(value: float, name: str) -> float:
    """Check a strictly positive finite number."""
    if not _is_number(value) or not 0 < value < math.inf:
        raise WorkbenchError(f"{name} must be a finite number > 0, got {value!r}")
    return value


def check_positive_int(value: object, name: str, *, optional: bool = False) -> int | None:
    """Check a positive integer (or None when `optional`)."""
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise WorkbenchError(f"{name} must be a positive integer{' or None' if optional else ''}, got {value!r}")
    return value


def check_non_negative(value: object, name: str, *, integer: bool = False, meaning_of_zero: str = "") -> float | int:
    """Check a number >= 0 (an integer when `integer`); `meaning_of_zero` (e.g. "0 skips the phase") joins the
    message."""
    ok = ((isinstance(value, int) if integer else _is_number(value)) and not isinstance(value, bool)
          and 0 <= value < math.inf)
    if not ok:
        what = "an integer" if integer else "a finite number"
        note = f" ({meaning_of_zero})" if meaning_of_zero else ""
        raise WorkbenchError(f"{name} must be {what} >= 0{note}, got {value!r}")
    return value


def check_seed(value: object, name: str = "seed") -> int:
    """Check a seed: any integer (not a float, not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise WorkbenchError(f"{name} must be an integer, got {value!r}")
    return value


def check_path_component(value: object, name: str) -> str:
    """Check a name that becomes one folder or file name: a non-empty string without path separators, not "." or
    "..", so the path built from it stays inside its folder."""
    if (not isinstance(value, str) or not value or value in (".", "..") or "/" in value or "\\" in value
            or "\0" in value):
        raise WorkbenchError(f"{name} must be a plain file name (no '/', '\\', '..' or empty), got {value!r}; "
                             "it becomes a folder name inside the workbench's own folder")
    return value


def check_inside(path: str | Path, folder: str | Path, name: str) -> Path:
    """`path` resolved (symbolic links followed), after checking that it lies inside `folder` (also resolved)."""
    resolved, root = Path(path).resolve(), Path(folder).resolve()
    if not resolved.is_relative_to(root):
        raise WorkbenchError(f"{name} resolves to {resolved}, outside {root}; give a name inside that folder "
                             "(and no symbolic link that leads out of it)")
    return resolved
