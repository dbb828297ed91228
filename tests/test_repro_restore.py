"""REStore experiment plumbing: recipes of every attack, image splits and cached importance-splitting runs."""

import pytest
import torch

from workbench.core.artefacts import ArtefactStore
from workbench.core.training import TrainedModel
from workbench.core.validation import WorkbenchError
from workbench.repro import restore as rx


def test_every_attack_has_the_papers_recipe():
    configs = {attack: rx.train_config("cifar10", attack, "cpu") for attack in rx.ATTACKS}
    assert configs["benign"].poison is None and configs["benign"].all_classes_poison is None
    for attack in ("badnets", "sig", "wanet", "dynamic_badnets", "logit_obfuscation"):
        poison = configs[attack].poison
        assert poison.target == rx.TARGET and poison.ratio == rx.POISON_RATIO and not poison.clean_label
    assert configs["wanet"].poison.noise_ratio == 2.0
    assert configs["logit_obfuscation"].logit_anchor == rx.LOGIT_ANCHOR
    for attack in ("badnets_clean_label", "sig_clean_label"):
        poison = configs[attack].poison
        assert poison.clean_label and poison.ratio == rx.CLEAN_LABEL_RATIO and poison.ratio_of == "candidates"
    assert configs["badnets_clean_label"].poison.attack == configs["badnets"].poison.attack
    assert configs["all_classes"].all_classes_poison.ratio == rx.POISON_RATIO
    assert rx.train_config("mnist", "badnets", "cpu").poison.attack.row == -4  # bottom left on MNIST
    assert len({c for c in configs.values()}) == len(rx.ATTACKS)
    with pytest.raises(WorkbenchError, match="no 'dynamic_badnets' attack on 'mnist'"):
        rx.train_config("mnist", "dynamic_badnets", "cpu")
    for run in rx.RESTORE_PRESETS["cpu"].runs:  # every run's model is trained at that scale
        assert run.attack in rx.RESTORE_PRESETS["cpu"].attacks[run.dataset]


class _Quadrants(torch.nn.Module):
    """4 classes on 1x8x8 images: the brightest quadrant."""

    input_shape = (1, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[:, 0, r:r + 4, c:c + 4].mean((1, 2)) for r, c in ((0, 0), (0, 4), (4, 0), (4, 4))], 1)


def _quadrant_test_set(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.arange(n) % 4
    x = 0.3 * torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for k, (r, c) in enumerate(((0, 0), (0, 4), (4, 0), (4, 4))):
        x[labels == k, :, r:r + 4, c:c + 4] += 0.5
    return x, labels


def test_runs_are_cached_and_reloaded(tmp_path, monkeypatch):
    from workbench.core.data import ImageDataset

    x, y = _quadrant_test_set(80)
    test = ImageDataset("mnist", (x * 255).round().to(torch.uint8), y, ("a", "b", "c", "d"))
    preset = rx.RestorePreset(recipes={}, splitting={"particles": 10, "survivors": 5, "passes": 2, "max_levels": 4},
                              clean_images=40, eval_images=40, comparable_images=4)
    images = rx.split_images(test, preset)
    assert len(images.clean) == 40 and len(images.test) == 40
    assert not any(torch.equal(a, b) for a in images.clean[:5] for b in images.test)  # disjoint parts (distinct here)
    trained = TrainedModel(_Quadrants(), None, "toy-model", {}, "", loaded=True)
    store = ArtefactStore(tmp_path / "store", read_only_roots=[])
    run = rx.Run("mnist", "benign", "PI", "probits")
    first = rx.get_or_diagnose(trained, images, run, preset, store=store)
    assert first.setup.name == "PI" and 0 < first.setup.alpha < 1 and "alpha_probes" in first.extra
    monkeypatch.setattr(rx, "diagnose", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran again")))
    again = rx.get_or_diagnose(trained, images, run, preset, store=store)
    assert again.suspect == first.suspect and again.setup == first.setup
    assert torch.equal(again.splitting.levels, first.splitting.levels)
    with pytest.raises(WorkbenchError, match="needs 200"):
        rx.split_images(test, rx.RestorePreset(recipes={}, splitting={}, clean_images=100, eval_images=100,
                                               comparable_images=1))


def test_all_classes_attack_is_evaluated_with_the_target_class_trigger():
    from workbench.core.attacks import AllClassesPoison

    triggers = AllClassesPoison(ratio=rx.POISON_RATIO).triggers(10, 32)
    assert rx.trigger("cifar10", "all_classes") == triggers[rx.TARGET] != triggers[0]
    assert rx.trigger("cifar10", "benign") is None


def test_searched_classes_are_part_of_a_runs_identity(tmp_path):
    x, y = _quadrant_test_set(80)
    from workbench.core.data import ImageDataset

    test = ImageDataset("mnist", (x * 255).round().to(torch.uint8), y, ("a", "b", "c", "d"))
    preset = rx.RestorePreset(recipes={}, splitting={"particles": 10, "survivors": 5, "passes": 2, "max_levels": 3},
                              clean_images=40, eval_images=40, comparable_images=4, per_set=3)
    images = rx.split_images(test, preset)
    trained = TrainedModel(_Quadrants(), None, "toy-model", {}, "", loaded=True)
    store = ArtefactStore(tmp_path / "store", read_only_roots=[])
    every = rx.get_or_diagnose(trained, images, rx.Run("mnist", "benign"), preset, store=store)
    one = rx.get_or_diagnose(trained, images, rx.Run("mnist", "benign", classes=(1,)), preset, store=store)
    assert every.classes == [0, 1, 2, 3] and one.classes == [1] and one.suspect is None
    assert "loaded_from_cache" not in one.extra
    assert rx.get_or_diagnose(trained, images, rx.Run("mnist", "benign", classes=(1,)), preset,
                              store=store).extra["loaded_from_cache"]


def test_costs_are_timed_per_function():
    calls = []
    seconds = rx.seconds_per_image({"a": lambda x: calls.append("a"), "b": lambda x: calls.append("b")},
                                   torch.zeros(4, 1, 2, 2), repeats=3)
    assert calls == ["a", "b"] * 3 and set(seconds) == {"a", "b"} and all(s >= 0 for s in seconds.values())
    with pytest.raises(WorkbenchError, match="repeats"):
        rx.seconds_per_image({}, torch.zeros(1, 1, 2, 2), repeats=0)
