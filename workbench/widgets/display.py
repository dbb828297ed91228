"""What every widget needs to show a figure in an ipywidgets Output."""

from __future__ import annotations

import ipywidgets as widgets


def show(out: widgets.Output, figure: object) -> None:
    """Replace what `out` shows by `figure`. Setting the Output widget's state directly (rather than
    `clear_output(wait=True)` + `display` inside `with out`, which deadlocks headless executors such as
    papermill/nbclient, or `fig.show()`, which picks a browser renderer in a headless kernel) works everywhere."""
    out.outputs = ()
    out.append_display_data(figure)
