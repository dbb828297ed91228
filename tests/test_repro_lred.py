"""L-RED experiment grid (App. A.4, A.8), detection bookkeeping and tables; RED-A's annealing on a trained model."""

from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from tests.conftest import needs_real_data
from workbench.core.attacks import PoisonConfig, make_attack
from workbench.core.data import ImageDataset
from workbench.core.training import TrainConfig, get_or_train
from workbench.core.validation import WorkbenchError
from workbench.defenses.lred import LREDConfig, detection_images, estimate_patterns
from workbench.repro import lred as lred_repro
from workbench.repro.lred import (
    GROUPS,
    LRED_PRESETS,
    OTHER_DATASETS,
    AttackSetting,
    Inspection,
    classifier_config,
    collateral_damage,
    method_settings,
    speedup,
    table1,
    table2,
)
from workbench.repro.paper_numbers import LRED_TABLE1, printed_p_value


def test_groups_follow_appendix_a4_with_0_based_classes():
    assert {g: (s.target, s.sources, s.count_per_source) for g, s in GROUPS.items() if s.pattern} == {
        "G-1": (9, (0,), 150), "G-3": (9, (0, 6, 8), 50), "G-9": (9, (0, 1, 2, 3, 4, 5, 6, 7, 8), 15),
        "L-1": (1, (0,), 900), "L-3": (1, (0, 4, 5), 300), "L-9": (1, (0, 2, 3, 4, 5, 6, 7, 8, 9), 100)}
    assert GROUPS["C-0"].pattern is None
    assert len(OTHER_DATASETS["gtsrb"].sources) == 14 and OTHER_DATASETS["gtsrb"].target == 8


def test_each_classifier_is_an_independent_attack():
    first, second = (classifier_config(GROUPS["L-1"], i, "cpu") for i in (0, 1))
    assert first.seed == 0 and second.seed == 1
    assert first.poison.count_per_source == 900 and first.poison.sources == (0,)
    # the local square's place and channel are drawn per attack
    assert not torch.equal(first.poison.attack.perturbation(3, 32, 32), second.poison.attack.perturbation(3, 32, 32))
    assert classifier_config(GROUPS["C-0"], 0, "cpu").poison is None
    # cpu raises the patterns' amplitude (a named deviation); MNIST keeps the paper's 500 images per source
    assert first.poison.attack.amplitude == LRED_PRESETS["cpu"].amplitudes["local_square"] == 100 / 255
    assert classifier_config(OTHER_DATASETS["mnist"], 0, "cpu").poison.count_per_source == 500
    assert classifier_config(GROUPS["G-1"], 0, "paper").poison.attack.amplitude is None  # the paper's 2/255
    # smoke scale keeps each source class's poisoned share: 150 of 5,000 -> 6 of 200 per class
    assert classifier_config(GROUPS["G-1"], 0, "smoke").poison.count_per_source == 6


def test_red_a_prime_is_red_a_with_fewer_images():
    preset = LRED_PRESETS["cpu"]
    assert method_settings("RED-A'", preset) == ("RED-A", 2)
    assert method_settings("RED-P", preset) == ("RED-P", 8)


def _inspection(attacked: bool, detected: bool, inferred: int, true_target: int | None = 9) -> Inspection:
    class Result:  # the two fields `success` reads
        pass
    result = Result()
    result.detected, result.inferred_target = detected, inferred
    return Inspection("G-1", 0, "RED-A", attacked, true_target if attacked else None, result)


@pytest.mark.parametrize(("attacked", "detected", "inferred", "success"), [
    (True, True, 9, True), (True, True, 3, False), (True, False, 9, False),  # wrong target is a failure
    (False, False, 3, True), (False, True, 3, False)])
def test_success_needs_the_right_target_or_silence(attacked, detected, inferred, success):
    assert _inspection(attacked, detected, inferred).success is success


def test_table4_counts_keep_the_papers_share():
    # Fashion-MNIST at cpu trains on 20,000 images (2,000 per class): 900 of the paper's 6,000 -> 300
    assert classifier_config(OTHER_DATASETS["fashion-mnist"], 0, "cpu").poison.count_per_source == 300


@needs_real_data
def test_gtsrb_count_is_scaled_to_our_larger_training_split():
    # our GTSRB copy has 37,249 training images after the holdout (paper: 26,640): 30 -> 42 per source class
    assert classifier_config(OTHER_DATASETS["gtsrb"], 0, "cpu").poison.count_per_source == 42


def test_table1_mean_and_std_per_group():
    effects = pd.DataFrame({"group": ["G-1", "G-1", "C-0"], "ASR": [80.0, 90.0, float("nan")],
                            "CTA": [70.0, 72.0, 71.0]})
    t1 = table1(effects, LRED_TABLE1).set_index("group")
    assert t1.loc["G-1", "ASR"] == "85.0 ± 7.1" and t1.loc["G-1", "classifiers"] == 2
    assert t1.loc["G-1", "paper ASR"] == "92.1 ± 1.9" and t1.loc["C-0", "paper ASR"] == ""  # as the paper prints them
    assert t1.loc["C-0", "ASR"] == "" and t1.loc["C-0", "CTA"] == "71.0 ± 0.0"


def test_published_p_values_print_as_in_the_paper():
    assert [printed_p_value(p) for p in (0.0, 8.44e-07, 3.41e-09, 0.3, 0.551)] == [
        "u.f.", "8.44e-07", "3.41e-09", "0.300", "0.551"]


