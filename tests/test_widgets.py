"""Every widget, driven through its own traits in the kernel (no browser): each control must redraw the figure
*inside the widget's own Output* with a real figure (a plotly spec with traces, or a PNG), and the figure shown must
be the one the viz function draws for the new choice.

These tests fail on an Output filled with `append_display_data(plotly_figure)`, which stores an empty bundle (the
figure goes to the cell instead), so a widget whose picture never changes in JupyterLab cannot pass them.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Iterator

import ipywidgets as widgets
import pytest
import torch

from tests.test_bdmae import GRID14, TRIGGER, OracleRestorer, TriggerDetector, images
from tests.test_lred import CONFIG, margin_images, margin_model
from tests.test_restore import TARGET, quadrant_images, toy_diagnosis
from workbench.core.mae import MaskedAutoencoderViT
from workbench.core.query import QueryModel
from workbench.core.validation import WorkbenchError
from workbench.defenses.bdmae import BDMAE
from workbench.defenses.lred import detect, estimate_patterns, estimation_problems
from workbench.defenses.restore import Purifier, estimate_trigger
from workbench.defenses.trap_replace import ScatterComparison, scatter_of
from workbench.viz.bdmae import refinement_step_plotly, score_maps_plotly
from workbench.viz.images import image_grid
from workbench.viz.lred import annealing_plotly, detection_plotly
from workbench.viz.restore import tau_rho_plotly, trigger_plotly
from workbench.viz.trap_replace import feature_scatter_plotly, reconstruction_plotly
from workbench.widgets.bdmae import refinement_player, trigger_score_explorer
from workbench.widgets.display import PLOTLY_MIME, choice, figure_bundle, show
from workbench.widgets.lred import annealing_player, detection_view
from workbench.widgets.restore import purification_view, tau_rho_explorer, trigger_gallery
from workbench.widgets.trap_replace import feature_scatter_explorer, reconstruction_viewer


def walk(widget: widgets.Widget) -> Iterator[widgets.Widget]:
    yield widget
    for child in getattr(widget, "children", ()):
        yield from walk(child)


def control(widget: widgets.Widget, description: str) -> widgets.Widget:
    [found] = [w for w in walk(widget) if getattr(w, "description", None) == description]
    return found


def outputs(widget: widgets.Widget) -> list[widgets.Output]:
    return [w for w in walk(widget) if isinstance(w, widgets.Output)]


def shown(out: widgets.Output) -> dict:
    """The one mime bundle `out` displays; it must hold a real figure, not an empty bundle."""
    assert len(out.outputs) == 1, f"the Output shows {len(out.outputs)} items, not one figure"
    data = out.outputs[0]["data"]
    if PLOTLY_MIME in data:
        assert data[PLOTLY_MIME]["data"], "the plotly figure has no traces"
    else:
        assert "image/png" in data, f"no figure in the Output, only {sorted(data)}"
        assert base64.b64decode(data["image/png"]).startswith(b"\x89PNG")
    return data


def assert_shows(out: widgets.Output, figure: object) -> None:
    assert shown(out) == figure_bundle(figure)


def test_show_puts_a_real_plotly_bundle_in_the_output_and_replaces_it() -> None:
    out = widgets.Output()
    first = tau_rho_plotly(toy_diagnosis(backdoor=True)[2], ["q0", "q1", "q2", "q3"], TARGET)
    show(out, first)
    spec = shown(out)[PLOTLY_MIME]
    assert len(spec["data"]) == 4 and "width" not in spec["layout"] and spec["layout"]["autosize"]
    show(out, "<i>nothing</i>")
    assert out.outputs[0]["data"]["text/html"] == "<i>nothing</i>"
    with pytest.raises(WorkbenchError, match="plotly Figure, a matplotlib Figure or an HTML string"):
        show(out, 3)


def test_choice_starts_on_its_first_option_and_hides_when_there_is_nothing_to_choose() -> None:
    box = choice([("a", 5), ("b", 6)], "letter")
    assert box.value == 5 and box.layout.display is None
    assert choice(["only"], "single", buttons=True).layout.display == "none"


@pytest.fixture(scope="module")
def bdmae_setup() -> tuple[dict[str, BDMAE], dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    restorer = OracleRestorer(MaskedAutoencoderViT(GRID14))
    detector = BDMAE(QueryModel(TriggerDetector(), "label"), restorer, batch_images=3)
    constant = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 2))
    with torch.no_grad():
        constant[1].weight.zero_()
        constant[1].bias.copy_(torch.tensor([0.0, 1.0]))
    always_one = BDMAE(QueryModel(constant, "label"), restorer, batch_images=3)
    clean = images(3)
    return {"detector": detector, "constant": always_one}, {"triggered": TRIGGER(clean), "clean": clean}


def test_trigger_score_explorer_redraws_for_every_control(bdmae_setup) -> None:
    defences, sets = bdmae_setup
    names = ["target", "other"]
    explorer = trigger_score_explorer(sets, defences, names, seed=3)
    [out] = outputs(explorer)

    def figure_for(set_name: str, model: str, index: int) -> object:
        x = sets[set_name][index:index + 1]
        return score_maps_plotly(x, defences[model].purify(x, seed=3, first_index=index), 0, names)

    assert_shows(out, figure_for("triggered", "detector", 0))
    control(explorer, "image").value = 2
    assert_shows(out, figure_for("triggered", "detector", 2))
    control(explorer, "images").value = "clean"
    assert_shows(out, figure_for("clean", "detector", 2))
    control(explorer, "model").value = "constant"
    assert_shows(out, figure_for("clean", "constant", 2))


def test_refinement_player_redraws_for_every_step_and_score(bdmae_setup) -> None:
    defences, sets = bdmae_setup
    result = defences["detector"].purify(sets["triggered"], seed=1)
    player = refinement_player(result, index=1)
    [out] = outputs(player)
    score, step = control(player, "score"), control(player, "step")
    [play] = [w for w in walk(player) if isinstance(w, widgets.Play)]
    assert (play.min, play.max) == (step.min, step.max) == (0, result.refinement.of("image").steps - 1)
    assert_shows(out, refinement_step_plotly(result, 1, "image", 0))
    step.value = step.max
    assert_shows(out, refinement_step_plotly(result, 1, "image", step.max))
    score.value = "label"
    assert_shows(out, refinement_step_plotly(result, 1, "label", step.max))


@pytest.fixture(scope="module")
def lred_results() -> dict:
    """RED-P detections with two step sizes (3 classes give RED-A too few statistics for its test)."""
    x, y = margin_images(per_class=4)
    return {f"RED-P, step {step}": detect(margin_model(), x, y, 3, "RED-P", dataclasses.replace(CONFIG, step=step),
                                          snapshot_every=50)
            for step in (0.005, 0.01)}


def test_annealing_player_draws_once_per_choice_and_redraws_for_every_control() -> None:
    names = ["a", "b", "c"]
    x, y = margin_images(per_class=4)
    estimations = {method: estimate_patterns(margin_model(), x, y, *estimation_problems(method, 3), CONFIG,
                                             snapshot_every=50) for method in ("RED-A", "RED-P")}
    draws = []
    player = annealing_player(estimations, names, pi=0.8)
    [out] = outputs(player)
    out.observe(lambda change: draws.append(change), names="outputs")
    step, target, model = control(player, "iteration"), control(player, "target"), control(player, "model")
    last = int(estimations["RED-A"].iterations[0])
    assert step.value == step.min and step.max == last and (step.max - step.min) % step.step == 0  # Play ends on last
    assert_shows(out, annealing_plotly(estimations["RED-A"], 0, step.min, names, 0.8))
    step.value = last
    assert_shows(out, annealing_plotly(estimations["RED-A"], 0, last, names, 0.8))
    target.value = 2
    assert_shows(out, annealing_plotly(estimations["RED-A"], 2, step.min, names, 0.8))
    draws.clear()
    model.value = "RED-P"
    assert len(draws) == 1, "a new model must redraw once, not once per control it resets"
    assert target.value == 0 and target.options[0][0] == "b->a"
    assert step.max == int(estimations["RED-P"].iterations[0])
    assert_shows(out, annealing_plotly(estimations["RED-P"], 0, step.min, names, 0.8))


def test_detection_view_redraws_and_captions_each_run(lred_results) -> None:
    names = ["a", "b", "c"]
    first, second = lred_results
    view = detection_view(lred_results, names, {first: "target c", second: "target c too"})
    [out] = outputs(view)
    assert_shows(out, detection_plotly(lred_results[first], names))
    control(view, "run").value = second
    assert_shows(out, detection_plotly(lred_results[second], names))
    assert "truth: target c too" in next(w for w in walk(view) if isinstance(w, widgets.HTML)).value


@pytest.fixture(scope="module")
def restore_results() -> dict:
    query, setup, backdoored = toy_diagnosis(backdoor=True)
    _, _, benign = toy_diagnosis(backdoor=False)
    clean, _ = quadrant_images(4, 0)
    estimates = {c: estimate_trigger(setup, backdoored.realisations(c), clean) for c in (TARGET, 0)}
    stamped = {c: setup.perturb(clean[:1], backdoored.realisations(c)[:1])[0, 0] for c in estimates}
    return {"query": query, "setup": setup, "backdoored": backdoored, "benign": benign, "clean": clean,
            "estimates": estimates, "stamped": stamped}


def test_tau_rho_explorer_switches_models_and_setups(restore_results) -> None:
    names = ["q0", "q1", "q2", "q3"]
    diagnoses = {("backdoored", "PI", "probits"): restore_results["backdoored"],
                 ("benign", "PI", "probits"): restore_results["benign"],
                 ("backdoored", "PI", "labels"): restore_results["benign"]}
    explorer = tau_rho_explorer(diagnoses, names, {"backdoored": TARGET})
    [out] = outputs(explorer)
    assert control(explorer, "setup").layout.display == "none"  # one setup: nothing to choose
    assert_shows(out, tau_rho_plotly(restore_results["backdoored"], names, TARGET))
    control(explorer, "model").value = "benign"
    assert_shows(out, tau_rho_plotly(restore_results["benign"], names, None))
    control(explorer, "scorer").value = "labels"
    assert "no run of model benign" in out.outputs[0]["data"]["text/html"]
    control(explorer, "model").value = "backdoored"
    assert_shows(out, tau_rho_plotly(restore_results["benign"], names, TARGET))


def test_trigger_gallery_redraws_for_each_trigger(restore_results) -> None:
    clean, estimates, stamped = restore_results["clean"], restore_results["estimates"], restore_results["stamped"]
    views = {f"class {c}": (estimates[c], clean[0], stamped[c]) for c in estimates}
    gallery = trigger_gallery(views)
    [out] = outputs(gallery)
    assert_shows(out, trigger_plotly(*views[f"class {TARGET}"], f"class {TARGET}"))
    control(gallery, "trigger").value = "class 0"
    assert_shows(out, trigger_plotly(*views["class 0"], "class 0"))


def test_purification_view_redraws_for_strength_and_transform(restore_results) -> None:
    names = ["q0", "q1", "q2", "q3"]
    query, clean, estimate = restore_results["query"], restore_results["clean"], restore_results["estimates"][TARGET]
    purifier = Purifier("subtract", 0.5, estimate.weights(), estimate.mean)
    view = purification_view(purifier, {"clean": clean}, query.labels, names)
    [out] = outputs(view)

    def figure_for(strength: float, transform: str) -> object:
        current = Purifier(transform, strength, estimate.weights(), estimate.mean)
        rows = [clean, current(clean)]
        return image_grid(rows, ["clean", "clean, purified"],
                          [[names[int(c)] for c in query.labels(batch)] for batch in rows])

    first = shown(out)["image/png"]
    assert_shows(out, figure_for(0.5, "subtract"))
    control(view, "strength").value = 1.0
    assert shown(out)["image/png"] != first
    assert_shows(out, figure_for(1.0, "subtract"))
    control(view, "transform").value = "mask"
    assert_shows(out, figure_for(1.0, "mask"))


def test_feature_scatter_explorer_opens_on_its_first_source_and_redraws_both_models() -> None:
    gen = torch.Generator().manual_seed(0)

    def scatter(shift: float):
        return scatter_of(torch.randn(10, 6, generator=gen), torch.randn(10, 6, generator=gen) + shift,
                          torch.randn(10, 6, generator=gen) + shift / 2)

    names = tuple(str(c) for c in range(10))
    comparisons = {attack: ScatterComparison(attack, 0, names, {1: scatter(3), 2: scatter(5)},
                                             {1: scatter(3), 2: scatter(5)}) for attack in ("BadNet-Grid", "Blend")}
    explorer = feature_scatter_explorer(list(comparisons.values()))
    source = control(explorer, "source")
    assert source.value == 1 and [value for _, value in source.options] == [1, 2]

    [out] = outputs(explorer)

    def check(attack: str, source_class: int) -> None:
        groups = ("clean 0", f"clean {source_class}", f"poisoned {source_class}")
        comparison = comparisons[attack]
        panels = {"without reconstruction": comparison.without[source_class],
                  "with reconstruction": comparison.with_reconstruction[source_class]}
        assert_shows(out, feature_scatter_plotly(panels, groups))
        spec = shown(out)[PLOTLY_MIME]
        assert {trace["xaxis"] for trace in spec["data"]} == {"x", "x2"}  # both models, side by side

    check("BadNet-Grid", 1)
    source.value = 2
    check("BadNet-Grid", 2)
    control(explorer, "attack").value = "Blend"
    assert source.value == 2
    check("Blend", 2)


def test_reconstruction_viewer_redraws_for_each_image_and_lambda() -> None:
    originals = {"clean": torch.rand(2, 3, 8, 8)}
    reconstructions = {lam: {"clean": torch.rand(2, 3, 8, 8)} for lam in (1.0, 10.0)}
    viewer = reconstruction_viewer(originals, reconstructions)
    [out] = outputs(viewer)
    index, lam = control(viewer, "image"), control(viewer, "lambda1")
    assert index.max == 1 and lam.value == 1.0

    def figure_for(lam_value: float, i: int) -> object:
        return reconstruction_plotly([originals["clean"][i]], [reconstructions[lam_value]["clean"][i]], ["clean"],
                                     f"reconstruction head trained with lambda1 = {lam_value:g}")

    assert_shows(out, figure_for(1.0, 0))
    index.value = 1
    assert_shows(out, figure_for(1.0, 1))
    lam.value = 10.0
    assert_shows(out, figure_for(10.0, 1))
    single = reconstruction_viewer(originals, {10.0: reconstructions[10.0]})
    assert control(single, "lambda1").layout.display == "none"
