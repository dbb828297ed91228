"""Scale presets: `smoke` (CI plumbing, seconds), `cpu` (default: minutes on a laptop CPU, shows the papers'
effects), `gpu` (the papers' networks and epochs on fewer models and rows, sized with the GPU-hours
`python -m workbench jobs plan --scale gpu` estimates; see the README), `paper` (the papers' settings; days on a GPU).

Notebooks take a `scale` parameter; None means `$WORKBENCH_SCALE`, else "cpu". So nbval runs notebooks at
smoke scale (the test command sets WORKBENCH_SCALE=smoke) while a person opening a notebook gets cpu scale.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TypeVar

from workbench.core.validation import WorkbenchError, check_name

SCALES = ("smoke", "cpu", "gpu", "paper")
T = TypeVar("T")


def resolve_scale(scale: str | None = None) -> str:
    """`scale` if given, else `$WORKBENCH_SCALE`, else "cpu"; validated."""
    scale = scale or os.environ.get("WORKBENCH_SCALE") or "cpu"
    return check_name("scale", scale, SCALES)


def pick(scale: str | None, presets: dict[str, T]) -> T:
    """The preset for `scale` (resolved as in `resolve_scale`) from a {scale: preset} mapping."""
    scale = resolve_scale(scale)
    if scale not in presets:
        raise WorkbenchError(f"no preset for scale {scale!r}; this experiment defines: {', '.join(presets)}")
    return presets[scale]


def with_overrides(preset: T, **values: object) -> T:
    """`preset` (a dataclass) with each field in `values` that is not None replaced: a notebook parameter left at
    None keeps the scale's default. Lists, as papermill passes sequences, become tuples (nested ones too)."""
    def frozen(value: object) -> object:
        return tuple(frozen(item) for item in value) if isinstance(value, list | tuple) else value

    unknown = set(values) - {f.name for f in dataclasses.fields(preset)}
    if unknown:
        raise WorkbenchError(f"unknown preset field(s) {sorted(unknown)}; {type(preset).__name__} has "
                             f"{', '.join(f.name for f in dataclasses.fields(preset))}")
    return dataclasses.replace(preset, **{name: frozen(v) for name, v in values.items() if v is not None})
