"""Numbers transcribed from the papers' tables, for side-by-side comparison (percent, as printed).

Every row of accuracies is a `Published` record (CA, BA, ASR, and T&R's reconstruction MSE; None where the paper
has no number), whatever order the paper prints its columns in: each table below is written in its paper's order
(the `_rows` call names it) and converted, so a transcription can be checked against the paper line by line.
L-RED's tables are numbers too: Table 1's standard deviations in `Published`'s `*_std` fields, Table 2's detection
counts, Table 4's p-values (0.0 for the paper's "u.f.", printed back by `printed_p_value`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple


@dataclass(frozen=True)
class Published:
    """One row of a paper's table: accuracies in percent ([REStore]'s CDA is `ca`, its SDA `ba`), T&R's
    reconstruction MSE; None where the paper gives no number."""

    ca: float | None = None
    ba: float | None = None
    asr: float | None = None
    mse: float | None = None
    ca_std: float | None = None  # [L-RED] Table 1 reports mean ± std over a group's classifiers
    asr_std: float | None = None

    def metric(self, name: str) -> float:
        """The value of column `name` ("CA", "BA", "ASR", "MSE"), NaN where the paper gives none."""
        value = getattr(self, name.lower())
        return math.nan if value is None else value

    def mean_std(self, name: str) -> str:
        """Column `name` ("CA" or "ASR") as "mean ± std" to one decimal, "" where the paper gives none."""
        value, std = getattr(self, name.lower()), getattr(self, f"{name.lower()}_std")
        return "" if value is None else f"{value:.1f} ± {std:.1f}"


def _leaves(make: Callable[[tuple], Any], table: Any) -> Any:
    """`table` (nested dicts) with every tuple leaf replaced by `make(leaf)`."""
    if isinstance(table, dict):
        return {key: _leaves(make, value) for key, value in table.items()}
    return make(table)


def _rows(columns: tuple[str, ...], table: Any) -> Any:
    """`table` with every tuple leaf (the paper's `columns`, in its order) replaced by a `Published` row; NaN cells
    (lost in the extracted text) become None."""
    def row(cells: tuple) -> Published:
        if not isinstance(cells, tuple) or len(cells) != len(columns):
            raise ValueError(f"expected a row of {columns}, got {cells!r}")
        return Published(**{c.lower(): None if v is None or (isinstance(v, float) and math.isnan(v)) else v
                            for c, v in zip(columns, cells, strict=True)})
    return _leaves(row, table)


class BySetup(NamedTuple):
    """[REStore] Tables II, VIII, IX: a recovered trigger's ASR (%) with the partial (PI) and full (FI) setups."""

    pi: float
    fi: float


#: [BDMAE] Table 1 (CIFAR-10 and GTSRB columns): DiffPure with OpenAI's 256 px diffusion model vs BDMAE on 500 test
#: images, BadNet as in Table 2; (CA, BA, ASR) in percent. The extracted text interleaves the two DiffPure rows
#: and splits some decimals ("16" ".2"); read as CA of both rows, then BA and ASR of each (CIFAR-10 certain). The
#: GTSRB DiffPure BA / ASR are our reading of the run "41.0 42.8 44.8 51.9 44.4 52.8" (BA 41.0 / 42.8, ASR 44.8 /
#: 44.4, the remaining two being VGGFace2's CA), consistent with the text's "high ASR of DiffPure".
BDMAE_TABLE1 = _rows(("CA", "BA", "ASR"), {
    "cifar10": {
        "Before defense": (94.0, 1.0, 99.0),
        "DiffPure DDPM": (74.5, 64.5, 16.2), "DiffPure SDE": (75.5, 63.9, 15.6),
        "BDMAE Base": (92.9, 90.3, 0.9), "BDMAE Large": (93.3, 90.3, 0.7),
    },
    "gtsrb": {
        "Before defense": (99.7, 1.1, 98.9),
        "DiffPure DDPM": (74.2, 41.0, 44.8), "DiffPure SDE": (71.7, 42.8, 44.4),
        "BDMAE Base": (99.7, 95.5, 0.7), "BDMAE Large": (99.7, 96.0, 1.1),
    },
})


#: [BDMAE] Table 2 (CIFAR-10 and GTSRB columns): ResNet-18, BadNet 1x1-3x3 white/colour patches, 14 runs each;
#: (CA, BA, ASR) in percent. "Ours Base" / "Ours Large" use the official MAE ViT-Base / ViT-Large.
BDMAE_TABLE2 = _rows(("CA", "BA", "ASR"), {
    "cifar10": {
        "Before defense": (93.3, 0.9, 99.0),
        "Februus XGradCAM": (91.6, 87.0, 7.0), "Februus GradCAM++": (80.0, 91.0, 2.3),
        "PatchCleanser vanilla": (89.9, 43.9, 55.0), "PatchCleanser variant": (57.6, 86.1, 1.9),
        "Blur weak": (91.5, 14.0, 84.9), "Blur strong": (63.6, 60.0, 6.4),
        "ShrinkPad weak": (90.7, 50.3, 45.0), "ShrinkPad strong": (86.7, 36.7, 57.9),
        "BDMAE Base": (92.5, 90.8, 0.9), "BDMAE Large": (92.7, 91.1, 0.8),
    },
    "gtsrb": {
        "Before defense": (98.5, 1.4, 98.6),
        "Februus XGradCAM": (65.4, 50.9, 38.0), "Februus GradCAM++": (59.1, 73.9, 14.6),
        "PatchCleanser vanilla": (95.0, 10.0, 89.7), "PatchCleanser variant": (13.3, 80.8, 1.5),
        "Blur weak": (98.4, 3.9, 96.0), "Blur strong": (97.7, 94.9, 1.8),
        "ShrinkPad weak": (97.5, 33.3, 65.0), "ShrinkPad strong": (92.8, 23.5, 72.3),
        "BDMAE Base": (98.2, 95.3, 0.9), "BDMAE Large": (98.4, 96.0, 0.9),
    },
})

#: [BDMAE] Table 2's "Before Defense" row (ResNet-18 trained from scratch, aggregated over 14 runs), as the quickstart
#: compares it.
BDMAE_TABLE2_BEFORE_DEFENSE = {dataset: rows["Before defense"] for dataset, rows in BDMAE_TABLE2.items()}

#: [BDMAE] Table 3 (CIFAR-10 and GTSRB columns; the paper has Blended results only for VGGFace2 and ImageNet10):
#: (CA, BA, ASR) in percent.
BDMAE_TABLE3 = _rows(("CA", "BA", "ASR"), {
    ("cifar10", "IAB"): {
        "Before defense": (93.4, 1.6, 98.4),
        "Februus XGradCAM": (91.7, 29.9, 68.1), "Februus GradCAM++": (77.9, 55.8, 35.9),
        "PatchCleanser vanilla": (88.6, 25.6, 73.8), "PatchCleanser variant": (62.2, 66.7, 26.3),
        "Blur weak": (91.3, 33.9, 63.7), "Blur strong": (63.0, 53.1, 8.4),
        "ShrinkPad weak": (91.2, 64.5, 28.8), "ShrinkPad strong": (88.5, 80.6, 7.1),
        "BDMAE Base": (93.0, 81.8, 10.5), "BDMAE Large": (93.1, 80.0, 13.0),
    },
    ("gtsrb", "IAB"): {
        "Before defense": (98.0, 1.2, 98.7),
        "Februus XGradCAM": (68.4, 72.5, 24.8), "Februus GradCAM++": (49.8, 84.1, 12.2),
        "PatchCleanser vanilla": (84.2, 13.9, 83.0), "PatchCleanser variant": (16.6, 83.0, 6.7),
        "Blur weak": (97.8, 18.6, 81.2), "Blur strong": (96.8, 47.7, 50.7),
        "ShrinkPad weak": (97.1, 43.7, 55.1), "ShrinkPad strong": (93.1, 62.2, 32.5),
        "BDMAE Base": (97.8, 76.2, 21.4), "BDMAE Large": (98.0, 70.6, 27.4),
    },
    ("cifar10", "LC"): {
        "Before defense": (94.5, 0.5, 99.5),
        "Februus XGradCAM": (92.6, 63.7, 33.9), "Februus GradCAM++": (83.3, 85.7, 10.4),
        "PatchCleanser vanilla": (90.3, 0.4, 99.6), "PatchCleanser variant": (56.5, 4.7, 95.3),
        "Blur weak": (92.5, 92.3, 0.7), "Blur strong": (56.8, 56.1, 2.5),
        "ShrinkPad weak": (92.4, 1.4, 98.6), "ShrinkPad strong": (89.7, 85.1, 6.1),
        "BDMAE Base": (93.7, 94.1, 0.4), "BDMAE Large": (93.9, 94.3, 0.4),
    },
    ("gtsrb", "LC"): {
        "Before defense": (95.8, 5.3, 94.7),
        "Februus XGradCAM": (80.6, 91.7, 5.1), "Februus GradCAM++": (72.5, 91.7, 5.1),
        "PatchCleanser vanilla": (87.8, 0.1, 99.9), "PatchCleanser variant": (9.8, 6.0, 94.0),
        "Blur weak": (95.5, 95.1, 1.2), "Blur strong": (93.7, 93.6, 0.7),
        "ShrinkPad weak": (93.6, 5.9, 94.1), "ShrinkPad strong": (81.8, 68.0, 23.1),
        "BDMAE Base": (93.9, 93.6, 2.3), "BDMAE Large": (94.8, 93.5, 2.4),
    },
})

#: [BDMAE] Table A.2, clean models: (CA, BA) in percent. GTSRB's "before defence" CA lost its decimals in the text
#: we have, so only CIFAR-10 is transcribed.
BDMAE_TABLE_A2 = _rows(("CA", "BA"), {
    "cifar10": {"Before defense": (93.8, 93.7), "BDMAE Base": (93.1, 93.1), "BDMAE Large": (93.3, 93.2)},
})

#: [BDMAE] Tables A.3 (CIFAR-10) and A.4 (GTSRB), per trigger: (CA, BA, ASR) in percent, for the rows the workbench
#: runs at every scale. A.4's Base-i / Base-l rows repeat Februus rows in the paper (a copy error), so they are
#: left out; A.3's are kept.
BDMAE_TABLE_A3_A4 = _rows(("CA", "BA", "ASR"), {
    "cifar10": {
        "Before defense": {"1x1-color": (93.7, 0.1, 99.9), "1x1-white": (92.9, 2.3, 97.5),
                           "2x2-color": (93.2, 0.0, 100.0), "2x2-white": (93.1, 2.8, 97.1),
                           "3x3-color": (93.7, 0.0, 100.0), "3x3-white": (93.4, 0.5, 99.5)},
        "Blur weak": {"1x1-color": (92.0, 0.5, 99.4), "1x1-white": (90.9, 6.8, 92.7),
                      "2x2-color": (91.5, 0.3, 99.7), "2x2-white": (91.2, 7.3, 92.3),
                      "3x3-color": (92.1, 0.1, 99.9), "3x3-white": (91.6, 68.8, 25.2)},
        "Blur strong": {"1x1-color": (65.6, 65.0, 3.5), "1x1-white": (61.5, 59.9, 5.6),
                        "2x2-color": (63.8, 62.6, 3.4), "2x2-white": (63.3, 54.0, 14.8),
                        "3x3-color": (64.9, 60.1, 6.7), "3x3-white": (62.4, 58.6, 4.4)},
        "ShrinkPad weak": {"1x1-color": (91.5, 44.7, 51.3), "1x1-white": (89.6, 53.3, 42.6),
                           "2x2-color": (89.6, 6.3, 93.2), "2x2-white": (90.8, 82.2, 9.6),
                           "3x3-color": (91.5, 28.3, 70.1), "3x3-white": (91.1, 86.9, 3.1)},
        "ShrinkPad strong": {"1x1-color": (88.3, 32.1, 64.5), "1x1-white": (85.0, 9.8, 87.5),
                             "2x2-color": (83.5, 2.4, 97.4), "2x2-white": (87.2, 82.0, 6.4),
                             "3x3-color": (88.4, 11.0, 88.3), "3x3-white": (87.7, 83.1, 3.2)},
        "BDMAE Base": {"1x1-color": (93.0, 90.7, 0.6), "1x1-white": (91.8, 90.3, 1.5),
                       "2x2-color": (92.5, 91.5, 0.5), "2x2-white": (92.3, 90.0, 1.5),
                       "3x3-color": (92.9, 92.1, 0.5), "3x3-white": (92.6, 90.5, 0.8)},
        "BDMAE Base-i": {"1x1-color": (92.5, 73.4, 20.0), "1x1-white": (91.4, 86.4, 6.4),
                         "2x2-color": (92.1, 91.0, 1.1), "2x2-white": (91.8, 84.2, 8.4),
                         "3x3-color": (92.4, 90.1, 2.9), "3x3-white": (92.0, 84.1, 8.1)},
        "BDMAE Base-l": {"1x1-color": (92.1, 91.0, 0.5), "1x1-white": (90.6, 90.4, 1.4),
                         "2x2-color": (91.6, 91.4, 0.9), "2x2-white": (91.1, 90.1, 1.5),
                         "3x3-color": (92.1, 91.0, 1.7), "3x3-white": (91.5, 90.2, 0.8)},
    },
    "gtsrb": {
        "Before defense": {"1x1-color": (98.7, 0.0, 100.0), "1x1-white": (98.0, 2.3, 97.5),
                           "2x2-color": (98.3, 0.0, 100.0), "2x2-white": (98.5, 4.4, 95.5),
                           "3x3-color": (98.8, 0.0, 100.0), "3x3-white": (98.4, 1.4, 98.5)},
        "Blur weak": {"1x1-color": (98.6, 3.0, 96.9), "1x1-white": (98.0, 9.4, 90.3),
                      "2x2-color": (98.2, 0.1, 99.9), "2x2-white": (98.5, 6.6, 93.3),
                      "3x3-color": (98.6, 0.2, 99.8), "3x3-white": (98.3, 4.1, 95.6)},
        "Blur strong": {"1x1-color": (97.9, 97.3, 0.2), "1x1-white": (97.3, 97.3, 0.1),
                        "2x2-color": (97.6, 96.8, 0.9), "2x2-white": (97.7, 94.5, 3.1),
                        "3x3-color": (98.0, 96.1, 1.8), "3x3-white": (97.8, 87.3, 4.6)},
        "ShrinkPad weak": {"1x1-color": (98.0, 40.4, 57.9), "1x1-white": (96.9, 25.0, 74.6),
                           "2x2-color": (96.7, 3.2, 96.7), "2x2-white": (97.8, 58.9, 39.8),
                           "3x3-color": (98.0, 12.9, 87.0), "3x3-white": (97.8, 59.4, 34.4)},
        "ShrinkPad strong": {"1x1-color": (94.1, 27.7, 69.4), "1x1-white": (91.0, 5.1, 94.2),
                             "2x2-color": (91.8, 2.2, 97.8), "2x2-white": (92.9, 32.8, 64.5),
                             "3x3-color": (93.7, 10.4, 89.0), "3x3-white": (93.3, 62.9, 18.6)},
        "BDMAE Base": {"1x1-color": (98.5, 92.4, 0.2), "1x1-white": (97.6, 95.9, 1.0),
                       "2x2-color": (98.0, 97.8, 0.1), "2x2-white": (98.3, 96.5, 1.3),
                       "3x3-color": (98.6, 98.3, 0.1), "3x3-white": (98.1, 91.0, 2.8)},
    },
})

#: [L-RED] Table 1: ASR and CTA (%, mean ± std over 10 ResNet-18 classifiers per group);
#: the clean group C-0 has CTA 93.8 ± 0.1 (Sec. 4.2).
LRED_TABLE1 = _rows(("ASR", "ASR_std", "CA", "CA_std"), {
    "G-1": (92.1, 1.9, 93.6, 0.2), "G-3": (94.1, 1.1, 93.5, 0.2), "G-9": (96.6, 0.3, 93.5, 0.2),
    "L-1": (93.1, 1.6, 93.7, 0.1), "L-3": (91.1, 0.8, 93.6, 0.2), "L-9": (91.9, 0.7, 93.6, 0.2),
    "C-0": (None, None, 93.8, 0.1),
})

#: [L-RED] Table 2: successful detections out of `LRED_CLASSIFIERS_PER_GROUP` classifiers per group.
LRED_CLASSIFIERS_PER_GROUP = 10
LRED_TABLE2 = {
    "RED-P": {"G-1": 5, "G-3": 9, "G-9": 7, "L-1": 2, "L-3": 3, "L-9": 3, "C-0": 7},
    "RED-U": {"G-1": 2, "G-3": 8, "G-9": 10, "L-1": 2, "L-3": 5, "L-9": 10, "C-0": 10},
    "RED-A": {g: 10 for g in ("G-1", "G-3", "G-9", "L-1", "L-3", "L-9", "C-0")},
    "RED-A'": {"G-1": 9, "G-3": 10, "G-9": 10, "L-1": 9, "L-3": 8, "L-9": 10, "C-0": 9},
}

#: [L-RED] Table 3: mean seconds per classifier on an RTX 2080 Ti (RED-U "similar to RED-A", not printed).
LRED_TABLE3 = {
    "RED-P": {"G-1": 480, "G-3": 473, "G-9": 531, "L-1": 478, "L-3": 479, "L-9": 394, "C-0": 541},
    "RED-A": {"G-1": 562, "G-3": 615, "G-9": 636, "L-1": 529, "L-3": 482, "L-9": 536, "C-0": 535},
    "RED-A'": {"G-1": 136, "G-3": 161, "G-9": 167, "L-1": 129, "L-3": 169, "L-9": 163, "C-0": 157},
}

#: [L-RED] Table 4: order-statistic p-values of RED-A; 0.0 where the paper prints "u.f." (underflow).
LRED_TABLE4 = {"attacked": {"mnist": 0.0, "fashion-mnist": 8.44e-07, "gtsrb": 3.41e-09, "cifar100": 0.0},
               "clean": {"mnist": 0.300, "fashion-mnist": 0.331, "gtsrb": 0.152, "cifar100": 0.551}}

#: [L-RED] Table 6: ASR / CTA (%) of Table 4's attacked classifiers, and the CTA of their clean twins.
LRED_TABLE6 = _rows(("ASR", "CA"), {"mnist": (96.3, 98.9), "fashion-mnist": (91.7, 91.0), "gtsrb": (87.8, 98.1),
                                    "cifar100": (98.0, 72.4)})
LRED_TABLE6_CLEAN = _rows(("CA",), {"mnist": (99.1,), "fashion-mnist": (90.8,), "gtsrb": (98.7,),
                                    "cifar100": (72.8,)})


def printed_p_value(p: float) -> str:
    """A p-value as [L-RED] Table 4 prints it: "u.f." for an underflow (0.0), three significant digits in
    scientific notation below 0.001, else three decimals."""
    if p == 0:
        return "u.f."
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3f}"


