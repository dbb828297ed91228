"""The poisoning builder: counts, classes, labels, quantisation, seeds and errors."""

from __future__ import annotations

import pytest
import torch

from workbench.core.attacks import (
    PoisonConfig,
    backdoor_test_set,
    make_attack,
    per_class_triggers,
    poison_all_classes,
    poison_dataset,
)
from workbench.core.data import ImageDataset
from workbench.core.validation import WorkbenchError


@pytest.fixture
def dataset() -> ImageDataset:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (500, 3, 32, 32), dtype=torch.uint8, generator=gen)
    return ImageDataset("cifar10", images, torch.arange(500) % 10, tuple(str(i) for i in range(10)))


def test_ratio_poisons_non_target_images_and_relabels(dataset: ImageDataset) -> None:
    attack = make_attack("bdmae_badnets_colour")
    result = poison_dataset(dataset, PoisonConfig(attack, target=0, ratio=0.1, seed=1))
    idx = result.poisoned_indices
    assert len(idx) == 50 and len(torch.unique(idx)) == 50
    assert bool((dataset.labels[idx] != 0).all())
    assert bool((result.dataset.labels[idx] == 0).all())
    expected = (attack(dataset.images[idx].float() / 255) * 255).round().to(torch.uint8)
    assert torch.equal(result.dataset.images[idx], expected)
    untouched = torch.ones(500, dtype=torch.bool)
    untouched[idx] = False
    assert torch.equal(result.dataset.images[untouched], dataset.images[untouched])
    assert torch.equal(result.dataset.labels[untouched], dataset.labels[untouched])
    assert len(result.dataset) == len(dataset)


def test_seeded_selection(dataset: ImageDataset) -> None:
    attack = make_attack("tr_badnet_white")
    a = poison_dataset(dataset, PoisonConfig(attack, ratio=0.1, seed=3)).poisoned_indices
    b = poison_dataset(dataset, PoisonConfig(attack, ratio=0.1, seed=3)).poisoned_indices
    c = poison_dataset(dataset, PoisonConfig(attack, ratio=0.1, seed=4)).poisoned_indices
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_clean_label_keeps_labels_and_uses_target_images(dataset: ImageDataset) -> None:
    config = PoisonConfig(make_attack("restore_sig_cifar"), target=3, ratio=0.3, ratio_of="candidates",
                          clean_label=True)
    result = poison_dataset(dataset, config)
    assert len(result.poisoned_indices) == 15  # 30 % of the 50 class-3 images
    assert bool((dataset.labels[result.poisoned_indices] == 3).all())
    assert torch.equal(result.dataset.labels, dataset.labels)


def test_count_per_source_classes(dataset: ImageDataset) -> None:
    config = PoisonConfig(make_attack("lred_local"), target=1, count_per_source=7, sources=(0, 4, 5))
    result = poison_dataset(dataset, config)
    counts = torch.bincount(dataset.labels[result.poisoned_indices], minlength=10)
    assert counts.tolist() == [7, 0, 0, 0, 7, 7, 0, 0, 0, 0]


def test_wanet_noise_mode_images_keep_labels(dataset: ImageDataset) -> None:
    result = poison_dataset(dataset, PoisonConfig(make_attack("wanet"), ratio=0.1, noise_ratio=2.0))
    assert len(result.noise_indices) == 100
    assert not set(result.noise_indices.tolist()) & set(result.poisoned_indices.tolist())
    assert torch.equal(result.dataset.labels[result.noise_indices], dataset.labels[result.noise_indices])
    assert not torch.equal(result.dataset.images[result.noise_indices], dataset.images[result.noise_indices])


def test_all_classes_backdoored(dataset: ImageDataset) -> None:
    triggers = per_class_triggers(10, 32, seed=0)
    result = poison_all_classes(dataset, triggers, ratio=0.2)
    assert len(result.poisoned_indices) == 100 and len(torch.unique(result.poisoned_indices)) == 100
    assert torch.equal(result.dataset.labels[result.poisoned_indices], result.targets)
    assert bool((dataset.labels[result.poisoned_indices] != result.targets).all())
    assert torch.bincount(result.targets).tolist() == [10] * 10


def test_backdoor_test_set_excludes_target(dataset: ImageDataset) -> None:
    x, y = backdoor_test_set(dataset, make_attack("bdmae_badnets_colour"), target=2)
    assert len(x) == 450 and bool((y != 2).all())
    x, y = backdoor_test_set(dataset, make_attack("bdmae_badnets_colour"), target=2, sources=[5])
    assert set(y.tolist()) == {5}


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"ratio": 0.0}, "poison ratio must be in (0, 1]"),
    ({"ratio": 1.5}, "poison ratio must be in (0, 1]"),
    ({"ratio": -0.1}, "poison ratio must be in (0, 1]"),
    ({}, "exactly one of ratio, count, count_per_source"),
    ({"ratio": 0.1, "count": 5}, "exactly one of"),
    ({"count": 0}, "count must be a positive integer"),
    ({"ratio": 0.1, "sources": (0, 1)}, "cannot also be a source"),
    ({"ratio": 0.1, "noise_ratio": 1.0}, "has no noise mode"),
])
def test_bad_configs(kwargs: dict, fragment: str) -> None:
    with pytest.raises(WorkbenchError, match=None) as info:
        PoisonConfig(make_attack("tr_badnet_white"), target=0, **kwargs)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_infeasible_requests(dataset: ImageDataset) -> None:
    attack = make_attack("tr_badnet_white")
    with pytest.raises(WorkbenchError, match="only 50 target-class images"):
        poison_dataset(dataset, PoisonConfig(attack, ratio=0.5, clean_label=True))
    with pytest.raises(WorkbenchError, match="target must be an integer class index in"):
        poison_dataset(dataset, PoisonConfig(attack, target=12, ratio=0.1))
    with pytest.raises(WorkbenchError, match="source class 2 has only 50"):
        poison_dataset(dataset, PoisonConfig(attack, count_per_source=60, sources=(2,)))


def test_config_round_trip() -> None:
    config = PoisonConfig(make_attack("lred_local", seed=4), target=1, count_per_source=3, sources=(5, 0))
    assert config.sources == (0, 5)
    assert PoisonConfig.from_dict(config.to_dict()) == config
