"""REStore widgets: a tau -> rho explorer, a recovered-trigger gallery and a purification before / after view
(ipywidgets + plotly / matplotlib).

They only wire `workbench.viz.restore` figures to controls; diagnoses and trigger estimates are computed beforehand,
and the purification view re-applies an element-wise purifier at the chosen strength.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import ipywidgets as widgets
import torch

from workbench.defenses.restore import Diagnosis, Purifier, TriggerEstimate
from workbench.viz.images import image_grid
from workbench.viz.restore import tau_rho_plotly, trigger_plotly
from workbench.widgets.display import choice, show


def tau_rho_explorer(diagnoses: Mapping[tuple[str, str, str], Diagnosis], class_names: Sequence[str],
                     backdoored: Mapping[str, int | None] | None = None) -> widgets.VBox:
    """Switch between models (e.g. a backdoored one and its benign twin), IS setups (PI / FI / PG) and scorer outputs
    (logits / probits / labels) and see every class's tau -> rho map, the backdoored class highlighted when known.
    A choice with one option is not shown.

    Args:
        diagnoses: keyed by (model name, setup name, scorer output), e.g. {("badnets", "PI", "probits"): diagnosis}.
        backdoored: model name -> its backdoored class (None or absent: unknown or benign).
    """
    models, setups, outputs = ([*dict.fromkeys(key[axis] for key in diagnoses)] for axis in range(3))
    model_box = choice(models, "model", buttons=True)
    setup_box = choice(setups, "setup", buttons=True)
    output_box = choice(outputs, "scorer", buttons=True)
    out = widgets.Output()

    def draw(_: object = None) -> None:
        key = (model_box.value, setup_box.value, output_box.value)
        if key in diagnoses:
            show(out, tau_rho_plotly(diagnoses[key], class_names, (backdoored or {}).get(key[0])))
        else:
            show(out, f"<i>no run of model {key[0]} for setup {key[1]} with the {key[2]} scorer</i>")

    for box in (model_box, setup_box, output_box):
        box.observe(draw, names="value")
    draw()
    return widgets.VBox([model_box, setup_box, output_box, out])


def trigger_gallery(views: Mapping[str, tuple[TriggerEstimate, torch.Tensor, torch.Tensor]]) -> widgets.VBox:
    """Pick a recovered trigger (e.g. one per class, named with its ASR); see a clean image, the image with a
    recovered perturbation, the perturbations' mean effect and their SNR.

    Args:
        views: name -> (trigger estimate, clean image (C, H, W), the same image perturbed (C, H, W)).
    """
    box = choice(list(views), "trigger")
    out = widgets.Output()

    def draw(_: object = None) -> None:
        estimate, clean, stamped = views[box.value]
        show(out, trigger_plotly(estimate, clean, stamped, box.value))

    box.observe(draw, names="value")
    draw()
    return widgets.VBox([box, out])


def purification_view(purifier: Purifier, images: Mapping[str, torch.Tensor],
                      predict: Callable[[torch.Tensor], torch.Tensor], class_names: Sequence[str]) -> widgets.VBox:
    """Move the purification strength and transform; see each image set before and after REStore with the
    model's labels.

    Args:
        purifier: the selected purifier (its weights and mean are kept; strength and transform are the controls).
        images: named batches (N, C, H, W), e.g. {"triggered": x_bd[:6], "clean": x[:6]}.
        predict: images -> labels (the black-box model).
    """
    strength = widgets.FloatSlider(purifier.strength, min=0, max=1, step=0.05, description="strength")
    transform = choice(["subtract", "mask", "gram_schmidt"], "transform", value=purifier.transform, buttons=True)
    out = widgets.Output()

    def draw(_: object = None) -> None:
        current = dataclasses.replace(purifier, strength=strength.value, transform=transform.value)
        rows, titles, captions = [], [], []
        for name, x in images.items():
            for label, batch in ((f"{name}", x), (f"{name}, purified", current(x))):
                rows.append(batch)
                titles.append(label)
                captions.append([class_names[int(c)] for c in predict(batch)])
        show(out, image_grid(rows, titles, captions))

    strength.observe(draw, names="value")
    transform.observe(draw, names="value")
    draw()
    return widgets.VBox([widgets.HBox([strength, transform]), out])
