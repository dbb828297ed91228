"""What notebooks hand to the batch runner: tables (paper vs measured) and figures.

A notebook calls `record_table` for each result table; when it runs under `python -m workbench reproduce`
the runner passes `results_dir` and collects the JSON files into the report. Outside the runner
(`results_dir=None`) nothing is recorded, the table is only returned for display.
"""

from __future__ import annotations

import html
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from workbench.core.runtime import figures_root
from workbench.core.storage import atomic_write, atomic_write_json
from workbench.core.validation import check_path_component


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item"):  # numpy / torch scalars
        return _jsonable(value.item())
    return value


def json_rows(table: pd.DataFrame) -> list[list[Any]]:
    """The rows of `table` as JSON values (NaN as null), as `record_table` stores them."""
    return [[_jsonable(v) for v in row] for row in table.itertuples(index=False)]


def record_table(table: pd.DataFrame, *, notebook: str, name: str, caption: str = "",
                 results_dir: str | Path | None = None) -> pd.DataFrame:
    """Save `table` as `<results_dir>/<notebook>__<name>.json` (and .csv) for the report; return it.

    Args:
        table: the table; paper columns and measured columns side by side.
        notebook: the notebook's stem, e.g. "00_quickstart".
        name: a short table name, e.g. "backdoor_metrics".
        caption: one sentence saying what was measured and how it differs from the paper.
        results_dir: the runner's results folder; None records nothing.
    """
    if results_dir is not None:
        check_path_component(notebook, "notebook")
        check_path_component(name, "table name")
        folder = Path(results_dir)
        payload = {"notebook": notebook, "name": name, "caption": caption, "columns": [str(c) for c in table.columns],
                   "rows": json_rows(table)}
        atomic_write_json(folder / f"{notebook}__{name}.json", payload)
        atomic_write(folder / f"{notebook}__{name}.csv", lambda tmp: table.to_csv(tmp, index=False))
    return table


@dataclass(frozen=True)
class ResultTable:
    """One table of a paper's reproduction as a `repro` function returns it: the measured columns beside the
    paper's, the short `name` it is recorded under and a `caption` saying what was measured and what differs."""

    name: str
    caption: str
    frame: pd.DataFrame

    def _repr_html_(self) -> str:  # a notebook shows the caption above the table
        return f"<p><b>{html.escape(self.name)}</b>: {html.escape(self.caption)}</p>" + self.frame.to_html(index=False)

    def __str__(self) -> str:
        return f"{self.name}: {self.caption}\n{self.frame.to_string(index=False)}"


def record(table: ResultTable, notebook: str, results_dir: str | Path | None) -> ResultTable:
    """`record_table` for a `ResultTable`; returns it for display."""
    record_table(table.frame, notebook=notebook, name=table.name, caption=table.caption, results_dir=results_dir)
    return table


def load_tables(results_dir: str | Path) -> list[dict[str, Any]]:
    """All tables recorded in `results_dir`, sorted by notebook and name."""
    return [json.loads(p.read_text()) for p in sorted(Path(results_dir).glob("*__*.json"))]


def save_figure(fig: Any, *, notebook: str, name: str, scale: str, folder: str | Path | None = None) -> Path:
    """Save a matplotlib figure as `<figures>/<notebook>_<scale>_<name>.png` (atomically) and return the path."""
    for value, what in ((notebook, "notebook"), (name, "figure name"), (scale, "scale")):
        check_path_component(value, what)
    path = Path(folder) if folder is not None else figures_root()
    target = path / f"{notebook}_{scale}_{name}.png"
    atomic_write(target, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    return target


@dataclass
class ColdRunClock:
    """How long a notebook would take from an empty cache: the time since `started` plus the recorded compute time
    of every artefact it loaded from the cache, each key counted once (one computed earlier in the same run, then
    reloaded by a later table, is in the run's own time already)."""

    started: float = field(default_factory=time.time)
    #: artefact key -> recorded seconds of each artefact loaded from the cache and not computed in this run
    loaded_seconds: dict[str, float] = field(default_factory=dict)
    computed_keys: set[str] = field(default_factory=set)

    def seen(self, key: str, loaded: bool, seconds: float) -> None:
        """Record one artefact the run used: computed now (`loaded=False`) or loaded, with its recorded seconds."""
        if not loaded:
            self.computed_keys.add(key)
        elif key not in self.computed_keys:
            self.loaded_seconds[key] = seconds

    def wall_minutes(self) -> float:
        return (time.time() - self.started) / 60

    def cold_minutes(self) -> float:
        return self.wall_minutes() + sum(self.loaded_seconds.values()) / 60
