"""workbench: a notebook-first analysis workbench for backdoor defences on image classifiers.

Layers (dependencies point down): `widgets` -> `viz` -> `repro` / `defenses` -> `core`.
See README.md, "Architecture".
"""

__version__ = "0.1.0"
