"""Fixtures: a tiny offline mirror written on the fly, and isolated cache folders."""

from __future__ import annotations

import gzip
import io
import os
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_webdataset(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """A WebDataset tar.gz in the offline-mirror format (PNG-free: JPEG like the mirror, quality 100)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for i, (img, label) in enumerate(zip(images, labels, strict=True)):
            for ext, data in (("jpg", _jpeg(img)), ("cls", str(int(label)).encode())):
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _jpeg(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=100)
    return buf.getvalue()


def write_idx(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = b"\x00\x00\x08" + bytes([array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the workbench's cache at an empty folder and forbid downloads."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("WORKBENCH_CACHE", str(cache))
    monkeypatch.setenv("WORKBENCH_NO_DOWNLOAD", "1")
    return cache


@pytest.fixture
def tiny_mirror(tmp_path: Path, isolated_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An offline mirror with a small CIFAR-10 (200 train / 100 test) and an MNIST test split (300 images)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "mirror"
    for split, n in (("train", 200), ("test", 100)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        write_webdataset(root / "cifar10" / f"{split}.tar.gz", images, labels)
    write_idx(root / "mnist" / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (300, 28, 28)))
    write_idx(root / "mnist" / "t10k-labels-idx1-ubyte.gz", np.arange(300) % 10)
    monkeypatch.setenv("WORKBENCH_DATA", str(root))
    return root


def real_data_available() -> bool:
    root = os.environ.get("WORKBENCH_DATA")
    return bool(root) and (Path(root) / "cifar10" / "train.tar.gz").is_file()


needs_real_data = pytest.mark.skipif(not real_data_available(),
                                     reason="set WORKBENCH_DATA to the offline mirror (../shared/data)")
