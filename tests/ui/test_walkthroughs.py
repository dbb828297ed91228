"""The walkthrough widgets in JupyterLab, in a real browser: Run All at smoke scale, then move every control of
every widget and check that the figure *inside that widget* changes.

What the kernel-side tests (tests/test_widgets.py) cannot see is checked here: that JupyterLab renders the bundle
(plotly's renderer draws `gd.data`, the PNG's `img` source changes), that nothing is drawn outside the widget, that
Play runs to its end, that no figure is wider than the notebook at 1,400 px, and that no widget fails to display.
Figures are compared by a fingerprint of plotly's `gd.data` and title, or of the image source, never by pixels.
One screenshot per widget is written to outputs/ui/.
"""

from __future__ import annotations

import time

import pytest

from tests.ui.conftest import SCREENSHOTS

#: The widgets each walkthrough shows, in order (screenshot names).
WIDGETS = {
    "10_bdmae_walkthrough": ["trigger_score_explorer", "refinement_player"],
    "20_restore_walkthrough": ["tau_rho_explorer", "trigger_gallery", "purification_view"],
    "30_lred_walkthrough": ["annealing_player", "detection_view"],
    "40_trap_replace_walkthrough": ["feature_scatter_explorer", "reconstruction_viewer"],
}
WIDTH, HEIGHT = 1400, 900
RUN_ALL_SECONDS = 900
REDRAW_SECONDS = 180  # a BDMAE purification of a new image runs in the kernel before the redraw

#: A widget view straight in a cell's output (not one nested in another widget).
TOP_LEVEL_VIEW = ".jp-Cell-outputArea > .jp-OutputArea-child > .jp-OutputArea-output > .widget-vbox"
FIGURES = ".widget-output .js-plotly-plot, .widget-output .jp-RenderedImage img"

FINGERPRINT = """(view) => {
  const hash = (text) => { let h = 0; for (let i = 0; i < text.length; i++) h = (h * 31 + text.charCodeAt(i)) | 0;
                           return text.length + ':' + h; };
  return Array.from(view.querySelectorAll(arguments_selector)).map((el) => el.tagName === 'IMG'
    ? 'img ' + hash(el.src)
    : 'plotly ' + hash(JSON.stringify(el.data || null) + JSON.stringify((el.layout || {}).title || null))).join(' | ');
}""".replace("arguments_selector", repr(FIGURES))

KERNEL_READY = """() => Array.from(document.querySelectorAll('.jp-StatusBar-TextItem'),
                                  (e) => e.textContent.trim()).some((t) => / \\| Idle$/.test(t))"""
NOTEBOOK_DONE = """() => {
  const prompts = Array.from(document.querySelectorAll('.jp-CodeCell .jp-InputPrompt'), (e) => e.textContent.trim());
  const status = document.querySelector('.jp-Notebook-ExecutionIndicator');
  if (document.body.innerText.includes('Traceback (most recent call last)')) return 'error';
  return prompts.length > 0 && prompts.every((p) => /^\\[\\d+\\]:$/.test(p)) && status
    && status.dataset.status === 'idle' ? 'done' : false;
}"""


def fingerprint(view) -> str:
    return view.evaluate(FINGERPRINT)


def wait_for_redraw(page, view, before: str, what: str) -> str:
    """Wait until the figures inside `view` differ from `before` and have stayed the same for a second."""
    deadline = time.monotonic() + REDRAW_SECONDS
    current, stable_since = fingerprint(view), None
    while True:
        time.sleep(0.25)
        latest = fingerprint(view)
        if latest != current:
            current, stable_since = latest, None
        elif current != before and current:
            stable_since = stable_since or time.monotonic()
            if time.monotonic() - stable_since > 1.0 and kernel_idle(page):
                return current
        assert time.monotonic() < deadline, f"{what}: the figure inside the widget did not change"


def kernel_idle(page) -> bool:
    return page.evaluate("() => document.querySelector('.jp-Notebook-ExecutionIndicator')?.dataset.status") == "idle"


def run_all(page, lab, notebook: str) -> None:
    page.goto(lab.notebook_url(notebook))
    page.wait_for_function(KERNEL_READY, timeout=120_000)  # the indicator says idle before any kernel exists
    page.locator(".lm-MenuBar-item", has_text="Run").first.click()
    page.locator(".lm-Menu-item", has_text="Run All Cells").first.click()
    outcome = page.wait_for_function(NOTEBOOK_DONE, timeout=RUN_ALL_SECONDS * 1000, polling=1000).json_value()
    assert outcome == "done", f"{notebook}: a cell raised (see the screenshot in {SCREENSHOTS})"


def move_slider(page, view, slider, key: str | None = None) -> str:
    handle = slider.locator(".noUi-handle")
    now, top = float(handle.get_attribute("aria-valuenow")), float(handle.get_attribute("aria-valuemax"))
    handle.focus()
    before = fingerprint(view)
    handle.press(key or ("ArrowRight" if now < top else "ArrowLeft"))
    return wait_for_redraw(page, view, before, f"slider {slider.inner_text()!r}")


