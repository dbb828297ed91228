"""Trap and Replace widgets: a stem-feature PCA scatter explorer and a reconstruction viewer (ipywidgets + plotly).

They only wire `workbench.viz.trap_replace` figures to controls; scatters and reconstructions are computed
beforehand (`TRTables.scatters`, `TrapNet.forward_both`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import ipywidgets as widgets
import torch

from workbench.core.validation import WorkbenchError
from workbench.defenses.trap_replace import ScatterComparison
from workbench.viz.trap_replace import feature_scatter_plotly, reconstruction_plotly
from workbench.widgets.display import choice, show


def feature_scatter_explorer(comparisons: Sequence[ScatterComparison]) -> widgets.VBox:
    """Pick an attack and a source class; see the stem features of clean target, clean source and poisoned source
    samples side by side for the models trained without and with the reconstruction head (Fig. 2).

    Args:
        comparisons: one `ScatterComparison` per attack (`TRTables.scatters`), all of the same dataset.
    """
    by_attack = {comparison.attack: comparison for comparison in comparisons}
    if not by_attack:
        raise WorkbenchError("comparisons: give at least one ScatterComparison (TRTables.scatters(attack))")

    def source_options(attack: str) -> list[tuple[str, int]]:
        comparison = by_attack[attack]
        return [(comparison.class_names[s], s) for s in comparison.sources]

    attack_box = choice(list(by_attack), "attack")
    source_box = choice(source_options(attack_box.value), "source")
    out = widgets.Output()
    resetting = False  # while a new attack resets the source choice, draw once at the end

    def draw(_: object = None) -> None:
        if resetting:
            return
        comparison, source = by_attack[attack_box.value], source_box.value
        show(out, feature_scatter_plotly({"without reconstruction": comparison.without[source],
                                          "with reconstruction": comparison.with_reconstruction[source]},
                                         comparison.group_labels(source)))

    def new_attack(_: object = None) -> None:
        nonlocal resetting
        options = source_options(attack_box.value)
        kept = source_box.value if source_box.value in dict(options).values() else options[0][1]
        resetting = True
        try:
            source_box.options = options  # resets the value to the first option
            source_box.value = kept
        finally:
            resetting = False
        draw()

    attack_box.observe(new_attack, names="value")
    source_box.observe(draw, names="value")
    draw()
    return widgets.VBox([widgets.HBox([attack_box, source_box]), out])


def reconstruction_viewer(originals: Mapping[str, torch.Tensor],
                          reconstructions: Mapping[float, Mapping[str, torch.Tensor]]) -> widgets.VBox:
    """Pick lambda1 and an image; see the clean and poisoned originals beside their reconstructions (Fig. 4).

    Args:
        originals: input kind (e.g. "clean", "l2-Invisible") -> images (N, C, H, W) in [0, 1].
        reconstructions: lambda1 -> input kind -> reconstructions of those images by that model.
    """
    lam_box = choice(sorted(reconstructions), "lambda1")
    count = min(len(images) for images in originals.values())
    index = widgets.IntSlider(0, 0, count - 1, description="image")
    out = widgets.Output()

    def draw(_: object = None) -> None:
        rows = list(originals)
        recon = reconstructions[lam_box.value]
        show(out, reconstruction_plotly([originals[r][index.value] for r in rows],
                                        [recon[r][index.value] for r in rows], rows,
                                        f"reconstruction head trained with lambda1 = {lam_box.value:g}"))

    lam_box.observe(draw, names="value")
    index.observe(draw, names="value")
    draw()
    return widgets.VBox([widgets.HBox([lam_box, index]), out])
