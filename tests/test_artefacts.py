"""Content-addressed artefacts: hit/miss, atomic writes, damaged artefacts rebuilt, no unpickling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from workbench.core.artefacts import Artefact, ArtefactStore, StaleArtefact, config_key, get_or_compute
from workbench.core.storage import atomic_write, atomic_write_json, checkpoint_part
from workbench.core.validation import WorkbenchError


def test_key_depends_on_content_not_order() -> None:
    assert config_key({"a": 1, "b": [1, 2]}) == config_key({"b": [1, 2], "a": 1})
    assert config_key({"a": 1}) != config_key({"a": 2})


def test_save_then_load_round_trip(tmp_path: Path) -> None:
    store = ArtefactStore(tmp_path / "cache", read_only_roots=[])
    config = {"model": "x", "epochs": 1}
    assert store.load("models", config_key(config), config) is None
    tensors = {"w": torch.arange(6.0).view(2, 3).t()}  # non-contiguous on purpose
    store.save("models", config_key(config), tensors, config, {"ca": 0.5})
    found = store.load("models", config_key(config), config)
    assert found is not None and found.metrics == {"ca": 0.5}
    assert torch.equal(found.tensors["w"], tensors["w"])
    assert sorted(p.name for p in found.path.iterdir()) == ["config.json", "manifest.json", "weights.safetensors"]
    assert not [p for p in found.path.parent.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_saving_an_artefact_deletes_its_checkpoint_and_parts_but_no_other_keys(tmp_path: Path) -> None:
    store = ArtefactStore(tmp_path / "cache", read_only_roots=[])
    config, other = {"model": "x"}, {"model": "y"}
    mine = store.checkpoint("abl", config_key(config))
    parts = [mine, checkpoint_part(mine, "isolate"), checkpoint_part(mine, "unlearn")]
    theirs = [store.checkpoint("abl", config_key(other)), checkpoint_part(store.checkpoint("abl", config_key(other)),
                                                                          "isolate")]
    for path in parts + theirs:
        atomic_write(path, lambda tmp: tmp.write_bytes(b"state"))
    assert parts[1].name == f"{config_key(config)}.isolate.pt"
    store.save("abl", config_key(config), {"w": torch.zeros(1)}, config, {})
    assert not any(p.exists() for p in parts) and all(p.exists() for p in theirs)
    with pytest.raises(WorkbenchError, match="part must be lower-case"):
        checkpoint_part(mine, "../escape")


def test_read_only_root_is_searched_but_never_written(tmp_path: Path) -> None:
    config = {"k": 1}
    ArtefactStore(tmp_path / "assets", read_only_roots=[]).save("models", config_key(config),
                                                                  {"w": torch.ones(2)}, config, {})
    store = ArtefactStore(tmp_path / "cache", read_only_roots=[tmp_path / "assets"])
    found = store.load("models", config_key(config), config)
    assert found is not None and found.path.is_relative_to(tmp_path / "assets")
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("damage", ["truncate", "flip", "config"])
def test_damaged_artefact_is_detected(tmp_path: Path, damage: str) -> None:
    store = ArtefactStore(tmp_path, read_only_roots=[])
    config = {"k": 2}
    saved = store.save("models", config_key(config), {"w": torch.randn(100)}, config, {})
    weights = saved.path / "weights.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:-50])
    elif damage == "flip":
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
    else:
        (saved.path / "config.json").write_text(json.dumps({"k": 3}))
    with pytest.warns(UserWarning, match="ignoring damaged artefact"):
        assert store.load("models", config_key(config), config) is None
    store.save("models", config_key(config), {"w": torch.zeros(100)}, config, {})  # rebuilt in place
    assert torch.equal(store.load("models", config_key(config), config).tensors["w"], torch.zeros(100))


def test_atomic_write_keeps_old_file_when_interrupted(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    atomic_write_json(target, {"v": 1})

    def crash(tmp: Path) -> None:
        tmp.write_text('{"v": 2, "trunc')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, crash)
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_get_or_compute_computes_once_then_loads(tmp_path: Path) -> None:
    store = ArtefactStore(tmp_path, read_only_roots=[])
    identity = {"k": 4}
    key = config_key(identity)
    computed: list[int] = []

    def compute() -> tuple[str, dict[str, torch.Tensor], dict[str, float]]:
        computed.append(1)
        return "computed", {"w": torch.full((3,), float(len(computed)))}, {"runs": len(computed)}

    def restore(found: Artefact) -> str:
        return f"restored {found.tensors['w'].tolist()}"

    result, artefact, loaded = get_or_compute(store, "models", key, identity, compute=compute, restore=restore)
    assert (result, loaded, artefact.metrics, len(computed)) == ("computed", False, {"runs": 1}, 1)
    result, artefact, loaded = get_or_compute(store, "models", key, identity, compute=compute, restore=restore)
    assert (result, loaded, artefact.metrics, len(computed)) == ("restored [1.0, 1.0, 1.0]", True, {"runs": 1}, 1)

    (artefact.path / "weights.safetensors").write_bytes(b"damaged")
    with pytest.warns(UserWarning, match="ignoring damaged artefact"):
        result, artefact, loaded = get_or_compute(store, "models", key, identity, compute=compute, restore=restore)
    assert (result, loaded, len(computed)) == ("computed", False, 2)
    assert torch.equal(store.load("models", key, identity).tensors["w"], torch.full((3,), 2.0))

    def stale(found: Artefact) -> str:
        raise StaleArtefact("its weights do not fit")

    with pytest.warns(UserWarning, match="ignoring artefact .*: its weights do not fit; rebuilding it"):
        result, _, loaded = get_or_compute(store, "models", key, identity, compute=compute, restore=stale)
    assert (result, loaded, len(computed)) == ("computed", False, 3)
    assert torch.equal(store.load("models", key, identity).tensors["w"], torch.full((3,), 3.0))  # replaced


def test_the_first_complete_artefact_of_a_key_stays(tmp_path: Path) -> None:
    store = ArtefactStore(tmp_path, read_only_roots=[])
    identity = {"k": 5}
    key = config_key(identity)
    store.save("models", key, {"w": torch.zeros(2)}, identity, {"first": True})
    again = store.save("models", key, {"w": torch.ones(2)}, identity, {"first": False})
    assert torch.equal(again.tensors["w"], torch.zeros(2)) and again.metrics == {"first": True}


def test_adopt_replaces_a_committed_artefact_atomically_and_refuses_a_damaged_one(tmp_path: Path) -> None:
    """`python -m workbench assets` commits a retrained model with `adopt` (it used to delete the committed copy
    before copying the new one)."""
    identity = {"k": 6}
    key = config_key(identity)
    committed = ArtefactStore(tmp_path / "assets", read_only_roots=[])
    committed.save("models", key, {"w": torch.zeros(2)}, identity, {"version": 1})
    retrained = ArtefactStore(tmp_path / "cache", read_only_roots=[]).save("models", key, {"w": torch.ones(2)},
                                                                           identity, {"version": 2})
    path = committed.adopt("models", key, retrained.path)
    assert committed.load("models", key, identity).metrics == {"version": 2}
    assert sorted(p.name for p in path.parent.iterdir()) == [key]  # the old copy is gone, nothing half-copied
    (retrained.path / "weights.safetensors").write_bytes(b"damaged")
    with pytest.raises(WorkbenchError, match="not a complete artefact"):
        committed.adopt("models", key, retrained.path)
    assert committed.load("models", key, identity).metrics == {"version": 2}
