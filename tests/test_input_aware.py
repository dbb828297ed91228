"""IAB: sample-specific triggers from trained generators, stored and reloaded with the classifier."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from workbench.core.artefacts import ArtefactStore
from workbench.core.attacks import InputAware, InputAwareConfig, attack_from_dict, input_aware
from workbench.core.attacks.input_aware import TriggerGenerator, diversity_loss, make_mask, sparsity_loss
from workbench.core.storage import save_checkpoint
from workbench.core.training import TrainConfig, get_or_train_input_aware


def test_generators_and_losses() -> None:
    torch.manual_seed(0)
    x = torch.rand(4, 3, 32, 32)
    gen = TriggerGenerator(3, 1, width=4)
    with torch.no_grad():
        m = make_mask(gen, x)
    assert m.shape == (4, 1, 32, 32) and float(m.min()) >= 0 and float(m.max()) <= 1
    # known answers: generators that scale the image difference by 2 give 1/2; the ratio of RMS distances does not
    # depend on the channel count (a 1-channel mask with the same per-pixel difference gives the same value)
    assert abs(float(diversity_loss(x, x.flip(0), 2 * x, 2 * x.flip(0))) - 0.5) < 1e-5
    a, b = torch.zeros(4, 3, 32, 32), torch.full((4, 3, 32, 32), 0.3)
    assert abs(float(diversity_loss(a, b, torch.zeros(4, 1, 32, 32), torch.full((4, 1, 32, 32), 0.6))) - 0.5) < 1e-5
    # sparsity is element-wise: a mask whose mean is below the density still pays for its values above it
    sparse = torch.zeros(1, 1, 10, 10)
    sparse[0, 0, 0, 0] = 1.0  # mean 0.01 < 0.032
    assert abs(float(sparsity_loss(sparse, 0.032)) - 0.968 / 100) < 1e-6
    assert float(sparsity_loss(torch.full((1, 1, 4, 4), 0.03), 0.032)) == 0.0
    # identical triggers for different images are penalised without bound (up to the epsilon)
    assert float(diversity_loss(x, x.flip(0), m[:1].expand(4, -1, -1, -1), m[:1].expand(4, -1, -1, -1))) > 1e5


def test_train_store_reload_and_apply(tiny_mirror: Path, tmp_path: Path) -> None:
    recipe = TrainConfig(dataset="cifar10", model="resnet_small", epochs=1, batch_size=32, lr=0.01)
    config = InputAwareConfig(train=recipe, target=0, mask_epochs=1, generator_width=4)
    store = ArtefactStore(tmp_path / "store", read_only_roots=[])
    trained, attack = get_or_train_input_aware(config, store=store, progress=False)
    assert not trained.loaded and {"test_ca", "test_asr"} <= set(trained.metrics)
    again, same = get_or_train_input_aware(config, store=store, progress=False)
    assert again.loaded and same == attack and attack_from_dict(attack.to_dict()) == attack
    x = torch.rand(3, 3, 32, 32)
    assert torch.allclose(again.model(x), trained.model(x), atol=1e-5)
    # the attack finds its generators through the default store: point it at this one
    import workbench.core.attacks.input_aware as iab
    iab._generators.cache_clear()
    original = iab.ArtefactStore
    iab.ArtefactStore = lambda: store  # type: ignore[assignment]
    try:
        triggered = attack(x)
        masks = attack.mask(x)
    finally:
        iab.ArtefactStore = original
        iab._generators.cache_clear()
    assert triggered.shape == x.shape and isinstance(attack, InputAware)
    assert not torch.allclose(masks[0], masks[1])  # sample-specific


def test_a_training_killed_after_an_epoch_resumes_there_with_the_weights_of_an_uninterrupted_run(
        tiny_mirror: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The process dies right after the first joint epoch's state is written (the mask generator's epoch and one of
    two joint epochs done): the rerun resumes there and ends with every weight of the uninterrupted run."""
    recipe = TrainConfig(dataset="cifar10", model="resnet_small", epochs=2, batch_size=32, lr=0.01)
    config = InputAwareConfig(train=recipe, target=0, mask_epochs=1, generator_width=4)
    whole, _ = get_or_train_input_aware(config, store=ArtefactStore(tmp_path / "whole", read_only_roots=[]),
                                        device="cpu", progress=False)
    store = ArtefactStore(tmp_path / "killed", read_only_roots=[])
    saves = []

    def save_and_die_on_the_second(*args, **kwargs):
        save_checkpoint(*args, **kwargs)
        saves.append(args[2]["epochs"])
        if len(saves) == 2:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):  # not `undo`: it unsets tiny_mirror's
        patch.setattr(input_aware, "save_checkpoint", save_and_die_on_the_second)
        get_or_train_input_aware(config, store=store, device="cpu", progress=False)
    assert saves == [0, 1]  # after the mask generator's epoch, then after joint epoch 1
    checkpoint = store.checkpoint("iab", whole.key)
    assert checkpoint.is_file() and store.load_by_key("iab", whole.key) is None
    resumed, _ = get_or_train_input_aware(config, store=store, device="cpu", progress=False)
    assert not checkpoint.exists()
    stored = store.load_by_key("iab", whole.key).tensors
    reference = ArtefactStore(tmp_path / "whole", read_only_roots=[]).load_by_key("iab", whole.key).tensors
    assert stored.keys() == reference.keys()
    for name, tensor in reference.items():  # the classifier and both generators
        assert torch.equal(tensor, stored[name]), name
    assert [e["loss"] for e in resumed.metrics["history"]] == [e["loss"] for e in whole.metrics["history"]]