# --- [REStore]; MNIST and CIFAR-10 rows (CASIA-Webface is not obtainable here) ----------------------------------

#: [REStore] Table I: CDA / ASR (%) of the paper's models; target class 3, poisoning ratio 5 %.
RESTORE_TABLE1 = _rows(("CA", "ASR"), {
    ("mnist", "lenet5"): {"benign": (99.1, None), "badnets": (99.1, 100.0), "sig": (99.1, 100.0),
                          "wanet": (98.9, 90.4)},
    ("mnist", "resnet18"): {"benign": (99.5, None), "badnets": (99.5, 100.0), "sig": (99.4, 100.0),
                            "wanet": (99.3, 96.9)},
    ("cifar10", "resnet18"): {"benign": (93.3, None), "badnets": (92.7, 100.0), "sig": (93.0, 100.0),
                              "wanet": (94.0, 94.3)},
})

#: [REStore] Tables II (probits), VIII (logits) and IX (hard labels): recovered triggers' ASR (%) on the backdoored
#: class, setups PI / FI.
RESTORE_RECOVERED_ASR = _leaves(BySetup._make, {
    "probits": {
        ("mnist", "lenet5"): {"badnets": (99.9, 74.5), "sig": (100.0, 97.9), "wanet": (11.2, 34.0)},
        ("mnist", "resnet18"): {"badnets": (100.0, 3.19), "sig": (100.0, 100.0), "wanet": (66.1, 9.5)},
        ("cifar10", "resnet18"): {"badnets": (65.7, 4.4), "sig": (51.5, 3.8), "wanet": (14.1, 19.5)},
    },
    "logits": {
        ("mnist", "lenet5"): {"badnets": (100.0, 98.85), "sig": (100.0, 99.81), "wanet": (5.7, 30.9)},
        ("mnist", "resnet18"): {"badnets": (100.0, 3.4), "sig": (100.0, 100.0), "wanet": (62.1, 18.4)},
        ("cifar10", "resnet18"): {"badnets": (72.8, 4.9), "sig": (55.7, 3.2), "wanet": (13.3, 21.4)},
    },
    "labels": {
        ("mnist", "lenet5"): {"badnets": (97.0, 1.1), "sig": (97.5, 89.8), "wanet": (0.0, 24.5)},
        ("mnist", "resnet18"): {"badnets": (94.8, 0.0), "sig": (100.0, 100.0), "wanet": (65.7, 1.7)},
        ("cifar10", "resnet18"): {"badnets": (63.0, 3.0), "sig": (41.0, 2.2), "wanet": (11.2, 15.0)},
    },
})

