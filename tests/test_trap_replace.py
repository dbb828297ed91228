"""Trap and Replace: the reconstruction head, Eq. 1's terms, CutMix, stage 2's frozen stem, caching and PCA."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from tests.conftest import needs_real_data
from workbench.core import training
from workbench.core.artefacts import ArtefactStore
from workbench.core.attacks import PoisonConfig, make_attack
from workbench.core.data import ImageDataset
from workbench.core.runtime import assets_root
from workbench.core.training import TrainConfig, get_or_train, new_model
from workbench.core.validation import WorkbenchError
from workbench.defenses import trap_replace
from workbench.defenses.trap_replace import (
    ReplaceConfig,
    TrapConfig,
    TrapNet,
    cutmix,
    feature_scatter,
    get_or_replace,
    get_or_trap,
    principal_components,
    replace_head,
    scatter_of,
    stem_features,
    total_variation,
    trap_objective,
)
from workbench.repro.trap_replace import TRTables
from workbench.viz.trap_replace import feature_scatter_pair, reconstruction_figure

WRN = TrainConfig(dataset="cifar10", model="wrn16_1", epochs=1, batch_size=32, optimizer="adam", lr=1e-3,
                  schedule="cosine", label_smoothing=0.0)


@pytest.mark.parametrize(("model", "split", "features"), [
    ("wrn16_1", "block3_1", (64, 8, 8)), ("wrn16_1", "block3_0", (32, 16, 16)), ("wrn16_1", "final", (64, 8, 8)),
    ("resnet_small", "stage3", (64, 8, 8)), ("lenet5", "fc1", (16, 5, 5))])
def test_reconstruction_head_maps_stem_features_back_to_the_image(model: str, split: str, features: tuple) -> None:
    dataset = "mnist" if model == "lenet5" else "cifar10"
    net = TrapNet.build(new_model(TrainConfig(dataset=dataset, model=model)), split)
    x = torch.rand(3, *net.classifier.input_shape)
    stem, _ = net.classifier.split(split)
    assert stem(x).shape[1:] == features
    # the features read inside the classifier's own forward pass are the stem's output, exactly
    assert torch.equal(stem_features(net.classifier, x, split), stem.eval()(x).flatten(1))
    logits, reconstruction = net.forward_both(x)
    assert logits.shape == (3, 10) and reconstruction.shape == x.shape
    assert reconstruction.min() >= 0 and reconstruction.max() <= 1
    assert torch.equal(net(x), net.classifier(x))


def test_default_wrn_head_is_the_public_codes_decoder() -> None:
    layers = list(TrapNet.build(new_model(WRN)).reconstruction)
    assert [type(layer) for layer in layers] == [nn.ConvTranspose2d, nn.ReLU, nn.ConvTranspose2d, nn.Sigmoid]
    assert (layers[0].in_channels, layers[0].out_channels, layers[2].out_channels) == (64, 32, 3)
    assert layers[0].kernel_size == (4, 4) and layers[0].stride == (2, 2) and layers[0].padding == (1, 1)


def test_a_pooled_stem_cannot_be_reconstructed() -> None:
    with pytest.raises(WorkbenchError, match="spatial"):
        TrapNet.build(new_model(WRN), "fc")


def test_total_variation_and_the_joint_objective_on_known_answers() -> None:
    stripes = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])  # two horizontal jumps of 1, no vertical ones
    assert total_variation(stripes).item() == pytest.approx(2 / 4)
    assert total_variation(torch.full((2, 3, 5, 5), 0.3)).item() == 0
    logits, y = torch.randn(4, 10), torch.arange(4)
    x, reconstruction = torch.rand(4, 3, 8, 8), torch.rand(4, 3, 8, 8)
    ce = nn.functional.cross_entropy(logits, y)
    assert trap_objective(logits, reconstruction, x, y, rec_weight=0, tv_weight=0) == ce
    mse = ((reconstruction - x) ** 2).mean()
    assert trap_objective(logits, reconstruction, x, y, rec_weight=10, tv_weight=0.1).item() == pytest.approx(
        (ce + 10 * mse + 0.1 * total_variation(reconstruction)).item(), rel=1e-6)


def test_cutmix_pastes_one_box_whose_area_sets_lambda() -> None:
    x = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 3, 16, 16).contiguous()  # image i is the constant i
    y = torch.arange(8)
    for seed in range(5):
        mixed, pasted, lam = cutmix(x, y, 1.0, torch.Generator().manual_seed(seed))
        source = mixed[:, 0]  # which image each pixel came from
        for i in range(8):
            from_other = source[i] != i
            assert set(source[i][from_other].tolist()) <= {float(pasted[i])}
            if pasted[i] != i:
                assert 1 - from_other.float().mean().item() == pytest.approx(lam)
        assert 0 <= lam <= 1


def _tiny_dataset(n: int = 64, seed: int = 0) -> ImageDataset:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    images = (torch.rand(n, 3, 32, 32, generator=gen) * 255).to(torch.uint8)
    return ImageDataset("cifar10", images, labels, tuple(str(c) for c in range(10)))


def test_stage_two_retrains_only_the_head() -> None:
    classifier = new_model(WRN)
    before = {k: v.clone() for k, v in classifier.state_dict().items()}
    replace_head(classifier, _tiny_dataset(), ReplaceConfig(epochs=2, batch_size=16), WRN, "block3_1",
                 device="cpu", progress=False)
    after = classifier.state_dict()
    stem_keys = [k for k in before if k.startswith(("normalize", "stages.conv1", "stages.block1", "stages.block2",
                                                    "stages.block3_0"))]
    head_keys = [k for k in before if k.startswith(("stages.block3_1", "stages.final", "stages.fc"))]
    assert stem_keys and head_keys
    assert all(torch.equal(before[k], after[k]) for k in stem_keys)  # weights and BN statistics frozen
    assert all(not torch.equal(before[k], after[k]) for k in head_keys if after[k].is_floating_point())
    assert all(p.requires_grad for p in classifier.parameters())
    assert all(m.p == 0 for m in classifier.modules() if isinstance(m, nn.Dropout))  # dropout only while training
    assert not classifier.training


def test_configs_validate_with_clear_messages() -> None:
    with pytest.raises(WorkbenchError, match="rec_weight must be a finite number >= 0"):
        TrapConfig(WRN, rec_weight=-1)
    with pytest.raises(WorkbenchError, match="unknown split point 'block9'"):
        TrapConfig(WRN, split="block9")
    with pytest.raises(WorkbenchError, match="dropout must be in"):
        ReplaceConfig(dropout=1.0)
    with pytest.raises(WorkbenchError, match="unknown optimizer"):
        ReplaceConfig(optimizer="lion")
    config = TrapConfig(WRN, split="block3_0")
    assert TrapConfig.from_dict(config.to_dict()) == config
    assert TrapConfig(WRN).to_dict()["split"] == "block3_1"  # the default split is spelled out in the key


def test_both_stages_are_cached_and_repeatable(tiny_mirror: Path, tmp_path: Path) -> None:
    poison = PoisonConfig(make_attack("bdmae_badnets_checkerboard"), target=0, ratio=0.1)
    config = TrapConfig(TrainConfig(**{**WRN.__dict__, "poison": poison}))
    replace = ReplaceConfig(epochs=1, batch_size=8)
    runs = []
    for attempt in range(2):  # two empty stores: same seed, same weights
        store = ArtefactStore(tmp_path / f"store{attempt}", read_only_roots=[])
        trapped = get_or_trap(config, store=store, device="cpu", progress=False)
        replaced = get_or_replace(trapped, replace, store=store, device="cpu", progress=False)
        assert not trapped.loaded and not replaced.loaded
        assert {"test_ca", "test_asr", "test_rec_mse"} <= set(trapped.metrics)
        assert replaced.metrics["holdout_images"] == 10  # 5 % of the 200 training images
        again = get_or_trap(config, store=store, device="cpu", progress=False)
        assert again.loaded and again.metrics == trapped.metrics
        assert get_or_replace(again, replace, store=store, device="cpu", progress=False).loaded
        whole = get_or_replace(again, dataclasses.replace(replace, holdout_size=10), store=store, device="cpu",
                               progress=False)
        assert whole.loaded and whole.key == replaced.key  # all 10 holdout images is the default run
        runs.append((trapped, replaced))
    x = torch.rand(4, 3, 32, 32)
    (first_trap, first_replaced), (second_trap, second_replaced) = runs
    assert torch.equal(first_trap.net.forward_both(x)[1], second_trap.net.forward_both(x)[1])
    assert torch.equal(first_replaced.model(x), second_replaced.model(x))
    assert not torch.equal(first_replaced.model(x), first_trap.model(x))  # the trap head was replaced
    # lambda1 = 0 is ordinary training: the very artefact `get_or_train` makes
    plain = get_or_trap(TrapConfig(config.train, rec_weight=0), store=store, device="cpu", progress=False)
    assert plain.key == get_or_train(config.train, store=store, progress=False).key
    assert plain.net.reconstruction is None


def test_a_killed_stage_two_resumes_with_the_weights_of_an_uninterrupted_run(
        tiny_mirror: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = TrapConfig(WRN)
    replace = ReplaceConfig(epochs=2, batch_size=4, cutmix_beta=1.0)  # CutMix and dropout draw in every batch
    stores = [ArtefactStore(tmp_path / name, read_only_roots=[]) for name in ("whole", "killed")]
    trapped = [get_or_trap(config, store=store, device="cpu", progress=False) for store in stores]
    whole = get_or_replace(trapped[0], replace, store=stores[0], device="cpu", progress=False)
    save_epoch = training._save_epoch

    def save_then_die(*args, **kwargs):  # the process dies right after epoch 1's state is written
        save_epoch(*args, **kwargs)
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(training, "_save_epoch", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            get_or_replace(trapped[1], replace, store=stores[1], device="cpu", progress=False)
    checkpoint = stores[1].checkpoint(trap_replace.REPLACE_KIND, whole.key)
    assert checkpoint.is_file() and stores[1].load_by_key(trap_replace.REPLACE_KIND, whole.key) is None
    resumed = get_or_replace(trapped[1], replace, store=stores[1], device="cpu", progress=False)
    assert not resumed.loaded and not checkpoint.exists()
    for name, tensor in whole.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    def measured(history: list[dict[str, float]]) -> list[tuple[float, float]]:  # wall-clock seconds left out
        return [(epoch["loss"], epoch["ca"]) for epoch in history]

    assert measured(resumed.metrics["history"]) == measured(whole.metrics["history"])


def test_cold_run_time_counts_each_artefact_once() -> None:
    tables = TRTables("cifar10", "smoke")
    tables.clock.seen("trained here", loaded=False, seconds=5.0)
    tables.clock.seen("trained here", loaded=True, seconds=5.0)  # a later table reloads it: already in the run's time
    tables.clock.seen("from the cache", loaded=True, seconds=7.0)
    assert tables.clock.loaded_seconds == {"from the cache": 7.0}


def test_principal_components_on_a_line_and_feature_scatter_shapes() -> None:
    direction = torch.tensor([3.0, 4.0]) / 5
    points = torch.linspace(-2, 2, 9)[:, None] * direction + torch.tensor([1.0, 1.0])
    projected, mean, components = principal_components(points, 2)
    assert torch.allclose(mean, torch.tensor([1.0, 1.0]))
    assert torch.allclose(components[0], direction, atol=1e-6)
    assert torch.allclose(projected[:, 1], torch.zeros(9), atol=1e-5)
    scatter = feature_scatter(new_model(WRN).eval(), torch.rand(5, 3, 32, 32), torch.rand(6, 3, 32, 32),
                              torch.rand(7, 3, 32, 32))
    assert [tuple(p.shape) for _, p in scatter.groups()] == [(5, 2), (6, 2), (7, 2)]
    assert 0 < sum(scatter.explained_variance) <= 1


@needs_real_data
def test_reconstruction_head_keeps_poisoned_automobiles_with_their_class(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Fig. 2 on the committed cpu-scale WRN-16-1 pair (l2-Invisible, 20,000 images, 20 epochs): with the
    reconstruction head the poisoned automobiles' stem features stay nearer the clean automobiles than the clean
    airplanes (the target); with normal training they move to the airplanes."""

    def must_not_train(*args: object, **kwargs: object) -> None:
        raise AssertionError("the committed models should load from data/assets; run `make assets`")

    monkeypatch.setattr(training, "train_classifier", must_not_train)
    monkeypatch.setattr(trap_replace, "train_classifier", must_not_train)
    tables = TRTables("cifar10", "cpu", store=ArtefactStore(tmp_path, read_only_roots=[assets_root()]),
                      device="cpu", progress=False)
    scatters = tables.scatters("l2-Invisible", per_class=100)
    automobile = 1
    with_head = scatters.with_reconstruction[automobile]
    without_head = scatters.without[automobile]
    assert scatters.group_labels(automobile) == ("clean airplane", "clean automobile", "poisoned automobile")
    assert with_head.poisoned_nearer_source and without_head.poisoned_nearer_target
    assert not (with_head.poisoned_nearer_target or without_head.poisoned_nearer_source)
    for without, with_reconstruction in ((without_head.pca, with_head.pca),
                                         (without_head.features, with_head.features)):
        assert without.to_target < 0.9 * without.to_source
        assert with_reconstruction.to_source < 0.9 * with_reconstruction.to_target


def test_views_label_their_axes() -> None:  # the widgets: tests/test_widgets.py
    gen = torch.Generator().manual_seed(0)
    scatter = scatter_of(torch.randn(20, 6, generator=gen), torch.randn(20, 6, generator=gen) + 3,
                         torch.randn(20, 6, generator=gen) + 2.5)
    assert scatter.poisoned_nearer_source  # the poisoned group sits by the source group
    fig = feature_scatter_pair(scatter, scatter, ("clean 0", "clean 1", "poisoned 1"))
    assert [ax.get_xlabel().startswith("PC 1 of stem features") for ax in fig.axes] == [True, True]
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["clean 0", "clean 1", "poisoned 1"]
    with pytest.raises(WorkbenchError, match="one label per group"):
        feature_scatter_pair(scatter, scatter, ("clean 0", "clean 1"))
    image = torch.rand(3, 8, 8)
    fig = reconstruction_figure(image[None], torch.stack([image * 0.5, image])[None], ["clean"], [1.0, 10.0])
    assert [ax.get_title() for ax in fig.axes][1:] == [f"lambda1 = 1\nMSE {((image * 0.5 - image) ** 2).mean():.4f}",
                                                       "lambda1 = 10\nMSE 0.0000"]
