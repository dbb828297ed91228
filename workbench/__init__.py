"""workbench: a notebook-first analysis workbench for backdoor defences on image classifiers.

Layers: `core` (data, attacks, models, training, black-box access, metrics); `defenses` and `repro` build on
`core`; `viz` draws results; `widgets` wire `viz` to controls. See README.md, "Architecture".

The entry points for your own model: `workbench.wrap` (declare its normalisation, input size and class count),
`workbench.defenses.create` / `available` (every defence by name), `workbench.load_backdoorbench` (a model-zoo
record). They are imported on first use, so `import workbench` stays light.
"""

import importlib

__version__ = "0.1.0"

_LAZY = {"wrap": ("workbench.core.classifier", "wrap"), "defenses": ("workbench.defenses", None),
         "load_backdoorbench": ("workbench.core.backdoorbench", "load_backdoorbench")}
__all__ = ["defenses", "load_backdoorbench", "wrap"]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'workbench' has no attribute {name!r}")
    module, attribute = _LAZY[name]
    loaded = importlib.import_module(module)
    return loaded if attribute is None else getattr(loaded, attribute)