#: [REStore] Table III: (CDA, SDA, ASR) in % per defence; Februus at mask 0.8, REStore per scorer output.
RESTORE_TABLE3 = _rows(("CA", "BA", "ASR"), {
    ("mnist", "lenet5", "badnets"): {
        "Februus XGradCAM": (95.0, 1.5, 98.5), "Februus GradCAM++": (96.0, 52.0, 47.4),
        "BDMAE base": (98.1, 98.3, 0.2), "BDMAE large": (98.4, 97.9, 0.2),
        "REStore logits": (99.1, 90.3, 9.1), "REStore probits": (98.9, 84.9, 14.5),
        "REStore labels": (98.6, 70.8, 28.7)},
    ("mnist", "lenet5", "sig"): {
        "Februus XGradCAM": (90.6, 0.0, 100.0), "Februus GradCAM++": (93.2, 0.0, 100.0),
        "BDMAE base": (98.3, 0.0, 100.0), "BDMAE large": (98.5, 0.0, 100.0),
        "REStore logits": (98.9, 95.2, 2.7), "REStore probits": (98.6, 96.5, 0.8), "REStore labels": (98.4, 94.9, 2.4)},
    ("mnist", "lenet5", "wanet"): {
        "Februus XGradCAM": (83.1, 7.3, 92.0), "Februus GradCAM++": (89.0, 9.3, 90.3),
        "BDMAE base": (77.8, 8.9, 91.0), "BDMAE large": (92.3, 11.6, 88.2),
        "REStore logits": (98.6, 50.9, 47.9), "REStore probits": (98.9, 64.7, 34.3),
        "REStore labels": (97.9, 97.3, 0.2)},
    ("cifar10", "resnet18", "badnets"): {
        "Februus XGradCAM": (89.9, 0.1, 99.9), "Februus GradCAM++": (90.0, 42.6, 56.3),
        "BDMAE base": (92.2, 92.6, 1.3), "BDMAE large": (92.8, 93.1, 1.4),
        "REStore logits": (92.7, 90.9, 4.2), "REStore probits": (93.2, 79.4, 17.8),
        "REStore labels": (78.9, 42.0, 55.1)},
    ("cifar10", "resnet18", "sig"): {
        "Februus XGradCAM": (90.5, 1.8, 98.1), "Februus GradCAM++": (91.8, 1.4, 98.5),
        "BDMAE base": (92.5, 1.1, 98.9), "BDMAE large": (92.6, 1.1, 98.9),
        "REStore logits": (89.4, 1.0, 98.9), "REStore probits": (81.9, 1.8, 98.0), "REStore labels": (91.7, 1.0, 98.9)},
    ("cifar10", "resnet18", "wanet"): {
        "Februus XGradCAM": (92.4, 20.4, 78.5), "Februus GradCAM++": (89.2, 27.2, 71.5),
        "BDMAE base": (94.1, 78.2, 18.2), "BDMAE large": (94.0, 79.7, 16.0),
        "REStore logits": (89.4, 86.3, 4.4), "REStore probits": (91.1, 89.1, 3.9), "REStore labels": (88.0, 85.5, 4.5)},
})


