"""REStore widgets: a tau -> rho explorer, a recovered-trigger gallery and a purification before / after view
(ipywidgets + plotly / matplotlib).

They only wire `workbench.viz.restore` figures to controls; diagnoses and trigger estimates are computed beforehand,
and the purification view re-applies an element-wise purifier at the chosen strength.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch

from workbench.defenses.restore import Diagnosis, Purifier, TriggerEstimate
from workbench.viz.images import image_grid
from workbench.viz.restore import tau_rho_plotly, trigger_plotly
from workbench.widgets.display import show


def tau_rho_explorer(diagnoses: Mapping[tuple[str, str], Diagnosis], class_names: Sequence[str],
                     backdoored: int | None = None) -> widgets.VBox:
    """Switch between IS setups (PI / FI / PG) and scorer outputs (logits / probits / labels) of one model and see
    every class's tau -> rho map, the backdoored class highlighted when known.

    Args:
        diagnoses: keyed by (setup name, scorer output), e.g. {("PI", "probits"): diagnosis}.
    """
    setups = sorted({setup for setup, _ in diagnoses})
    outputs = sorted({output for _, output in diagnoses})
    setup_box = widgets.ToggleButtons(options=setups, description="setup")
    output_box = widgets.ToggleButtons(options=outputs, description="scorer")
    out = widgets.Output()

    def draw(_: object = None) -> None:
        key = (setup_box.value, output_box.value)
        if key in diagnoses:
            show(out, tau_rho_plotly(diagnoses[key], class_names, backdoored))
        else:
            show(out, widgets.HTML(f"<i>no run for setup {key[0]} with the {key[1]} scorer</i>"))

    setup_box.observe(draw, names="value")
    output_box.observe(draw, names="value")
    draw()
    return widgets.VBox([setup_box, output_box, out])


def trigger_gallery(views: Mapping[str, tuple[TriggerEstimate, torch.Tensor, torch.Tensor]]) -> widgets.VBox:
    """Pick a recovered trigger (e.g. one per class, named with its ASR); see a clean image, the image with a
    recovered perturbation, the perturbations' mean effect and their SNR.

    Args:
        views: name -> (trigger estimate, clean image (C, H, W), the same image perturbed (C, H, W)).
    """
    box = widgets.Dropdown(options=list(views), description="trigger")
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
    transform = widgets.ToggleButtons(options=["subtract", "mask", "gram_schmidt"], value=purifier.transform,
                                      description="transform")
    out = widgets.Output()

    def draw(_: object = None) -> None:
        current = dataclasses.replace(purifier, strength=strength.value, transform=transform.value)
        rows, titles, captions = [], [], []
        for name, x in images.items():
            for label, batch in ((f"{name}", x), (f"{name}, purified", current(x))):
                rows.append(batch)
                titles.append(label)
                captions.append([class_names[int(c)] for c in predict(batch)])
        figure = image_grid(rows, titles, captions)
        plt.close(figure)  # shown through the Output widget only
        show(out, figure)

    strength.observe(draw, names="value")
    transform.observe(draw, names="value")
    draw()
    return widgets.VBox([widgets.HBox([strength, transform]), out])
