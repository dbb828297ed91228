"""Executed notebooks as self-contained HTML pages that show every figure with the network off.

`nbconvert --to html` alone loses most figures: plotly outputs have no HTML form ("not able to be represented"),
and widgets are drawn by a widget manager fetched from a CDN, so offline they are blank. Here, before export:
- every widget view is replaced by a static copy of its current view, read from the widget state that the executor
  saved in the notebook: a line with each control's current choice, then what its Output widgets and HTML captions
  show (the figures the widget drew last);
- every plotly figure (in a cell or a widget) gains an HTML form that draws it with plotly.js, which the page
  embeds once (the `offline` template, which also drops require.js, mermaid and the widget manager).
"""

from __future__ import annotations

import copy
import html
from pathlib import Path

import nbformat

from workbench.core.storage import atomic_write_bytes
from workbench.core.validation import WorkbenchError

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
PLOTLY_MIME = "application/vnd.plotly.v1+json"
TEMPLATES = Path(__file__).resolve().parent / "templates"
CAPTIONS = ("HTMLModel", "HTMLMathModel", "LabelModel")


def _html_output(text: str) -> dict:
    return nbformat.v4.new_output("display_data", data={"text/html": text, "text/plain": text})


def _with_plotly_html(output: dict) -> dict:
    """`output` with an HTML form of its plotly figure (plotly.js itself is embedded once per page)."""
    import plotly.io as pio

    data = output.get("data", {})
    if PLOTLY_MIME not in data or "text/html" in data:
        return output
    spec = data[PLOTLY_MIME]
    div = pio.to_html({"data": spec.get("data", []), "layout": spec.get("layout", {})}, config=spec.get("config"),
                      include_plotlyjs=False, full_html=False, validate=False, default_width="100%")
    return {**output, "data": {**data, "text/html": div}}


def _hidden(model_state: dict, models: dict) -> bool:
    layout = models.get(str(model_state.get("layout", "")).removeprefix("IPY_MODEL_"), {})
    return layout.get("state", {}).get("display") == "none"


def _collect(model_id: str, models: dict, controls: list[str], outputs: list[dict]) -> None:
    """Walk one widget tree: the current choice of each visible control, and what its Outputs and captions show."""
    model = models.get(model_id)
    if model is None:
        outputs.append(_html_output("<i>(this widget's state was not saved with the notebook)</i>"))
        return
    name, state = model.get("model_name", ""), model.get("state", {})
    if _hidden(state, models):
        return
    description = html.escape(str(state.get("description", "")))
    if name == "OutputModel":
        outputs.extend(_with_plotly_html(output) for output in state.get("outputs", []))
    elif name in CAPTIONS:
        outputs.append(_html_output(str(state.get("value", ""))))
    elif "_options_labels" in state and state.get("index") is not None:
        controls.append(f"{description}: <b>{html.escape(str(state['_options_labels'][state['index']]))}</b>")
    elif name.endswith("SliderModel"):
        controls.append(f"{description}: <b>{html.escape(str(state.get('value')))}</b>")
    for child in state.get("children", []):
        _collect(str(child).removeprefix("IPY_MODEL_"), models, controls, outputs)


def static_notebook(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of an executed notebook with widget views replaced by their static views, plotly figures given an HTML
    form, and the widget state removed (nothing left that needs a widget manager)."""
    notebook = copy.deepcopy(notebook)
    models = notebook.metadata.pop("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        outputs = []
        for output in cell.get("outputs", []):
            view = output.get("data", {}).get(WIDGET_VIEW)
            if view is None:
                outputs.append(_with_plotly_html(output))
                continue
            controls, shown = [], []
            _collect(view.get("model_id", ""), models, controls, shown)
            if controls:
                outputs.append(_html_output("<p><i>widget, as last shown:</i> " + " &middot; ".join(controls) + "</p>"))
            outputs.extend(shown)
        cell.outputs = [nbformat.from_dict(output) for output in outputs]
    return notebook


def write_html(notebook_path: str | Path, html_path: str | Path) -> Path:
    """Write the executed notebook at `notebook_path` as one self-contained HTML page at `html_path`."""
    from nbconvert import HTMLExporter
    from plotly.offline import get_plotlyjs

    notebook_path, html_path = Path(notebook_path), Path(html_path)
    if not notebook_path.is_file():
        raise WorkbenchError(f"notebook_path {str(notebook_path)!r} is not a file; pass an executed .ipynb")
    notebook = static_notebook(nbformat.read(notebook_path, as_version=4))
    has_plotly = any(PLOTLY_MIME in output.get("data", {}) for cell in notebook.cells
                     for output in cell.get("outputs", []))
    exporter = HTMLExporter(template_name="offline", extra_template_basedirs=[str(TEMPLATES)], embed_images=True)
    body, _ = exporter.from_notebook_node(notebook, resources={
        "metadata": {"name": notebook_path.stem, "path": str(notebook_path.parent)},
        "plotly_js": get_plotlyjs() if has_plotly else ""})
    atomic_write_bytes(html_path, body.encode("utf-8"))
    return html_path