def _table4_rows(februus: float, bdmae_base: float, bdmae_large: float, restore: float) -> dict[str, float]:
    """Table IV prints one time for Februus (either CAM) and one for REStore (any scorer); they are repeated here
    under Table III's row names, so that both tables read their paper rows the same way."""
    return {"Februus XGradCAM": februus, "Februus GradCAM++": februus, "BDMAE base": bdmae_base,
            "BDMAE large": bdmae_large, **{f"REStore {output}": restore for output in ("logits", "probits", "labels")}}


#: [REStore] Table IV: seconds per image of each defence (V100 GPU).
RESTORE_TABLE4 = {
    ("mnist", "lenet5"): _table4_rows(0.03, 0.16, 0.38, 0.00003),
    ("mnist", "resnet18"): _table4_rows(0.04, 0.16, 0.39, 0.00008),
    ("cifar10", "resnet18"): _table4_rows(0.04, 0.17, 0.39, 0.0002),
}

#: [REStore] Tables XIV-XVI (CIFAR-10 ResNet-18, adaptive attacks): model CDA / ASR, the recovered triggers' ASR (PI,
#: logits scorer; mean over classes when every class is backdoored) and (CDA, SDA, ASR) after each defence.
RESTORE_ADAPTIVE = {
    "all_classes": {"model": Published(ca=93.9, asr=99.9), "recovered ASR": 93.7,
                    "defences": _rows(("CA", "BA", "ASR"), {
                                 "Februus XGradCAM": (92.0, 20.5, 8.3), "Februus GradCAM++": (79.8, 19.0, 8.7),
                                 "BDMAE base": (93.4, 91.2, 1.3), "BDMAE large": (93.3, 92.0, 1.0),
                                 "REStore logits": (73.4, 64.8, 12.0)})},
    "logit_obfuscation": {"model": Published(ca=93.5, asr=91.2), "recovered ASR": 82.5,
                          "defences": _rows(("CA", "BA", "ASR"), {
                                       "Februus XGradCAM": (89.3, 52.9, 43.7), "Februus GradCAM++": (88.6, 76.6, 19.5),
                                       "BDMAE base": (92.5, 85.5, 7.4), "BDMAE large": (92.6, 85.2, 6.6),
                                       "REStore logits": (82.6, 77.7, 17.7)})},
}

