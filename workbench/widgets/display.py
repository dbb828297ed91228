"""The one way every widget shows a figure: a real mime bundle set as the state of an ipywidgets Output.

Why not `Output.append_display_data(fig)` or `display(fig)` inside `with out:`: IPython then asks the object to
display itself, and a plotly figure's `_ipython_display_` writes into the *cell's* output (above the controls) while
the Output receives an empty bundle; redraws from control callbacks land nowhere, so the picture never changes.
`clear_output(wait=True)` + `display` inside `with out:` also deadlocks headless executors (papermill, nbclient).
Building the bundle here and assigning `Output.outputs` syncs it to the browser the same way from the first draw and
from every callback, and nbclient stores it in the notebook's widget state, where `workbench.repro.html` finds it.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt
import plotly.graph_objects as go
import plotly.io as pio
from matplotlib.figure import Figure

from workbench.core.validation import WorkbenchError

PLOTLY_MIME = "application/vnd.plotly.v1+json"


def plotly_bundle(figure: go.Figure) -> dict[str, object]:
    """The mime bundle JupyterLab's plotly renderer draws. The figure's fixed width is dropped so that it fills the
    notebook's width (a fixed 1,360 px figure was cut off in a 1,400 px window); its height is kept."""
    spec = json.loads(pio.to_json(figure, validate=False))  # numpy arrays -> JSON lists
    layout = spec.setdefault("layout", {})
    layout.pop("width", None)
    layout["autosize"] = True
    spec["config"] = {"responsive": True, "displaylogo": False}
    title = (layout.get("title") or {}).get("text", "")
    return {PLOTLY_MIME: spec, "text/plain": f"<plotly figure: {title}>"}


def matplotlib_bundle(figure: Figure) -> dict[str, object]:
    """A PNG of `figure` (then closed, so it is never drawn a second time by the inline backend)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return {"image/png": base64.b64encode(buffer.getvalue()).decode("ascii"),
            "text/plain": f"<matplotlib figure: {figure.get_suptitle()}>"}


def figure_bundle(figure: object) -> dict[str, object]:
    """The mime bundle of a plotly figure, a matplotlib figure or an HTML string (a message instead of a figure)."""
    if isinstance(figure, go.Figure):
        return plotly_bundle(figure)
    if isinstance(figure, Figure):
        return matplotlib_bundle(figure)
    if isinstance(figure, str):
        return {"text/html": figure, "text/plain": figure}
    raise WorkbenchError(f"figure must be a plotly Figure, a matplotlib Figure or an HTML string, got "
                         f"{type(figure).__name__}")


def show(out: widgets.Output, figure: object) -> None:
    """Replace what `out` shows by `figure` (see the module docstring for why the state is set directly)."""
    out.outputs = ({"output_type": "display_data", "data": figure_bundle(figure), "metadata": {}},)


def choice(options: Sequence[object], description: str, *, value: object = None,
           buttons: bool = False) -> widgets.Dropdown | widgets.ToggleButtons:
    """A Dropdown (or ToggleButtons) created with its options and a value, since one given its options later keeps
    `value=None` in ipywidgets 8; hidden when there is only one option, since a control that cannot change anything
    only misleads. `options` are values or (label, value) pairs."""
    if not options:
        raise WorkbenchError(f"no options for the {description!r} control")
    first = options[0][1] if isinstance(options[0], tuple) else options[0]
    kind = widgets.ToggleButtons if buttons else widgets.Dropdown
    control = kind(options=list(options), value=first if value is None else value, description=description)
    if len(options) == 1:
        control.layout.display = "none"
    return control
