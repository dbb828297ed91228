"""Defence-matrix explorer: pick a model and a defence, see its result (ipywidgets; figures from
`workbench.viz.matrix`, results computed beforehand by `workbench.repro.matrix.run_matrix`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import ipywidgets as widgets
import pandas as pd

from workbench.repro.matrix import Cell, DetectionCell, NotApplicable, PurificationCell, PurifiedExamples
from workbench.viz.matrix import detection_cell_figure, purification_cell_figure
from workbench.widgets.display import choice, show

_HIDDEN = ("identity", "class_scores", "clean labels", "triggered labels")


def cell_view(cell: Cell, folder: str | Path, class_names: Sequence[str] | None = None) -> object:
    """What the explorer shows for one cell: its figure, or its numbers as an HTML table."""
    title = f"{cell.defence} on {cell.model}"
    if isinstance(cell, NotApplicable):
        return f"<p><b>not applicable</b>: {cell.reason}</p>"
    if isinstance(cell, DetectionCell):
        return detection_cell_figure(cell.class_scores, cell.target, cell.detected, title, class_names)
    examples = PurifiedExamples.load(folder, cell.model, cell.defence) if isinstance(cell, PurificationCell) else None
    if isinstance(cell, PurificationCell) and examples is not None:
        return purification_cell_figure(examples.triggered, examples.purified, examples.labels,
                                        f"{title}: CA {cell.CA:.0f} %, BA {cell.BA:.0f} %, ASR {cell.ASR:.0f} %")
    shown = {k: v for k, v in cell.stored().items() if k not in _HIDDEN}
    return pd.DataFrame([shown]).to_html(index=False, float_format=lambda v: f"{v:.2f}")


def matrix_explorer(cells: Sequence[Cell], folder: str | Path,
                    class_names: dict[str, Sequence[str]] | None = None) -> widgets.VBox:
    """Pick a model and a defence: a detector's per-class scores, a purifier's triggered and purified images, a
    repair's numbers. `class_names` maps a model to its classes (default: class indices)."""
    by_key = {(c.model, c.defence): c for c in cells}
    models = list(dict.fromkeys(c.model for c in cells))
    model_box = choice(models, "model")
    defence_box = choice([d for m, d in by_key if m == models[0]], "defence")
    out = widgets.Output()

    def draw(_: object = None) -> None:
        cell = by_key.get((model_box.value, defence_box.value))
        if cell is not None:
            show(out, cell_view(cell, folder, (class_names or {}).get(model_box.value)))

    model_box.observe(draw, names="value")
    defence_box.observe(draw, names="value")
    draw()
    return widgets.VBox([widgets.HBox([model_box, defence_box]), out])