#: [REStore] App. G: the alpha_def (sparsity ratio halving CDA) the paper found.
RESTORE_ALPHA_DEF = {("mnist", "lenet5"): 0.28, ("mnist", "resnet18"): 0.27, ("cifar10", "resnet18"): 0.07}


# --- Trap and Replace ([T&R]) ----------------------------------------------------------------------------------------

#: T&R's defences in its table order
TR_DEFENCES = ("No defense", "NAD", "ANP", "ABL", "I-BAU", "T&R")


def _pairs(flat: tuple[float, ...]) -> dict[str, Published]:
    """One attack's row of Tables 1-2: (ASR, CA) of each defence of `TR_DEFENCES`, in the paper's order."""
    return {d: Published(asr=flat[2 * i], ca=flat[2 * i + 1]) for i, d in enumerate(TR_DEFENCES)}


#: [T&R] Table 1 (CIFAR-10, WRN-16-1): attack -> defence -> (ASR, CA) in percent ("Ours" is "T&R").
TR_TABLE1 = {
    "BadNet-Grid": _pairs((99.98, 88.36, 8.60, 80.23, 2.64, 84.55, 3.20, 86.35, 8.24, 81.34, 1.21, 84.42)),
    "BadNet-White": _pairs((96.91, 88.87, 12.80, 79.68, 3.68, 85.74, 9.32, 80.32, 8.80, 86.17, 3.14, 83.96)),
    "Blend": _pairs((99.11, 88.95, 10.56, 81.89, 5.62, 82.35, 19.91, 80.63, 12.27, 75.18, 10.59, 83.82)),
    "l0-Invisible": _pairs((99.93, 89.36, 30.25, 76.84, 15.76, 72.5, 16.76, 76.73, 9.21, 81.15, 2.91, 84.04)),
    "l2-Invisible": _pairs((100.00, 89.28, 10.06, 75.63, 22.97, 70.52, 7.49, 76.82, 2.64, 82.48, 0.74, 84.01)),
    "Smooth": _pairs((98.14, 89.24, 15.68, 79.10, 33.42, 77.49, 20.21, 70.79, 24.80, 67.93, 4.23, 83.63)),
    "Trojan-SQ": _pairs((98.23, 89.64, 12.52, 80.56, 23.84, 72.06, 3.16, 80.44, 16.61, 83.27, 6.54, 79.92)),
    "Trojan-WM": _pairs((99.61, 89.48, 33.64, 79.60, 18.04, 75.66, 7.31, 84.89, 4.55, 85.30, 12.66, 79.97)),
    "SIG": _pairs((99.93, 89.27, 3.20, 75.24, 0.05, 85.67, 8.79, 60.07, 1.89, 77.05, 0.02, 82.97)),
    "LCBA": _pairs((90.42, 86.35, 10.64, 77.82, 1.02, 84.21, 6.54, 78.56, 8.88, 78.05, 5.41, 82.57)),
}

