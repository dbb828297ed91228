"""Devices, seeds and the folders the workbench reads and writes.

The library never seeds global random state: stochastic functions take a `torch.Generator` (see
`make_generator`) so that the same seed gives the same result no matter what ran before.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from workbench.core.validation import WorkbenchError, check_name, check_non_negative, check_seed

#: The repository root when the package runs from a checkout (editable install), else None.
_CHECKOUT = Path(__file__).resolve().parents[2]
PROJECT_ROOT: Path | None = _CHECKOUT if (_CHECKOUT / "pyproject.toml").is_file() else None


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Return a torch device; "auto" picks CUDA, then Apple MPS, then the CPU."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise WorkbenchError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise WorkbenchError(f"device {device!r}: this machine has no CUDA device (or torch was built without CUDA); "
                             "use device='auto' or 'cpu'")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise WorkbenchError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                             "use 'cuda:0' up to the last one")
    return resolved


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A fresh generator seeded with `seed` on `device`."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise WorkbenchError(f"seed must be an integer, got {seed!r}")
    return torch.Generator(device=device).manual_seed(seed)


#: The named streams a parent seed is split into: stream -> (offset, stride per index). The values are the ones every
#: cached and committed artefact was made with, so they are fixed; a new use of randomness gets a new name here.
SEED_STREAMS: dict[str, tuple[int, int]] = {
    "data_order": (1, 0),  # training batches and augmentation, independent of the initialisation draws
    "head_initialisation": (2, 0),  # T&R stage 2's new head
    "global_rng": (3, 0),  # global-RNG draws during training (dropout)
    "iab_data_order": (2, 0),  # IAB's joint training of classifier and generators
    "iab_generators": (3, 0),  # IAB's generator initialisation
    "nad_student": (1, 0),  # NAD's student after its teacher (which uses the parent seed)
    "finetune_phase": (0, 10),  # phase k of a multi-phase fine-tuning
    "abl_phase": (0, 1_000_003),  # ABL's isolate / fine-tune / unlearn phases
    "patch_colour": (0, 1),  # the k-th random-colour patch of a dynamic BadNets trigger set
    "detection_images": (0, 1),  # the clean images L-RED draws for its k-th classifier
}


def child_seed(parent: int, stream: str, index: int = 0) -> int:
    """The seed of stream `stream` (a name of `SEED_STREAMS`), its `index`-th member where the stream has several,
    derived from `parent`: the one way the workbench splits a seed, so no two uses of one seed collide by accident."""
    check_seed(parent, "parent")
    check_non_negative(index, "index", integer=True)
    offset, stride = SEED_STREAMS[check_name("seed stream", stream, SEED_STREAMS)]
    if stride == 0 and index:
        raise WorkbenchError(f"seed stream {stream!r} has one member; got index {index}")
    return parent + offset + index * stride


def image_generators(seed: int, first_index: int, count: int) -> list[torch.Generator]:
    """One CPU generator per image of a batch, image i of a test set seeded from (seed, i): a method that draws
    its randomness from these gives each image the same draws however the set is split into calls."""
    check_seed(seed)
    check_non_negative(first_index, "first_index", integer=True)
    check_non_negative(count, "count", integer=True)
    return [torch.Generator().manual_seed(seed * 1_000_003 + first_index + n) for n in range(count)]


def cache_root() -> Path:
    """Where decoded datasets, downloads and trained artefacts are cached.

    `WORKBENCH_CACHE` if set, else `data/cache/` of the checkout (git-ignored), else ~/.cache/workbench.
    """
    if os.environ.get("WORKBENCH_CACHE"):
        return Path(os.environ["WORKBENCH_CACHE"]).expanduser()
    if PROJECT_ROOT is not None:
        return PROJECT_ROOT / "data" / "cache"
    return Path.home() / ".cache" / "workbench"


def assets_root() -> Path | None:
    """The committed, read-only artefacts of this project (`data/assets/`), if running from a checkout."""
    if PROJECT_ROOT is None:
        return None
    return PROJECT_ROOT / "data" / "assets"


def figures_root() -> Path:
    """Where notebooks write figures: `WORKBENCH_FIGURES` if set, else `figures/` of the checkout."""
    if os.environ.get("WORKBENCH_FIGURES"):
        return Path(os.environ["WORKBENCH_FIGURES"]).expanduser()
    return (PROJECT_ROOT or Path.cwd()) / "figures"
