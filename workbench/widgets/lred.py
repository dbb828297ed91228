"""L-RED widgets: a weight-annealing player and a detection view (ipywidgets + plotly).

They only wire `workbench.viz.lred` figures to controls; the results are computed beforehand.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import ipywidgets as widgets

from workbench.defenses.lred import DetectionResult, EstimationResult
from workbench.viz.lred import annealing_plotly, detection_plotly, problem_labels
from workbench.widgets.display import show


def annealing_player(estimations: Mapping[str, EstimationResult], class_names: Sequence[str],
                     pi: float = 0.9) -> widgets.VBox:
    """Pick a model and a putative target; play its iterations: the weights w_s over source classes, the Q_t and
    T curves so far and the pattern v (latest snapshot; estimate with `snapshot_every` > 0 to see it grow)."""
    model_box = widgets.Dropdown(options=list(estimations), description="model")
    problem_box = widgets.Dropdown(description="target")
    step = widgets.IntSlider(1, 1, 1, description="iteration")
    play = widgets.Play(min=1, max=1, interval=200)
    widgets.jslink((play, "value"), (step, "value"))
    out = widgets.Output()

    def draw(_: object = None) -> None:
        show(out, annealing_plotly(estimations[model_box.value], problem_box.value, step.value, class_names, pi))

    def new_problem(_: object = None) -> None:
        last = max(1, int(estimations[model_box.value].iterations[problem_box.value]))
        step.max = play.max = last
        step.step = play.step = max(1, last // 100)
        step.value = last
        draw()

    def new_model(_: object = None) -> None:
        labels, _ = problem_labels(estimations[model_box.value], class_names)
        problem_box.options = [(label, p) for p, label in enumerate(labels)]
        problem_box.value = 0  # may redraw once more: harmless
        new_problem()

    model_box.observe(new_model, names="value")
    problem_box.observe(new_problem, names="value")
    step.observe(draw, names="value")
    new_model()
    return widgets.VBox([widgets.HBox([model_box, problem_box]), widgets.HBox([play, step]), out])


def detection_view(results: Mapping[str, DetectionResult], class_names: Sequence[str],
                   truths: Mapping[str, str] | None = None) -> widgets.VBox:
    """Pick a classifier (and so a detector run); see r_t with the fitted Gamma null, the p-value and the
    inferred target, beside the truth (`truths[name]`, free text such as "target 9, sources [0]")."""
    box = widgets.Dropdown(options=list(results), description="run")
    caption = widgets.HTML()
    out = widgets.Output()

    def draw(_: object = None) -> None:
        result = results[box.value]
        truth = (truths or {}).get(box.value, "unknown")
        caption.value = (f"inferred target <b>{class_names[result.inferred_target]}</b>, main source "
                         f"{class_names[result.inferred_source]}; truth: {truth}")
        show(out, detection_plotly(result, class_names))

    box.observe(draw, names="value")
    draw()
    return widgets.VBox([box, caption, out])
