"""Fuzz catalogue entries for `workbench.core` (see tests/api_catalogue/__init__.py)."""

from __future__ import annotations

from tests.api_catalogue import Example, images, labels, model
from workbench.core import metrics

EXAMPLES: dict[str, Example] = {
    "core.metrics.predict_labels": Example(metrics.predict_labels, lambda: {"classifier": model(), "x": images()},
                                           images=("x",)),
    "core.metrics.clean_accuracy": Example(metrics.clean_accuracy,
                                           lambda: {"classifier": model(), "x": images(), "y": labels()},
                                           images=("x",), labels=("y",)),
    "core.metrics.confusion_matrix": Example(metrics.confusion_matrix,
                                             lambda: {"predicted": labels(), "true": labels(), "num_classes": 10},
                                             labels=("predicted", "true")),
}