#: [T&R] Table 2 (GTSRB, WRN-16-1; LCBA omitted as in the paper): attack -> defence -> (ASR, CA).
TR_TABLE2 = {
    "BadNet-Grid": _pairs((100, 96.36, 1.62, 93.56, 8.97, 95.44, 4.11, 95.52, 5.56, 95.36, 0.20, 95.94)),
    "BadNet-White": _pairs((96.32, 96.11, 0.96, 90.61, 12.68, 92.06, 0.00, 95.14, 6.63, 95.55, 0.01, 95.74)),
    "Blend": _pairs((99.95, 96.50, 5.64, 91.26, 20.36, 90.53, 4.94, 92.61, 0.00, 82.03, 1.98, 95.62)),
    "l0-Invisible": _pairs((100, 95.50, 25.60, 91.35, 34.96, 88.54, 0.60, 96.39, 4.73, 94.31, 1.32, 95.87)),
    "l2-Invisible": _pairs((99.93, 96.81, 12.43, 72.69, 24.83, 90.41, 100, 94.74, 9.83, 94.60, 0.03, 96.10)),
    "Smooth": _pairs((100, 96.58, 33.20, 75.74, 37.95, 82.56, 32.24, 76.70, 2.68, 94.74, 0.11, 96.12)),
    "Trojan-SQ": _pairs((97.75, 96.53, 1.52, 90.56, 12.06, 90.74, 0.45, 95.88, 5.71, 94.49, 1.47, 95.17)),
    "Trojan-WM": _pairs((100, 96.68, 1.58, 92.26, 25.68, 88.64, 0.55, 95.41, 7.47, 95.30, 7.06, 91.95)),
    "SIG": _pairs((87.51, 96.32, 50.68, 88.56, 20.60, 82.34, 66.80, 96.50, 10.04, 94.53, 0.54, 94.56)),
}

