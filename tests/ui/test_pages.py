"""The HTML pages `python -m workbench reproduce --scale smoke` writes, opened in Chromium with the network off:
every plotly figure must be drawn (plotly.js is embedded) and every image loaded, with no script error."""

from __future__ import annotations

from pathlib import Path

import pytest

from workbench.repro.runner import PAPERS, reproduce

NOTEBOOKS = [Path(name).stem for names in PAPERS.values() for name in names]


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reproduced")
    report, runs = reproduce(scale="smoke", output_dir=out, progress=False)
    assert all(run.ok for run in runs), [(run.notebook, run.error) for run in runs if not run.ok]
    assert report.read_text().count("](html/") == len(NOTEBOOKS)  # the report links every page
    return out / "html"


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_every_figure_shows_with_the_network_off(browser, pages: Path, notebook: str) -> None:
    page_file = pages / f"{notebook}.html"
    source = page_file.read_text()
    context = browser.new_context(viewport={"width": 1400, "height": 900}, offline=True)
    context.route("http*://**/*", lambda route: route.abort())  # nothing but the file itself may load
    tab = context.new_page()
    errors = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    tab.goto(page_file.as_uri(), wait_until="load")
    plotly = source.count("Plotly.newPlot(")
    tab.wait_for_function("(n) => document.querySelectorAll('.js-plotly-plot .main-svg').length >= n", arg=plotly,
                          timeout=60_000)
    drawn = tab.evaluate("() => Array.from(document.querySelectorAll('.plotly-graph-div'),"
                         " (div) => div.querySelector('.main-svg') !== null)")
    images = tab.evaluate("() => Array.from(document.querySelectorAll('.jp-RenderedImage img'),"
                          " (img) => img.complete && img.naturalWidth > 0)")
    tab.screenshot(path=pages / f"{notebook}.png", full_page=False)
    context.close()
    assert len(drawn) == plotly and all(drawn), f"{notebook}: {drawn.count(False)} plotly figures not drawn"
    assert images and all(images), f"{notebook}: {images.count(False)} of {len(images)} images did not load"
    assert not errors, f"{notebook}: script errors {errors}"
