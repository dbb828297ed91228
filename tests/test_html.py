"""Executed notebooks as self-contained HTML: a real kernel runs a notebook with a widget, a plotly figure and a
matplotlib figure; the page must hold every figure and load nothing from the network."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import papermill
import pytest

from workbench.core.validation import WorkbenchError
from workbench.repro.html import WIDGET_VIEW, static_notebook, write_html

SOURCE = '''
import ipywidgets as widgets
import matplotlib.pyplot as plt
import plotly.graph_objects as go
from workbench.widgets.display import choice, show

out = widgets.Output()
letters = choice(["a", "b"], "letter", value="b")
hidden = choice(["only"], "hidden")
step = widgets.IntSlider(3, 0, 5, description="step")
show(out, go.Figure(go.Bar(y=[1, 2, 3]), layout={"title": "bars in the widget"}))
display(widgets.VBox([widgets.HBox([letters, hidden, step]), widgets.HTML("<b>caption</b>"), out]))
go.Figure(go.Scatter(y=[3, 1, 2]), layout={"title": "line in the cell"})
'''
MATPLOTLIB = "fig, ax = plt.subplots(); ax.plot([1, 2]); plt.show()"


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("html")
    cells = [nbformat.v4.new_code_cell(SOURCE), nbformat.v4.new_code_cell(MATPLOTLIB)]
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, folder / "source.ipynb")
    papermill.execute_notebook(str(folder / "source.ipynb"), str(folder / "executed.ipynb"), kernel_name="python3",
                               progress_bar=False)
    return folder / "executed.ipynb"


def test_widget_views_become_their_last_figures_and_control_choices(executed: Path) -> None:
    notebook = nbformat.read(executed, as_version=4)
    assert "widgets" in notebook.metadata  # the executor saved the widget state
    static = static_notebook(notebook)
    assert "widgets" not in static.metadata
    outputs = static.cells[0].outputs
    assert not any(WIDGET_VIEW in output.get("data", {}) for output in outputs)
    texts = [output["data"].get("text/html", "") for output in outputs]
    assert "letter: <b>b</b>" in texts[0] and "step: <b>3</b>" in texts[0] and "hidden" not in texts[0]
    assert texts[1] == "<b>caption</b>"
    assert "bars in the widget" in texts[2] and "Plotly.newPlot" in texts[2]  # the Output's figure, drawable
    assert "line in the cell" in texts[3] and "Plotly.newPlot" in texts[3]  # a cell's plotly figure, drawable


def test_the_page_embeds_plotly_once_and_loads_nothing_but_mathjax(executed: Path, tmp_path: Path) -> None:
    page = write_html(executed, tmp_path / "page.html").read_text()
    assert page.count("Plotly.newPlot(") == 2  # the widget's figure and the cell's figure
    plotly_js = page.index("plotly.js v")
    assert plotly_js < page.index("Plotly.newPlot(") and page.count("plotly.js v") == 1  # embedded once, before use
    sources = re.findall(r"<script[^>]+src=[\"']([^\"']+)", page)
    assert all("mathjax" in src.lower() for src in sources), sources  # MathJax degrades to plain TeX offline
    assert "require.min.js" not in page and "html-manager" not in page and "mermaid" not in page.lower()
    images = re.findall(r"<img[^>]+src=[\"']([^\"']{0,30})", page)
    assert images == ["data:image/png;base64,iVBORw0K"]  # the matplotlib figure, inline


def test_a_missing_notebook_is_named(tmp_path: Path) -> None:
    with pytest.raises(WorkbenchError, match="notebook_path"):
        write_html(tmp_path / "absent.ipynb", tmp_path / "page.html")