#: [T&R] Table 4 (ablation, CIFAR-10): variant -> attack -> (ASR, CA); "T&R" is the mean of three seeds.
TR_TABLE4 = _rows(("ASR", "CA"), {
    "no reconstruction, replace head": {"l2-Invisible": (99.99, 85.08), "Trojan-WM": (51.87, 84.26),
                                        "SIG": (26.96, 84.03), "LCBA": (45.81, 84.31)},
    "reconstruction, keep head": {"l2-Invisible": (99.96, 89.06), "Trojan-WM": (99.81, 88.50),
                                  "SIG": (97.24, 81.10), "LCBA": (92.46, 81.22)},
    "T&R": {"l2-Invisible": (0.72, 83.72), "Trojan-WM": (12.01, 80.01), "SIG": (0.01, 82.99),
            "LCBA": (5.37, 82.47)},
})

#: [T&R] Table 5 (split layer, CIFAR-10): (conv layers in f_s, layers in f_c) -> attack -> (ASR, CA). The workbench
#: names these splits "final" (13/1), "block3_1" (11/3, the default) and "block3_0" (9/5).
TR_TABLE5 = _rows(("ASR", "CA"), {
    "final": {"Blend": (97.41, 88.04), "l2-Invisible": (99.99, 87.93), "Smooth": (96.02, 87.60),
              "Trojan-WM": (99.63, 87.52)},
    "block3_1": {"Blend": (10.59, 83.82), "l2-Invisible": (0.74, 84.01), "Smooth": (4.23, 83.63),
                 "Trojan-WM": (12.66, 79.97)},
    "block3_0": {"Blend": (3.01, 74.99), "l2-Invisible": (0.37, 73.50), "Smooth": (4.17, 73.96),
                 "Trojan-WM": (13.83, 77.36)},
})

