"""Issue 25: the artefact cache shared by many processes, and killed in the middle of a save.

Each scenario runs real processes (`python -c` on `WORKER`), because the locks are inter-process file locks and a
kill is a real SIGKILL. Every worker turns warnings into errors, so a worker that sees a damaged artefact fails.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch

from workbench.core.artefacts import ArtefactStore, config_key, get_or_compute
from workbench.core.storage import sha256_file

IDENTITY = {"test": "issue 25", "size": 1000}
KEY = config_key(IDENTITY)
ROOT = str(Path(__file__).resolve().parents[1])

WORKER = textwrap.dedent("""
    import json, os, sys, time, warnings
    warnings.simplefilter("error")  # a damaged artefact warns: here it fails the worker
    import torch
    from workbench.core.artefacts import ArtefactStore, config_key, get_or_compute
    from workbench.core.storage import sha256_file

    root, mode, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    identity = json.loads(sys.argv[4])
    key = config_key(identity)
    store = ArtefactStore(root, read_only_roots=[])
    if mode == "compute":  # slow, and different in every process: two computations would store different bytes
        def compute():
            with open(os.path.join(root, "computed.log"), "a") as log:
                log.write(f"{os.getpid()}\\n")
            time.sleep(1.5)
            return None, {"w": torch.full((1000,), float(os.getpid()))}, {"pid": os.getpid()}
        _, artefact, loaded = get_or_compute(store, "test", key, identity, compute=compute, restore=lambda a: None)
        print(json.dumps({"loaded": loaded, "sha": sha256_file(artefact.path / "weights.safetensors")}))
    elif mode == "save":
        for _ in range(count):
            store.save("test", key, {"w": torch.arange(1000.0)}, identity, {"n": 1})
    elif mode == "load":
        for _ in range(count):
            found = store.load("test", key, identity)
            assert found is not None and torch.equal(found.tensors["w"], torch.arange(1000.0)), "bad load"
    elif mode == "big-save":  # about 200 MB: long enough to be killed in the middle
        print("saving", flush=True)
        store.save("test", key, {"w": torch.ones(50_000_000)}, identity, {"n": 1})
        print("saved", flush=True)
""")


def _worker(root: Path, mode: str, count: int = 0, identity: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WORKER, str(root), mode, str(count),
                             json.dumps(identity or IDENTITY)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen, timeout: float = 300) -> str:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-2000:]
    return out


def test_two_processes_on_one_key_train_once_and_load_the_same_bytes(tmp_path: Path) -> None:
    first, second = _worker(tmp_path, "compute"), _worker(tmp_path, "compute")
    results = [json.loads(_finish(p).strip().splitlines()[-1]) for p in (first, second)]
    assert len((tmp_path / "computed.log").read_text().split()) == 1  # one computation
    assert sorted(r["loaded"] for r in results) == [False, True]  # the other waited and loaded it
    assert results[0]["sha"] == results[1]["sha"]


def test_600_concurrent_saves_and_1500_concurrent_loads_of_one_key(tmp_path: Path) -> None:
    ArtefactStore(tmp_path, read_only_roots=[]).save("test", KEY, {"w": torch.arange(1000.0)}, IDENTITY, {"n": 1})
    workers = [_worker(tmp_path, "save", 200) for _ in range(3)] + [_worker(tmp_path, "load", 500) for _ in range(3)]
    for process in workers:
        _finish(process)
    assert sorted(p.name for p in (tmp_path / "test").iterdir()) == [KEY]  # nothing left beside the key


@pytest.mark.parametrize("delay", [0.0, 0.3, 0.8, 1.5])
def test_a_save_killed_at_any_point_leaves_nothing_served_or_orphaned(tmp_path: Path, delay: float) -> None:
    process = _worker(tmp_path, "big-save")
    assert process.stdout.readline().strip() == "saving"
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    store = ArtefactStore(tmp_path, read_only_roots=[])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a half-written artefact is never served, not even with a warning
        found = store.load("test", KEY, IDENTITY)
    assert found is None or torch.equal(found.tensors["w"][:10], torch.ones(10))
    # the next call of the key serves a correct artefact and sweeps what the killed save left
    _, artefact, _ = get_or_compute(store, "test", KEY, IDENTITY, restore=lambda a: None,
                                    compute=lambda: (None, {"w": torch.zeros(10)}, {}))
    assert sha256_file(artefact.path / "weights.safetensors") == json.loads(
        (artefact.path / "manifest.json").read_text())["weights_sha256"]
    assert sorted(p.name for p in (tmp_path / "test").iterdir()) == [KEY]
