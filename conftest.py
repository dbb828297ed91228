"""Pytest set-up shared by unit and notebook tests: notebooks run at smoke scale, figures go to a temp folder,
and the offline dataset mirror beside the project is used when WORKBENCH_DATA is not set (as the Makefile does)."""

import os
import tempfile
from pathlib import Path

_MIRROR = Path(__file__).resolve().parent.parent / "shared" / "data"
if "WORKBENCH_DATA" not in os.environ and _MIRROR.is_dir():
    os.environ["WORKBENCH_DATA"] = str(_MIRROR)

os.environ.setdefault("WORKBENCH_SCALE", "smoke")
os.environ.setdefault("WORKBENCH_FIGURES", os.path.join(tempfile.gettempdir(), "workbench-test-figures"))
