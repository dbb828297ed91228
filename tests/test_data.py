"""Dataset loading from the mirror format, caching, splits and the missing-data error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.conftest import needs_real_data
from workbench.core import data as data_module
from workbench.core.data import DATASETS, load_split, load_splits, stratified_subset
from workbench.core.validation import WorkbenchError


def test_mirror_webdataset_is_decoded_and_cached(tiny_mirror: Path, isolated_cache: Path) -> None:
    train = load_split("cifar10", "train")
    assert train.images.shape == (200, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.labels.tolist()[:12] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert train.source.endswith("cifar10/train.tar.gz")
    assert len(list((isolated_cache / "datasets").glob("cifar10-train-*.npz"))) == 1
    again = load_split("cifar10", "train")
    assert "decoded cache" in again.source and torch.equal(again.images, train.images)


def test_unreadable_cache_is_decoded_again(tiny_mirror: Path, isolated_cache: Path) -> None:
    load_split("cifar10", "test")
    (cached,) = (isolated_cache / "datasets").glob("cifar10-test-*.npz")
    cached.write_bytes(cached.read_bytes()[:100])  # truncated
    assert len(load_split("cifar10", "test")) == 100


def test_splits_are_disjoint_repeatable_and_stratified(tiny_mirror: Path) -> None:
    a = load_splits("cifar10", seed=1, holdout_fraction=0.1, train_size=100, test_size=50)
    b = load_splits("cifar10", seed=1, holdout_fraction=0.1, train_size=100, test_size=50)
    c = load_splits("cifar10", seed=2, holdout_fraction=0.1, train_size=100, test_size=50)
    assert not set(a.train_indices.tolist()) & set(a.holdout_indices.tolist())
    assert len(a.train) == 100 and len(a.holdout) == 20 and len(a.test) == 50
    assert torch.equal(a.train_indices, b.train_indices) and torch.equal(a.test_indices, b.test_indices)
    assert not torch.equal(a.train_indices, c.train_indices)
    assert torch.bincount(a.holdout.labels).tolist() == [2] * 10
    assert torch.bincount(a.test.labels).tolist() == [5] * 10


def test_splits_are_cut_once_per_source(tiny_mirror: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[str] = []

    def counting_load_split(name: str, split: str = "train", **kwargs: object) -> data_module.ImageDataset:
        reads.append(split)
        return load_split(name, split, **kwargs)

    monkeypatch.setattr(data_module, "load_split", counting_load_split)
    first = load_splits("cifar10", seed=3, train_size=80)
    second = load_splits("cifar10", seed=3, train_size=80)
    assert reads == ["test", "train"]  # the second call did not load again
    assert torch.equal(first.train.images, second.train.images) and torch.equal(first.test_indices, second.test_indices)
    test_file = tiny_mirror / "cifar10" / "test.tar.gz"
    mtime = test_file.stat().st_mtime_ns
    os.utime(test_file, ns=(mtime, mtime + 1_000_000_000))  # a changed source is read and cut again
    load_splits("cifar10", seed=3, train_size=80)
    assert reads == ["test", "train"] * 2


def test_mnist_without_train_split_is_cut_from_test(tiny_mirror: Path) -> None:
    splits = load_splits("mnist", seed=0, holdout_fraction=0.1)
    assert "official train split is unavailable" in splits.note
    parts = [set(splits.train_indices.tolist()), set(splits.holdout_indices.tolist()),
             set(splits.test_indices.tolist())]
    assert sum(len(p) for p in parts) == 300 and len(set().union(*parts)) == 300
    assert len(splits.test) == 60 and splits.train.images.shape[1:] == (1, 28, 28)


def test_missing_dataset_names_every_place_and_the_fix(tiny_mirror: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data_module, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian-package")
    with pytest.raises(WorkbenchError) as info:
        load_split("fashion-mnist", "train")
    message = str(info.value)
    assert "\n" not in message
    for fragment in (f"WORKBENCH_DATA: {tiny_mirror / 'fashion-mnist'}", str(tmp_path / "no-debian-package"),
                     "torchvision download: not tried", "apt-get install -y dataset-fashion-mnist"):
        assert fragment in message


def test_unknown_names() -> None:
    with pytest.raises(WorkbenchError, match="unknown dataset 'cifar100'; choose one of: cifar10, fashion-mnist"):
        load_split("cifar100")
    with pytest.raises(WorkbenchError, match="unknown split 'val'"):
        load_split("cifar10", "val")


def test_stratified_subset_keeps_proportions() -> None:
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    idx = stratified_subset(labels, 20, torch.Generator().manual_seed(0))
    assert torch.bincount(labels[idx]).tolist() == [12, 6, 2]
    assert len(torch.unique(idx)) == 20


@needs_real_data
@pytest.mark.parametrize("name", list(DATASETS))
def test_real_datasets_load(name: str) -> None:
    spec = DATASETS[name]
    test = load_split(name, "test")
    assert test.images.shape[1:] == (spec.channels, spec.image_size, spec.image_size)
    assert int(test.labels.max()) == spec.num_classes - 1 and len(test.class_names) == spec.num_classes


def test_cache_follows_the_source(tiny_mirror: Path, tmp_path: Path) -> None:
    assert len(load_split("cifar10", "test")) == 100
    with pytest.raises(WorkbenchError, match="not found"):  # another root: the cached arrays do not answer for it
        load_split("cifar10", "test", root=tmp_path / "elsewhere")


def test_fingerprint_changes_with_one_pixel(tiny_mirror: Path) -> None:
    test = load_split("cifar10", "test")
    images = test.images.clone()
    images[0, 0, 0, 0] ^= 1
    assert test.fingerprint() == load_split("cifar10", "test").fingerprint()
    assert test.replace(images=images).fingerprint() != test.fingerprint()
