"""Defences, one module per method, and one interface per kind behind a registry:

    from workbench.defenses import available, create
    available("detector")  # ['red-a', 'red-a-prime', 'red-p', 'red-u', 'restore-diagnosis']
    create("red-a").detect(model, clean_images, clean_labels)

See `workbench.defenses.interface` for the four kinds and their results.
"""

from workbench.defenses import registered as _registered  # noqa: F401  (registers the defences)
from workbench.defenses.interface import (
    Detection,
    Purification,
    Repair,
    Training,
    available,
    create,
    describe,
    register,
)

__all__ = ["Detection", "Purification", "Repair", "Training", "available", "create", "describe", "register"]
