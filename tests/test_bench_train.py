"""`python -m workbench bench train` (issue 26): training images/s per model and device, and its refusals."""

from __future__ import annotations

import os

import pytest
import torch

from workbench.core.validation import WorkbenchError
from workbench.repro import bench
from workbench.repro.bench import TRAIN_BENCH_DATASETS, bench_train, train_table
from workbench.repro.cli import main


def test_tiny_cpu_run_gives_one_row_per_model() -> None:
    rows = bench_train(device="cpu", batch=4, steps=1, warmup=1)
    assert [row["model"] for row in rows] == list(TRAIN_BENCH_DATASETS)
    assert all(row["images_per_s"] > 0 and row["path"] == "plain" and row["device"] == "cpu" for row in rows)
    table = train_table(rows)
    assert list(table.columns) == ["model", "cpu plain"] and len(table) == len(TRAIN_BENCH_DATASETS)


def test_table_shows_the_fast_paths_ratios() -> None:
    rows = [{"model": "resnet18", "device": device, "path": path, "images_per_s": speed}
            for device, path, speed in (("cuda:0", "fast", 6000.0), ("cuda:0", "plain", 2000.0),
                                        ("cpu", "plain", 60.0))]
    table = train_table(rows).set_index("model")
    assert table.loc["resnet18", "fast / plain"] == pytest.approx(3.0)
    assert table.loc["resnet18", "fast / cpu"] == pytest.approx(100.0)


def test_cli_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "train", "--models", "lenet5,wrn16_1", "--device", "cpu", "--batch", "4",
                 "--steps", "1"]) == 0
    out = capsys.readouterr().out
    assert "lenet5" in out and "wrn16_1" in out and "resnet18" not in out and "cpu plain" in out


@pytest.mark.parametrize(("arguments", "word"), [
    ({"models": "lenet5,vgg"}, "models"), ({"models": []}, "models"), ({"models": 3}, "models"),
    ({"batch": 0}, "batch"), ({"steps": -1}, "steps"), ({"steps": 1.5}, "steps"), ({"warmup": -1}, "warmup"),
    ({"cpu_steps": 0}, "cpu_steps"),
    ({"device": "tpu"}, "device"),
])
def test_bad_arguments_are_refused(arguments: dict, word: str) -> None:
    with pytest.raises(WorkbenchError, match=word):
        bench_train(**arguments)


@pytest.mark.parametrize("argv", [
    ["bench", "train", "--models", "vgg"], ["bench", "train", "--steps", "0"], ["bench", "train", "--batch", "-4"],
    ["bench", "train", "--steps", "x"], ["bench", "train", "--device", "tpu"],
    ["bench", "train", "--loop-images", "3"], ["bench", "bdmae", "--models", "lenet5"],
    ["bench", "bdmae", "--steps", "3"],
])
def test_cli_refuses_bad_arguments_with_exit_code_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse refused the type
        code = exit_.code
    assert code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_on_cuda_each_model_runs_fast_plain_and_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU run's plan without a GPU: what each timing sees of the switch, and the CPU comparison's length."""
    calls = []

    def fake(model: str, dev: torch.device, batch: int, steps: int, warmup: int) -> dict:
        calls.append((model, dev.type, os.environ[bench.FAST_GPU_VARIABLE], steps))
        return {"model": model, "device": str(dev), "batch": batch, "steps": steps, "warmup": warmup,
                "seconds": 1.0, "images_per_s": float(batch * steps)}

    monkeypatch.setattr(bench, "resolve_device", lambda device: torch.device("cuda"))
    monkeypatch.setattr(bench, "_train_images_per_s", fake)
    monkeypatch.setenv(bench.FAST_GPU_VARIABLE, "0")  # the user's setting is put back afterwards
    rows = bench.bench_train(models="resnet18", batch=8, steps=20)
    assert calls == [("resnet18", "cuda", "1", 20), ("resnet18", "cuda", "0", 20), ("resnet18", "cpu", "0", 5)]
    assert [row["path"] for row in rows] == ["fast", "plain", "plain"] and os.environ[bench.FAST_GPU_VARIABLE] == "0"
    assert list(bench.train_table(rows).columns) == ["model", "cuda fast", "cuda plain", "cpu plain",
                                                     "fast / plain", "fast / cpu"]
