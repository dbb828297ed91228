"""The job graph on real engines (issue 26): a local Ray cluster of two workers and submitit's local executor leave
the artefacts (keys and bytes) the inline executor leaves, and a worker killed mid-training costs only its job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import needs_real_data
from workbench.core.artefacts import ArtefactStore
from workbench.core.validation import WorkbenchError
from workbench.repro.jobs import Job, collect, event_log, plan, run

pytest.importorskip("ray")
pytest.importorskip("submitit")
pytestmark = needs_real_data

#: REStore's MNIST models (LeNet-5: seconds each) and an importance-splitting run on one of them (a dependency)
LABELS = ("mnist benign", "mnist badnets", "mnist badnets PI labels splitting, classes [3]")


def _jobs(papers: tuple[str, ...] = ("restore",), labels: tuple[str, ...] = LABELS) -> list[Job]:
    return [job for job in collect(papers, "smoke") if job.label in labels]


def _weights(store: ArtefactStore, jobs: list[Job]) -> dict[str, str]:
    """job id -> the SHA-256 of its stored tensors (the manifest's, verified on load)."""
    found = {}
    for job in jobs:
        artefact = store.load_by_key(job.kind, job.key)
        assert artefact is not None, job.id
        found[job.id] = json.loads((artefact.path / "manifest.json").read_text())["weights_sha256"]
    return found


def _events(store: ArtefactStore) -> list[tuple[str, str]]:
    return [(e["event"], e["job"]) for e in map(json.loads, event_log(store.root).read_text().splitlines())]


def test_ray_and_submitit_leave_the_keys_and_bytes_of_the_inline_executor(tmp_path) -> None:
    jobs = _jobs()
    assert len(jobs) == 3 and jobs[2].deps == (jobs[1].id,) and jobs[2].kind == "restore"
    stores = {name: ArtefactStore(tmp_path / name, read_only_roots=[]) for name in ("inline", "ray", "slurm")}
    options = {"inline": {}, "ray": {"workers": 2}, "slurm": {"cluster": "local", "timeout_min": 30}}
    for name, store in stores.items():
        assert run(jobs, executor=name, store=store, device="cpu", threads=1, progress=False,
                   **options[name]) == [job.id for job in jobs], name
        assert plan(jobs, store) == []
    inline = _weights(stores["inline"], jobs)
    assert _weights(stores["ray"], jobs) == inline
    assert _weights(stores["slurm"], jobs) == inline
    # every job ran once on each engine, the splitting run after the training of its model
    for store in stores.values():
        events = _events(store)
        assert sorted(job for event, job in events if event == "done") == sorted(job.id for job in jobs)
        assert events.index(("done", jobs[1].id)) < events.index(("start", jobs[2].id))


def _kill_mid_training(store: ArtefactStore, job: Job) -> threading.Thread:
    """Kill (SIGKILL) the worker process that runs training `job` as soon as its first epoch's checkpoint is written:
    the training is then in its second epoch, with state on disk to resume from."""
    def watch() -> None:
        deadline, checkpoint = time.time() + 120, store.checkpoint(job.kind, job.key)
        while time.time() < deadline:
            starts = [json.loads(line) for line in event_log(store.root).read_text().splitlines()] if event_log(
                store.root).exists() else []
            started = [event["pid"] for event in starts if event["event"] == "start" and event["job"] == job.id]
            if started and checkpoint.exists():
                os.kill(started[0], signal.SIGKILL)
                return
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_a_worker_killed_mid_training_costs_only_its_job(tmp_path) -> None:
    store = ArtefactStore(tmp_path / "cache", read_only_roots=[])
    jobs = _jobs()
    victim = jobs[0]  # REStore's MNIST benign LeNet-5: two epochs; killed once the first one is saved
    watcher = _kill_mid_training(store, victim)
    with pytest.raises(WorkbenchError, match=f"1 of 3 jobs failed.*{victim.id}"):
        run(jobs, executor="ray", store=store, device="cpu", threads=1, progress=False, workers=2, retries=0)
    watcher.join(timeout=5)
    assert [job.id for job in plan(jobs, store)] == [victim.id]  # the others finished and were published
    assert store.load_by_key(victim.kind, victim.key) is None  # nothing half-written under the killed job's key
    assert store.checkpoint(victim.kind, victim.key).is_file()  # the first epoch, to resume from
    assert run(jobs, executor="ray", store=store, device="cpu", threads=1, progress=False, workers=2) == [victim.id]
    starts = [job for event, job in _events(store) if event == "start"]
    assert starts.count(victim.id) == 2 and all(starts.count(job.id) == 1 for job in jobs[1:])
    assert not store.checkpoint(victim.kind, victim.key).exists()  # the published artefact superseded it
    # every artefact loads and matches its manifest's hashes, and the resumed training those of an uninterrupted one
    uninterrupted = ArtefactStore(tmp_path / "uninterrupted", read_only_roots=[])
    run(jobs[:1], store=uninterrupted, device="cpu", threads=1, progress=False)
    assert _weights(store, jobs)[victim.id] == _weights(uninterrupted, jobs[:1])[victim.id]
    leftovers = [p for p in (tmp_path / "cache").rglob("*") if p.is_dir() and ".partial-" in p.name]
    assert leftovers == []


def test_ray_joins_a_running_cluster_and_forwards_the_workbench_settings(tmp_path) -> None:
    """`address="auto"` joins a cluster started beforehand (`ray start --head`) whose processes lack the
    workbench's environment: the job finds the datasets because the run forwards WORKBENCH_* to its workers."""
    ray_cli = Path(sys.executable).parent / "ray"
    environment = {name: value for name, value in os.environ.items() if not name.startswith("WORKBENCH_")}
    subprocess.run([str(ray_cli), "start", "--head", "--num-cpus", "1", "--include-dashboard=false",
                    "--disable-usage-stats"], env=environment, check=True, capture_output=True, timeout=120)
    try:
        store = ArtefactStore(tmp_path / "cache", read_only_roots=[])
        jobs = _jobs(labels=LABELS[1:2])  # REStore's MNIST BadNets model
        assert run(jobs, executor="ray", store=store, device="cpu", threads=1, progress=False,
                   address="auto") == [jobs[0].id]
        assert _events(store)[-1] == ("done", jobs[0].id) and plan(jobs, store) == []
    finally:
        subprocess.run([str(ray_cli), "stop", "--force"], env=environment, capture_output=True, timeout=120)
