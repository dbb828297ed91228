"""L-RED widgets: a weight-annealing player and a detection view (ipywidgets + plotly).

They only wire `workbench.viz.lred` figures to controls; the results are computed beforehand.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import ipywidgets as widgets

from workbench.defenses.lred import DetectionResult, EstimationResult
from workbench.viz.lred import annealing_plotly, detection_plotly, problem_labels
from workbench.widgets.display import choice, show


def annealing_player(estimations: Mapping[str, EstimationResult], class_names: Sequence[str],
                     pi: float = 0.9) -> widgets.VBox:
    """Pick a model and a putative target; play its iterations from the first: the weights w_s over source classes,
    the Q_t and T curves so far and the pattern v (latest snapshot; estimate with `snapshot_every` > 0 to see it
    grow)."""
    model_box = choice(list(estimations), "model")
    problem_box = choice(_problem_options(estimations[model_box.value], class_names), "target")
    step = widgets.IntSlider(1, 1, 1, description="iteration")
    play = widgets.Play(min=1, max=1, interval=200)
    widgets.jslink((play, "value"), (step, "value"))
    out = widgets.Output()
    resetting = False  # while a new model or target resets the controls, draw once at the end, not per trait

    def draw(_: object = None) -> None:
        if not resetting:
            show(out, annealing_plotly(estimations[model_box.value], problem_box.value, step.value, class_names, pi))

    def reset(new_model: bool) -> None:
        nonlocal resetting
        resetting = True
        try:
            estimation = estimations[model_box.value]
            if new_model:
                problem_box.options = _problem_options(estimation, class_names)
                problem_box.value = 0
            last = max(1, int(estimation.iterations[problem_box.value]))
            stride = max(1, last // 100)
            first = last - stride * ((last - 1) // stride)  # whole strides from here end on `last`: Play stops there
            for control in (step, play):  # start at the first iteration: Play does nothing from the last one
                with control.hold_trait_notifications():  # min/max are validated together, after both are set
                    control.min, control.max, control.step, control.value = first, last, stride, first
        finally:
            resetting = False
        draw()

    model_box.observe(lambda _: reset(new_model=True), names="value")
    problem_box.observe(lambda _: reset(new_model=False), names="value")
    step.observe(draw, names="value")
    reset(new_model=True)
    return widgets.VBox([widgets.HBox([model_box, problem_box]), widgets.HBox([play, step]), out])


def _problem_options(estimation: EstimationResult, class_names: Sequence[str]) -> list[tuple[str, int]]:
    labels, _ = problem_labels(estimation, class_names)
    return [(label, p) for p, label in enumerate(labels)]


def detection_view(results: Mapping[str, DetectionResult], class_names: Sequence[str],
                   truths: Mapping[str, str] | None = None) -> widgets.VBox:
    """Pick a classifier (and so a detector run); see r_t with the fitted Gamma null, the p-value and the
    inferred target, beside the truth (`truths[name]`, free text such as "target 9, sources [0]")."""
    box = choice(list(results), "run")
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
