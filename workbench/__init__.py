"""workbench: a notebook-first analysis workbench for backdoor defences on image classifiers.

Layers: `core` (data, attacks, models, training, black-box access, metrics); `defenses` and `repro` build on
`core`; `viz` draws results; `widgets` wire `viz` to controls. See README.md, "Architecture".
"""

__version__ = "0.1.0"
