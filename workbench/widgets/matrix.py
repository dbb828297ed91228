"""Defence-matrix explorer: pick a model and a defence, see its result (ipywidgets; figures from
`workbench.viz.matrix`, results computed beforehand by `workbench.repro.matrix.run_matrix`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import pandas as pd

from workbench.repro.matrix import purified_examples
from workbench.viz.matrix import detection_cell_figure, purification_cell_figure
from workbench.widgets.display import choice, show

_HIDDEN = ("identity", "class_scores", "clean labels", "triggered labels")


def cell_view(cell: dict[str, Any], folder: str | Path, class_names: Sequence[str] | None = None) -> object:
    """What the explorer shows for one cell: its figure, or its numbers as an HTML table."""
    if "n/a" in cell:
        return f"<p><b>not applicable</b>: {cell['n/a']}</p>"
    if cell["kind"] == "detector":
        return detection_cell_figure(cell, list(class_names) if class_names else None)
    examples = purified_examples(folder, cell["model"], cell["defence"]) if cell["kind"] == "purifier" else None
    if examples is not None:
        return purification_cell_figure(examples, f"{cell['defence']} on {cell['model']}: CA {cell['CA']:.0f} %, "
                                                  f"BA {cell['BA']:.0f} %, ASR {cell['ASR']:.0f} %")
    shown = {k: v for k, v in cell.items() if k not in _HIDDEN}
    return pd.DataFrame([shown]).to_html(index=False, float_format=lambda v: f"{v:.2f}")


def matrix_explorer(cells: Sequence[dict[str, Any]], folder: str | Path,
                    class_names: dict[str, Sequence[str]] | None = None) -> widgets.VBox:
    """Pick a model and a defence: a detector's per-class scores, a purifier's triggered and purified images, a
    repair's numbers. `class_names` maps a model to its classes (default: class indices)."""
    by_key = {(c["model"], c["defence"]): c for c in cells}
    models = list(dict.fromkeys(c["model"] for c in cells))
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
