"""Batch reproduction: execute the project's notebooks with papermill and write a results report.

`reproduce(["quickstart"], scale="cpu")` runs each paper's notebooks into `outputs/<scale>/notebooks/`,
passes them `scale` and a `results_dir`, then gathers the tables they recorded into
`outputs/<scale>/report.md`, `results.json` and one CSV per table, and writes each executed notebook as a
self-contained page `outputs/<scale>/html/<notebook>.html` (`workbench.repro.html`). Figures go to `figures/`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from workbench.core.runtime import PROJECT_ROOT, figures_root
from workbench.core.scales import resolve_scale
from workbench.core.storage import atomic_write_bytes, atomic_write_json
from workbench.core.validation import WorkbenchError, check_inside, check_name
from workbench.repro.html import write_html
from workbench.repro.results import load_tables

#: Notebooks run for each paper, in order. Later issues add their papers here.
PAPERS: dict[str, tuple[str, ...]] = {
    "quickstart": ("00_quickstart.ipynb",),
    "bdmae": ("10_bdmae_walkthrough.ipynb", "11_bdmae_tables.ipynb"),
    "restore": ("20_restore_walkthrough.ipynb", "21_restore_tables.ipynb"),
    "lred": ("30_lred_walkthrough.ipynb", "31_lred_tables.ipynb"),
    "trap_replace": ("40_trap_replace_walkthrough.ipynb", "41_trap_replace_tables.ipynb"),
}


@dataclass
class NotebookRun:
    notebook: str
    seconds: float
    ok: bool
    error: str = ""


def notebooks_dir() -> Path:
    if PROJECT_ROOT is None or not (PROJECT_ROOT / "notebooks").is_dir():
        raise WorkbenchError("the notebooks folder was not found: run `python -m workbench reproduce` from a "
                             "checkout of the workbench repository (pip install -e .)")
    return PROJECT_ROOT / "notebooks"


def reproduce(papers: list[str] | None = None, *, scale: str | None = None, output_dir: str | Path | None = None,
              progress: bool = True) -> tuple[Path, list[NotebookRun]]:
    """Execute the notebooks of `papers` (default: all) at `scale` and write the report.

    Returns:
        (path of report.md, one `NotebookRun` per notebook).
    """
    import papermill

    scale = resolve_scale(scale)
    papers = papers or list(PAPERS)
    for paper in papers:
        check_name("paper", paper, PAPERS)
    source = notebooks_dir()
    out = Path(output_dir) if output_dir is not None else (PROJECT_ROOT or Path.cwd()) / "outputs" / scale
    results = out / "results"
    results.mkdir(parents=True, exist_ok=True)
    check_inside(results, out, "the results folder")  # its stale tables are deleted below: never outside it
    (out / "notebooks").mkdir(parents=True, exist_ok=True)
    for stale in results.glob("*__*.*"):  # tables are rewritten by this run
        stale.unlink()
    runs = []
    previous_scale = os.environ.get("WORKBENCH_SCALE")
    os.environ["WORKBENCH_SCALE"] = scale  # the kernels inherit it
    try:
        for paper in papers:
            for name in PAPERS[paper]:
                start = time.time()
                try:
                    papermill.execute_notebook(
                        str(source / name), str(out / "notebooks" / name), cwd=str(source), kernel_name="python3",
                        parameters={"scale": scale, "results_dir": str(results)}, progress_bar=progress)
                    runs.append(NotebookRun(name, time.time() - start, True))
                except Exception as exc:  # noqa: BLE001 - report every notebook, then fail at the end
                    last_line = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
                    runs.append(NotebookRun(name, time.time() - start, False, last_line))
                executed = out / "notebooks" / name
                if executed.is_file():  # papermill saves a failed notebook too: its page shows where it stopped
                    write_html(executed, out / "html" / f"{Path(name).stem}.html")
    finally:
        if previous_scale is None:
            os.environ.pop("WORKBENCH_SCALE", None)
        else:
            os.environ["WORKBENCH_SCALE"] = previous_scale
    return write_report(out, scale, runs), runs


def write_report(out: Path, scale: str, runs: list[NotebookRun]) -> Path:
    """Write report.md, results.json and per-table CSVs from the tables in `out/results`."""
    tables = load_tables(out / "results")
    lines = [f"# Workbench results at `{scale}` scale", "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')}. Executed notebooks: `{out / 'notebooks'}`; "
             f"figures: `{figures_root()}`. Each notebook's page (`html/`) shows every figure offline.", "",
             "| notebook | status | minutes | page |", "| --- | --- | --- | --- |"]

    def page(run: NotebookRun) -> str:
        name = f"html/{Path(run.notebook).stem}.html"
        return f"[html]({name})" if (out / name).is_file() else "none"

    lines += [f"| {r.notebook} | {'ok' if r.ok else 'FAILED: ' + r.error} | {r.seconds / 60:.1f} | {page(r)} |"
              for r in runs]
    for table in tables:
        frame = pd.DataFrame(table["rows"], columns=table["columns"])
        lines += ["", f"## {table['notebook']}: {table['name']}", "", table["caption"], "",
                  frame.to_markdown(index=False)]
    stems = tuple(Path(r.notebook).stem for r in runs)
    figures = sorted(f for f in figures_root().glob(f"*_{scale}_*.png") if f.name.startswith(stems))
    if figures:
        lines += ["", "## Figures", ""] + [f"- `{f.name}`" for f in figures]
    report = out / "report.md"
    atomic_write_bytes(report, ("\n".join(lines) + "\n").encode())
    atomic_write_json(out / "results.json", {"scale": scale, "runs": [r.__dict__ for r in runs], "tables": tables})
    return report

