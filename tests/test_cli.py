"""`python -m workbench`: dataset listing and one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import needs_real_data
from workbench.core import data as data_module
from workbench.repro.cli import main


def test_datasets_lists_sources_and_sizes(tiny_mirror: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(data_module, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    assert main(["datasets"]) == 1  # fashion-mnist and gtsrb are not in the tiny mirror
    out = capsys.readouterr().out
    assert "cifar10        available classes=10  image=3x32x32  train=200" in out
    assert "gtsrb          MISSING" in out
    assert str(tiny_mirror / "cifar10" / "test.tar.gz") in out
    assert "load_splits cuts train / holdout / test" in out  # MNIST's missing train split is explained


@pytest.mark.parametrize(("argv", "fragment"), [
    (["reproduce", "nosuchpaper", "--scale", "smoke"], "error: unknown paper 'nosuchpaper'; choose one of:"),
])
def test_bad_arguments_give_one_line(argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(fragment) and err.count("\n") == 1


@needs_real_data
def test_all_four_datasets_available_here() -> None:
    result = subprocess.run([sys.executable, "-m", "workbench", "datasets"], capture_output=True, text=True,
                            check=False, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("mnist", "fashion-mnist", "cifar10", "gtsrb"):
        assert any(line.startswith(name + " ") and "available" in line for line in result.stdout.splitlines())