def play_to_the_end(page, view, player) -> None:
    """Rewind the linked slider, press Play and wait until it stops on the slider's last value, redrawn."""
    slider = view.locator(".widget-slider").filter(visible=True).first
    handle = slider.locator(".noUi-handle")
    if handle.get_attribute("aria-valuenow") != handle.get_attribute("aria-valuemin"):
        move_slider(page, view, slider, key="Home")
    before = fingerprint(view)
    player.locator("button").first.click()
    page.wait_for_function("(h) => h.getAttribute('aria-valuenow') === h.getAttribute('aria-valuemax')",
                           arg=handle.element_handle(), timeout=REDRAW_SECONDS * 1000, polling=200)
    wait_for_redraw(page, view, before, "Play")
    last = handle.get_attribute("aria-valuenow")
    time.sleep(2)  # several Play intervals: it must have stopped there
    assert handle.get_attribute("aria-valuenow") == last == handle.get_attribute("aria-valuemax")


def move_every_control(page, view, name: str) -> list[str]:
    """Move each visible control once; return what was moved."""
    moved = []
    for dropdown in view.locator(".widget-dropdown").filter(visible=True).all():
        select = dropdown.locator("select")
        count, current = select.locator("option").count(), select.evaluate("(s) => s.selectedIndex")
        before = fingerprint(view)
        select.select_option(index=(current + 1) % count)
        wait_for_redraw(page, view, before, f"{name}: dropdown {dropdown.inner_text()!r}")
        moved.append("dropdown")
    for buttons in view.locator(".widget-toggle-buttons").filter(visible=True).all():
        before = fingerprint(view)
        buttons.locator(".widget-toggle-button:not(.mod-active)").first.click()
        wait_for_redraw(page, view, before, f"{name}: toggle buttons {buttons.inner_text()!r}")
        moved.append("toggle buttons")
    for slider in view.locator(".widget-slider").filter(visible=True).all():
        move_slider(page, view, slider)
        moved.append("slider")
    for player in view.locator(".widget-play").filter(visible=True).all():
        play_to_the_end(page, view, player)
        moved.append("play")
    return moved


def assert_drawn(view, name: str) -> None:
    """Every figure inside `view` is drawn at a visible size (a figure in a zero-width box still counts as present)."""
    sizes = view.evaluate("""(view) => Array.from(view.querySelectorAll(
        '.widget-output .js-plotly-plot .main-svg:first-of-type, .widget-output .jp-RenderedImage img'),
        (e) => [Math.round(e.getBoundingClientRect().width), Math.round(e.getBoundingClientRect().height)])""")
    assert sizes and all(w >= 150 and h >= 100 for w, h in sizes), f"{name}: figures drawn at {sizes} px"


def assert_fits(page, view, name: str) -> None:
    """No figure inside `view` reaches past the notebook's right edge (nor the 1,400 px window)."""
    right = min(WIDTH, page.locator(".jp-NotebookPanel-notebook").bounding_box()["x"]
                + page.locator(".jp-NotebookPanel-notebook").bounding_box()["width"])
    widest = view.evaluate("""(view) => Math.max(0, ...Array.from(
        view.querySelectorAll('.widget-output .main-svg, .widget-output .jp-RenderedImage img'),
        (e) => e.getBoundingClientRect().right))""")
    assert widest <= right + 1, f"{name}: a figure ends at x = {widest:.0f} px, past the notebook's edge at {right:.0f}"


@pytest.fixture
def page(browser, lab):
    context = browser.new_context(viewport={"width": WIDTH, "height": HEIGHT})
    tab = context.new_page()
    tab.console_errors = []
    tab.on("console", lambda message: message.type == "error" and tab.console_errors.append(message.text))
    tab.on("pageerror", lambda error: tab.console_errors.append(str(error)))
    yield tab
    context.close()
    lab.shut_down_kernels()


@pytest.mark.parametrize("notebook", list(WIDGETS))
def test_every_control_redraws_the_figure_inside_its_widget(page, lab, notebook: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    try:
        run_all(page, lab, notebook)
    finally:
        page.screenshot(path=SCREENSHOTS / f"{notebook}_after_run_all.png")
    views = page.locator(TOP_LEVEL_VIEW)
    assert views.count() == len(WIDGETS[notebook]), f"{notebook}: expected widgets {WIDGETS[notebook]}"
    for view, name in zip(views.all(), WIDGETS[notebook], strict=True):
        view.scroll_into_view_if_needed()
        cell_output = view.locator("xpath=ancestor::div[contains(@class, 'jp-Cell-outputArea')][1]")
        drawn_outside = cell_output.evaluate("""(area) => Array.from(area.querySelectorAll(
            '.js-plotly-plot, .jp-RenderedImage img')).filter((e) => !e.closest('.widget-vbox')).length""")
        assert drawn_outside == 0, f"{name}: {drawn_outside} figures drawn in the cell, outside the widget"
        assert fingerprint(view), f"{name}: no figure inside the widget after Run All"
        opened_on = view.evaluate("(view) => Array.from(view.querySelectorAll('select'), (s) => s.selectedIndex)")
        assert all(index == 0 for index in opened_on), f"{name}: dropdowns open on options {opened_on}, not the first"
        assert_drawn(view, name)
        assert_fits(page, view, name)
        moved = move_every_control(page, view, name)
        assert moved, f"{name}: no visible control"
        assert_drawn(view, name)
        assert_fits(page, view, name)
        view.screenshot(path=SCREENSHOTS / f"{notebook}_{name}.png")
    assert "Error displaying widget" not in page.inner_text("body")
    assert not page.console_errors, f"console errors: {page.console_errors}"