#: [T&R] Table 6 (poison ratio, CIFAR-10): (ratio, defence) -> attack -> (ASR, CA).
TR_TABLE6 = _rows(("ASR", "CA"), {
    (0.05, "T&R"): {"Blend": (9.57, 83.52), "l2-Invisible": (0.54, 84.21), "Smooth": (2.04, 83.96),
                    "Trojan-WM": (7.61, 80.12)},
    (0.05, "I-BAU"): {"Blend": (10.16, 81.96), "l2-Invisible": (1.68, 81.04), "Smooth": (8.58, 80.92),
                      "Trojan-WM": (5.34, 82.69)},
    (0.1, "T&R"): {"Blend": (10.59, 83.82), "l2-Invisible": (0.74, 84.01), "Smooth": (4.23, 83.63),
                   "Trojan-WM": (12.66, 79.97)},
    (0.1, "I-BAU"): {"Blend": (12.27, 75.18), "l2-Invisible": (2.64, 82.48), "Smooth": (24.80, 67.93),
                     "Trojan-WM": (4.55, 85.30)},
    (0.2, "T&R"): {"Blend": (8.74, 82.15), "l2-Invisible": (0.84, 84.25), "Smooth": (3.51, 82.96),
                   "Trojan-WM": (14.28, 79.84)},
    (0.2, "I-BAU"): {"Blend": (15.57, 81.06), "l2-Invisible": (4.38, 83.06), "Smooth": (16.69, 80.44),
                     "Trojan-WM": (6.94, 83.33)},
})

#: [T&R] Table 7 (App. C.1, CIFAR-10): the adaptive Latent Backdoor Attack LBA-n -> (ASR, CA). The extracted text
#: keeps the "T&R" row's CA only for LBA-14 and LBA-10 (84.52, 85.43); its ASR cells and LBA-12 are missing (NaN).
TR_TABLE7 = _rows(("ASR", "CA"), {
    "no reconstruction, replace head": {"LBA-14": (93.64, 82.06), "LBA-12": (90.62, 84.12), "LBA-10": (84.65, 83.49)},
    "T&R": {"LBA-14": (math.nan, 84.52), "LBA-10": (math.nan, 85.43)},
})

#: [T&R] Table 8 (l2-Invisible, CIFAR-10): (lambda1, lambda2) -> (ASR, CA, reconstruction MSE). The ASR cell of
#: lambda1 = 10 is blank in our copy of the paper; that setting is the default, whose ASR elsewhere is 0.74.
TR_TABLE8 = _rows(("ASR", "CA", "MSE"), {
    (0.0, 0.1): (99.99, 85.08, None), (1.0, 0.1): (53.77, 83.70, 0.0145), (10.0, 0.1): (0.74, 84.01, 0.0085),
    (20.0, 0.1): (1.04, 81.37, 0.0071), (10.0, 0.0): (3.32, 82.46, 0.0097), (10.0, 1.0): (0.28, 83.51, 0.0091),
})

#: [T&R] Table 9 (l2-Invisible, CIFAR-10): holdout size -> (ASR, CA).
TR_TABLE9 = _rows(("ASR", "CA"), {250: (0.77, 72.00), 500: (0.56, 76.99), 1250: (0.41, 83.31), 2500: (0.74, 84.01)})

#: [T&R] Table 10 (clean CIFAR-10 training set): defence -> CA.
TR_TABLE10 = _rows(("CA",), {"No defense": (89.81,), "ABL": (72.72,), "I-BAU": (85.44,), "T&R": (83.87,)})

#: [T&R] Tables 11 (CIFAR-10) and 12 (GTSRB): DP-SGD, attack -> (ASR, CA).
TR_TABLE11 = _rows(("ASR", "CA"), {
              "BadNet-Grid": (53.21, 27.73), "BadNet-White": (42.92, 26.52), "Blend": (86.68, 26.52),
              "l0-Invisible": (35.90, 25.00), "l2-Invisible": (60.90, 20.76), "Smooth": (95.41, 28.18),
              "Trojan-SQ": (43.57, 25.69), "Trojan-WM": (99.62, 23.00), "SIG": (97.02, 28.73), "LCBA": (82.80, 18.95)})
TR_TABLE12 = _rows(("ASR", "CA"), {
              "BadNet-Grid": (67.84, 14.02), "BadNet-White": (52.20, 16.14), "Blend": (83.26, 12.87),
              "l0-Invisible": (84.68, 13.44), "l2-Invisible": (82.49, 16.94), "Smooth": (96.11, 15.27),
              "Trojan-SQ": (61.66, 13.20), "Trojan-WM": (99.11, 13.19), "SIG": (94.71, 18.92)})
