"""The HTML pages `python -m workbench reproduce --scale smoke` writes, opened in Chromium with the network off:
every plotly figure must be drawn (plotly.js is embedded) and every image loaded, with no script error."""

from __future__ import annotations

from pathlib import Path

import pytest

from workbench.repro.runner import PAPERS, reproduce

PAGES = [(paper, Path(name).stem) for paper, names in PAPERS.items() for name in names]


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory: pytest.TempPathFactory):
    """paper -> the folder of its HTML pages, reproduced at smoke scale once per paper (so that `-k` selects what
    runs: CI checks two papers' pages, `make ui-test` all of them)."""
    done: dict[str, Path] = {}

    def pages_of(paper: str) -> Path:
        if paper not in done:
            out = tmp_path_factory.mktemp(f"reproduced_{paper}")
            report, runs = reproduce([paper], scale="smoke", output_dir=out, progress=False)
            assert all(run.ok for run in runs), [(run.notebook, run.error) for run in runs if not run.ok]
            assert report.read_text().count("](html/") == len(PAPERS[paper])  # the report links every page
            done[paper] = out / "html"
        return done[paper]

    return pages_of


@pytest.mark.parametrize(("paper", "notebook"), PAGES, ids=[notebook for _, notebook in PAGES])
def test_every_figure_shows_with_the_network_off(browser, reproduced, paper: str, notebook: str) -> None:
    pages = reproduced(paper)
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