class _PixelBackdoor(torch.nn.Module):
    """Stub classifier on 1x4x4 images: the top-left pixel says the class (dark 0, bright 1); a bright bottom-right
    pixel sends class-0 images to class 2 (the backdoor), and class-1 images nowhere."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))  # gives the device

    def forward(self, x):
        cls = (x[:, 0, 0, 0] > 0.5).long()
        out = torch.nn.functional.one_hot(cls, 3).float()
        out[(cls == 0) & (x[:, 0, -1, -1] > 0.25), 2] = 2.0
        return out


def test_collateral_damage_counts_pattern_and_clean_misclassification(monkeypatch):
    images = torch.zeros(6, 1, 4, 4, dtype=torch.uint8)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    images[2:4, 0, 0, 0] = 255  # class 1
    images[1, 0, -1, -1] = 255  # one class-0 image already carries a bright corner: misclassified when clean
    test = ImageDataset("stub", images, labels, ("a", "b", "c"))
    monkeypatch.setattr(lred_repro, "held_out_test_split", lambda config: test)
    attack = make_attack("additive", pattern="pixel", amplitude=0.5)
    poison = PoisonConfig(attack, target=2, count_per_source=1, sources=(0,))
    trained = SimpleNamespace(model=_PixelBackdoor(), config=SimpleNamespace(poison=poison))
    setting = AttackSetting("stub", "pixel", 2, (0,), 1)
    damage = collateral_damage(trained, setting).set_index("class")
    assert damage.loc[0, "misclassified with pattern"] == 1.0 and damage.loc[0, "misclassified clean"] == 0.5
    assert damage.loc[1, "misclassified with pattern"] == 0.0 and bool(damage.loc[0, "source"])
    assert not bool(damage.loc[1, "source"])
    with pytest.raises(WorkbenchError, match="attacked classifier"):
        collateral_damage(trained, setting.clean())


def test_table2_counts_and_speedup():
    rows = pd.DataFrame([{"setting": "G-1", "index": index, "method": method, "success": success, "seconds": seconds}
                         for method, index, success, seconds in [("RED-A", 0, True, 10.0), ("RED-A", 1, False, 12.0),
                                                                 ("RED-A'", 0, True, 2.0), ("RED-A'", 1, True, 2.0)]])
    t2 = table2(rows, {"RED-A": {"G-1": 10}})
    assert t2.set_index("method").loc["RED-A", "G-1"] == "1/2 (10/10)"
    assert t2.set_index("method").loc["RED-A'", "G-1"] == "2/2 (-)"
    assert speedup(rows) == pytest.approx(22 / 4)


@needs_real_data
def test_true_source_gains_weight_on_a_trained_one_source_model():
    """Acceptance: RED-A's trace for the true target moves weight onto the true source class (App. A.5, Fig. 2b).

    The paper's MNIST chessboard (+25/255) needs its 500 images per source and long training; with 150 images
    of one source it is not learned in seconds on our 7,600 MNIST training images, so this test raises the
    patch to +0.3 (76/255): the test is about the annealing, not about how faint a learnable trigger can be.
    """
    source, target = 4, 8
    attack = make_attack("additive", pattern="local_chessboard", amplitude=0.3)
    poison = PoisonConfig(attack, target=target, count_per_source=150, sources=(source,))
    config = TrainConfig(dataset="mnist", model="lenet5", poison=poison, epochs=10, lr=0.05, augment="none")
    trained = get_or_train(config, progress=False)
    assert trained.metrics["test_asr"] > 0.8, "the 1-source backdoor was not learned; the test cannot judge RED-A"
    test = config.splits().test
    x, y = detection_images(test.images, test.labels, 8, 10, seed=0)
    sources = torch.ones(1, 10, dtype=torch.bool)
    sources[0, target] = False
    result = estimate_patterns(trained.model, x, y, torch.tensor([target]), sources,
                               LREDConfig(step=0.05, max_norm=8))
    assert int(result.iterations[0]) > 1, "the estimation stopped at once: no annealing to judge"
    trace = result.trace_weights[: int(result.iterations[0]), 0]
    assert trace[-1, source] >= trace[0, source]
    assert int(result.weights[0].argmax()) == source
    assert result.weights[0, source] > 2 / 9  # well above the uniform start


@needs_real_data
def test_a_cached_detection_loads_bit_for_bit_as_computed(tmp_path):
    from workbench.core.artefacts import ArtefactStore
    from workbench.repro.lred import get_or_inspect

    preset = LRED_PRESETS["smoke"]
    store = ArtefactStore(tmp_path, read_only_roots=[])
    trained = get_or_train(classifier_config(GROUPS["G-1"], 0, "smoke"), store=store, device="cpu", progress=False)
    computed = get_or_inspect(trained, GROUPS["G-1"], "G-1", 0, "RED-A", preset, store=store)
    loaded = get_or_inspect(trained, GROUPS["G-1"], "G-1", 0, "RED-A", preset, store=store)
    assert loaded is not computed and loaded.row() == computed.row()
    for name in ("source_weights", "statistics"):
        assert torch.equal(getattr(loaded.result, name), getattr(computed.result, name))
    for name in ("patterns", "weights", "trace_weights", "trace_q", "iterations", "reached", "trace_patterns"):
        # exact, NaN where NaN (a trace's rows after its problem stopped)
        torch.testing.assert_close(getattr(loaded.result.estimation, name), getattr(computed.result.estimation, name),
                                   rtol=0, atol=0, equal_nan=True, msg=name)
    assert loaded.result.gamma == computed.result.gamma and loaded.result.config == computed.result.config
