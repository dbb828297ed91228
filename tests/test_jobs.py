"""The reproduction's classifier trainings as jobs (issue 26, first slice): keys, dependencies, plan and run."""

from __future__ import annotations

import pytest

from tests.conftest import needs_real_data
from workbench.core.artefacts import ArtefactStore
from workbench.core.training import TrainConfig, artefact_address
from workbench.repro.bdmae import challenging_settings
from workbench.repro.cli import main
from workbench.repro.jobs import PAPER_JOBS, collect, plan, run

pytestmark = needs_real_data


def test_job_keys_are_the_cache_keys_and_shared_models_are_one_job() -> None:
    jobs = collect(["quickstart", "restore", "lred", "quickstart"], "smoke")
    assert len({job.id for job in jobs}) == len(jobs) == 7  # 1 quickstart + 4 REStore Table I + 2 L-RED groups
    for job in jobs:
        kind, key, identity = artefact_address(job.config)
        assert (job.kind, job.key, job.identity) == (kind, key, identity)
    assert {paper for job in jobs for paper in job.papers} == {"quickstart", "restore", "lred"}


def test_a_label_consistent_model_comes_after_its_clean_surrogate(monkeypatch: pytest.MonkeyPatch) -> None:
    lc = challenging_settings("cifar10", "smoke")["LC"].train  # BDMAE's LC: PGD against the clean model
    monkeypatch.setitem(PAPER_JOBS, "lc", lambda scale: [("LC", lc)])
    surrogate, poisoned = collect(["lc"], "smoke")
    assert poisoned.config == lc and poisoned.deps == (surrogate.id,)
    assert surrogate.config == TrainConfig.from_dict(lc.poison.adversarial.surrogate) and not surrogate.deps
    assert surrogate.label == "LC (clean surrogate)"


def test_a_plan_after_an_inline_run_is_empty_and_nothing_is_redone(tmp_path) -> None:
    store = ArtefactStore(tmp_path, read_only_roots=[])
    jobs = collect(["quickstart"], "smoke")
    assert plan(jobs, store) == jobs
    assert run(jobs, store=store, device="cpu", progress=False) == [job.id for job in jobs]
    assert plan(jobs, store) == []
    assert run(jobs, store=store, device="cpu", progress=False) == []
    with pytest.raises(Exception, match="executor"):
        run(jobs, executor="ray", store=store)


def test_jobs_plan_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["jobs", "plan", "quickstart", "--scale", "smoke"]) == 0
    assert "jobs at smoke scale are not cached" in capsys.readouterr().out
    assert main(["jobs", "plan", "bdmae", "--scale", "smoke"]) == 2  # not a paper with jobs yet
    assert "bdmae" in capsys.readouterr().err
