"""BDMAE widgets: a trigger-score-map explorer and a refinement-step player (ipywidgets + plotly).

They only wire `workbench.viz.bdmae` figures to controls; BDMAE runs on demand and results are memoised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import ipywidgets as widgets
import torch

from workbench.defenses.bdmae import BDMAE, BDMAEResult
from workbench.viz.bdmae import refinement_step_plotly, score_maps_plotly
from workbench.widgets.display import choice, show


def trigger_score_explorer(images: Mapping[str, torch.Tensor], defences: Mapping[str, BDMAE],
                           class_names: Sequence[str], seed: int = 0) -> widgets.VBox:
    """Pick an image set (e.g. "clean" / "triggered"), an image and a model's BDMAE defence; see the image,
    S_i, S_l (initial and refined), S, the restored tokens and the purified image with the predicted labels.

    Args:
        images: named image batches (N, C, H, W) in [0, 1], e.g. {"triggered": x_bd, "clean": x}.
        defences: named BDMAE instances, one per model (black-box: each wraps a QueryModel).
        class_names: names for the labels.
    """
    cache: dict[tuple[str, str, int], BDMAEResult] = {}
    set_box = choice(list(images), "images")
    model_box = choice(list(defences), "model")
    index = widgets.IntSlider(0, 0, len(next(iter(images.values()))) - 1, description="image")
    out = widgets.Output()

    def draw(_: object = None) -> None:
        key = (set_box.value, model_box.value, index.value)
        x = images[set_box.value][index.value:index.value + 1]
        if key not in cache:
            cache[key] = defences[model_box.value].purify(x, seed=seed, first_index=index.value)
        show(out, score_maps_plotly(x, cache[key], 0, class_names))

    def new_set(_: object) -> None:
        index.max = len(images[set_box.value]) - 1
        draw()

    set_box.observe(new_set, names="value")
    model_box.observe(draw, names="value")
    index.observe(draw, names="value")
    draw()
    return widgets.VBox([widgets.HBox([set_box, model_box, index]), out])


def refinement_player(result: BDMAEResult, index: int = 0) -> widgets.VBox:
    """Step through the N_r refinement steps of one image: m_r, the label outcome and the score update."""
    kinds = result.refinement.kinds
    if not kinds:
        raise ValueError("this result has no refinement trace (a variant without refinement?)")
    kind = choice([(f"S_{k[0]}", k) for k in kinds], "score", buttons=True)
    steps = result.refinement.of(kinds[0]).steps
    step = widgets.IntSlider(0, 0, steps - 1, description="step")
    play = widgets.Play(min=0, max=steps - 1, interval=800)
    widgets.jslink((play, "value"), (step, "value"))
    out = widgets.Output()

    def draw(_: object = None) -> None:
        show(out, refinement_step_plotly(result, index, kind.value, step.value))

    kind.observe(draw, names="value")
    step.observe(draw, names="value")
    draw()
    return widgets.VBox([widgets.HBox([kind, play, step]), out])
