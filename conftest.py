"""Pytest set-up shared by unit and notebook tests: notebooks run at smoke scale, figures go to a temp folder."""

import os
import tempfile

os.environ.setdefault("WORKBENCH_SCALE", "smoke")
os.environ.setdefault("WORKBENCH_FIGURES", os.path.join(tempfile.gettempdir(), "workbench-test-figures"))
