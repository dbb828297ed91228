"""The Latent Backdoor Attack (T&R Table 7): optimised patch triggers, the injection term, and training with it."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from workbench.core.artefacts import config_key
from workbench.core.attacks import PoisonConfig, attack_from_dict, make_attack, poison_dataset
from workbench.core.attacks.latent import (
    LBA_LAYERS,
    LatentInjection,
    PatchTrigger,
    TriggerSearch,
    latent_distance,
    mean_latent,
    optimise_latent_trigger,
)
from workbench.core.data import ImageDataset
from workbench.core.training import TrainConfig, new_model, train_classifier
from workbench.core.validation import WorkbenchError


def test_patch_trigger_stamps_its_8_bit_pixels_and_serialises() -> None:
    pattern = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(0))
    trigger = PatchTrigger.from_pattern(pattern, row=-4, col=2)
    x = torch.rand(5, 3, 10, 10)
    out = trigger.apply(x)
    assert torch.allclose(out[:, :, 6:, 2:6], (pattern * 255).round().div(255).expand(5, -1, -1, -1))
    untouched = torch.ones(10, 10, dtype=torch.bool)
    untouched[6:, 2:6] = False
    assert torch.equal(out[:, :, untouched], x[:, :, untouched])
    assert attack_from_dict(trigger.to_dict()) == trigger
    assert "optimised pixels" in trigger.describe()
    for kwargs, fragment in (({"values": (1, 2)}, "needs 48"), ({"values": (300,) * 48}, "0..255")):
        with pytest.raises(WorkbenchError, match=fragment):
            PatchTrigger(**{"channels": 3, "size": 4, **kwargs})
    with pytest.raises(WorkbenchError, match="cannot stamp 1-channel"):
        trigger.apply(torch.rand(1, 1, 10, 10))


def test_latent_distance_pulls_poisoned_features_to_the_clean_target_mean() -> None:
    features = torch.tensor([[1.0, 1.0], [3.0, 1.0], [0.0, 0.0], [5.0, 5.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 0, 1])
    poisoned = torch.tensor([False, False, True, False])  # image 2 is relabelled to the target 0
    term, memo = latent_distance(features, labels, poisoned, 0, None)
    assert torch.equal(memo, torch.tensor([2.0, 1.0]))  # the clean target images 0 and 1
    assert torch.isclose(term, torch.tensor((4.0 + 1.0) / 2))
    term.backward()  # both sides are functions of the weights: the poisoned image and the clean target images move
    assert features.grad[[0, 1, 2]].abs().min() > 0 and features.grad[3].abs().sum() == 0
    assert not memo.requires_grad  # what is carried to the next batch is a constant
    # no clean target image in this batch: the last mean is used; no poisoned image: nothing to pull
    again, kept = latent_distance(features.detach()[[2, 3]], labels[[2, 3]], poisoned[[2, 3]], 0, memo)
    assert torch.isclose(again, torch.tensor(2.5)) and torch.equal(kept, memo)
    zero, _ = latent_distance(features.detach()[:2], labels[:2], poisoned[:2], 0, None)
    assert zero == 0


class _Probe(nn.Module):
    """A model whose latent layer ("head"'s input) is the image itself."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


def test_trigger_search_finds_the_target_pixels_when_the_latent_is_the_image() -> None:
    # the latent is the image, so the best patch is the target images' mean under it: a known answer
    gen = torch.Generator().manual_seed(0)
    sources = torch.rand(64, 3, 8, 8, generator=gen)
    targets = torch.rand(64, 3, 8, 8, generator=gen) * 0.2
    targets[:, :, -3:, -3:] = torch.tensor([0.9, 0.1, 0.5]).view(1, 3, 1, 1)
    model = _Probe()
    before = [p.clone() for p in model.parameters()]
    search = TriggerSearch(size=3, row=-3, col=-3, steps=300, lr=0.1, batch_size=32)
    trigger, losses = optimise_latent_trigger(model, sources, targets, "head", search=search, generator=gen,
                                              progress=False)
    patch = trigger.patch()
    assert torch.allclose(patch, torch.tensor([0.9, 0.1, 0.5]).view(3, 1, 1).expand(3, 3, 3), atol=0.03)
    assert losses[-1] < losses[0]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(p.requires_grad for p in model.parameters())  # the model's flags are given back
    assert torch.allclose(mean_latent(model, targets, "head"), targets.flatten(1).mean(0).view(3, 8, 8))
    with pytest.raises(WorkbenchError, match="no module named 'layer9'"):
        optimise_latent_trigger(model, sources, targets, "layer9", search=search, progress=False)
    with pytest.raises(WorkbenchError, match="target_images must have 3 channel"):
        optimise_latent_trigger(model, sources, targets[:, :1], "head", search=search, progress=False)


def test_poison_config_carries_the_injection_without_changing_other_keys() -> None:
    trigger = PatchTrigger(values=(128,) * 12, channels=3, size=2, row=-2, col=-2)
    plain = PoisonConfig(trigger, target=0, ratio=0.1)
    latent = PoisonConfig(trigger, target=0, ratio=0.1, latent=LatentInjection("block3_1"))
    assert "latent" not in plain.to_dict() and "latent" not in PoisonConfig(make_attack("tr_sig"), ratio=0.1).to_dict()
    assert PoisonConfig.from_dict(latent.to_dict()) == latent
    assert config_key(latent.to_dict()) != config_key(plain.to_dict())
    with pytest.raises(WorkbenchError, match="clean_label=False"):
        PoisonConfig(trigger, ratio=0.1, clean_label=True, latent=LatentInjection("fc"))
    with pytest.raises(WorkbenchError, match="weight must be a finite number > 0"):
        LatentInjection("fc", weight=0)
    with pytest.raises(WorkbenchError, match="module name"):
        LatentInjection("")
    assert set(LBA_LAYERS) == {"LBA-14", "LBA-12", "LBA-10"}
    assert set(LBA_LAYERS.values()) <= set(new_model(TrainConfig(dataset="cifar10", model="wrn16_1")).split_points)


def _latent_gap(model: nn.Module, clean: torch.Tensor, triggered: torch.Tensor, layer: str) -> float:
    return float((mean_latent(model, triggered, layer) - mean_latent(model, clean, layer)).pow(2).mean())


def test_injection_moves_triggered_images_to_the_target_at_the_latent_layer() -> None:
    # four brightness classes; 10 % of the images get a trigger and the target label, with and without the term
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(320) % 4
    images = (torch.rand(320, 3, 32, 32, generator=gen) * 40 + 20 + 50 * labels.view(-1, 1, 1, 1)).to(torch.uint8)
    clean = ImageDataset("cifar10", images, labels, ("a", "b", "c", "d"))
    trigger = PatchTrigger(values=tuple(range(0, 250, 10))[:12], channels=3, size=2, row=-2, col=-2)
    layer, target = "fc", 0
    gaps, accuracy = {}, {}
    for weight in (None, 1.0):
        poison = PoisonConfig(trigger, target=target, ratio=0.1, seed=1,
                              latent=None if weight is None else LatentInjection(layer, weight))
        config = TrainConfig(dataset="cifar10", model="lenet5", epochs=4, batch_size=32, optimizer="adam", lr=1e-3,
                             augment="none", schedule="constant", label_smoothing=0.0, poison=poison)
        poisoned = poison_dataset(clean, poison)
        mask = torch.zeros(len(clean), dtype=torch.bool)
        mask[poisoned.poisoned_indices] = True
        model = new_model(config)
        if weight is not None:
            with pytest.raises(WorkbenchError, match="poisoned-image mask"):
                train_classifier(model, poisoned.dataset, config, progress=False)
        history = train_classifier(model, poisoned.dataset, config, progress=False, poisoned=mask,
                                   monitor=(clean.float_images(), labels))
        assert all(math.isfinite(epoch["loss"]) for epoch in history)
        accuracy[weight] = history[-1]["ca"]
        sources = clean.float_images()[labels != target]
        gaps[weight] = _latent_gap(model.eval(), clean.float_images()[labels == target], trigger.apply(sources),
                                   layer)
    assert gaps[1.0] < 0.05 * gaps[None]  # measured: 26.3 without the term, 0.09 with it
    assert accuracy[1.0] >= accuracy[None] - 0.1  # the model still learns its task (no collapse of the features)
