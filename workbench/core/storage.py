"""Atomic file writes and content hashes.

Everything the workbench writes goes through a temporary file in the destination folder, flushed to disk, followed
by `os.replace`, so an interrupted run (or a crash of the machine) leaves either the old file or the new one, never
half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from workbench.core.validation import WorkbenchError


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` and move the result to `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp creates 0600; give the file normal permissions
    try:
        write(Path(tmp))
        fsync_path(Path(tmp))  # the data reaches the disk before the rename publishes it
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def fsync_path(path: Path) -> None:
    """Flush a file's data, or a folder's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def current_umask() -> int:
    """The process umask (read without changing it for more than an instant)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def _integral_floats_as_int(obj: Any) -> Any:
    if isinstance(obj, float) and obj.is_integer():
        return int(obj)
    if isinstance(obj, dict):
        return {k: _integral_floats_as_int(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_integral_floats_as_int(v) for v in obj]
    return obj


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys, no whitespace and 1.0 written as 1: equal configs give equal strings (and hashes)
    however their numbers were typed."""
    return json.dumps(_integral_floats_as_int(obj), sort_keys=True, separators=(",", ":"), allow_nan=False)


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write `obj` as indented JSON to `path` atomically."""
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    if not Path(path).is_file():
        raise WorkbenchError(f"path {path} is not a file: nothing to hash")
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    """Hex SHA-256 of a string."""
    return hashlib.sha256(text.encode()).hexdigest()


def save_checkpoint(path: str | Path, recipe: dict[str, Any], state: dict[str, Any], generator: torch.Generator,
                    device: torch.device) -> None:
    """Write a training loop's resumable `state` (tensors, numbers, lists and dicts of them) to `path` atomically,
    with the recipe it belongs to and every random stream it draws from: `generator` (its data order and
    augmentation) and torch's global generators (dropout)."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    full = {**state, "recipe": canonical_json(recipe), "data_order": generator.get_state(),
            "rng": torch.get_rng_state(), "cuda_rng": cuda}
    atomic_write(path, lambda tmp: torch.save(full, tmp))


def checkpoint_part(path: str | Path, part: str) -> Path:
    """The checkpoint file of one part of a computation whose checkpoint is `path` (a phase of ABL, which trains
    with another recipe in each): `<stem>.<part><suffix>` beside it, which `delete_checkpoint` deletes with `path`
    (`ArtefactStore.save` does once the computation's artefact is stored)."""
    if not isinstance(part, str) or not re.fullmatch(r"[a-z0-9_-]+", part):
        raise WorkbenchError(f"part must be lower-case letters, digits, '_' or '-', got {part!r}")
    path = Path(path)
    return path.with_name(f"{path.stem}.{part}{path.suffix}")


def delete_checkpoint(path: str | Path) -> None:
    """Delete the checkpoint `path` and every part of it (`checkpoint_part`), where they exist."""
    path = Path(path)
    for stale in (path, *path.parent.glob(f"{path.stem}.*{path.suffix}")):
        stale.unlink(missing_ok=True)


def load_checkpoint(path: str | Path, recipe: dict[str, Any], generator: torch.Generator,
                    device: torch.device) -> dict[str, Any]:
    """The state `save_checkpoint` wrote, its random streams restored into `generator` and torch's generators
    (`weights_only=True`: tensors and plain values only, nothing unpickled)."""
    if not Path(path).is_file():
        raise WorkbenchError(f"path {path} is not a checkpoint file: nothing to resume from")
    state = torch.load(path, map_location=device, weights_only=True)
    if state.get("recipe") != canonical_json(recipe):
        raise WorkbenchError(f"the checkpoint {path} belongs to another training recipe; delete it to train afresh")
    generator.set_state(state["data_order"].cpu())
    torch.set_rng_state(state["rng"].cpu())
    if state["cuda_rng"] is not None:
        torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)
    return state
