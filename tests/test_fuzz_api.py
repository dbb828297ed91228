"""Issue 25's fuzz suite, part two: every public function and class of `workbench.core` and `workbench.defenses`.

`test_catalogue_covers_every_public_name` fails when a public name has no entry in `tests/api_catalogue` (a new
function must come with a valid example); exceptions, Protocols and the registered defence classes are left to
`tests/test_fuzz.py`, which drives them through `create`. For every entry the valid call must succeed, and each
corrupted argument (hypothesis draws the corruption and its magnitude) must end in a one-line `WorkbenchError`
that names the argument.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import workbench.core
import workbench.defenses
from tests.api_catalogue import Example, corrupt, kinds_of
from tests.api_catalogue.attacks import EXAMPLES as ATTACK_EXAMPLES
from tests.api_catalogue.baselines import EXAMPLES as BASELINE_EXAMPLES
from tests.api_catalogue.core import EXAMPLES as CORE_EXAMPLES
from tests.api_catalogue.defenses import EXAMPLES as DEFENCE_EXAMPLES
from workbench.core.validation import WorkbenchError
from workbench.defenses import available, describe

CATALOGUE: dict[str, Example] = {**CORE_EXAMPLES, **ATTACK_EXAMPLES, **DEFENCE_EXAMPLES, **BASELINE_EXAMPLES}
# words a message may use for an argument whose name is a single letter or the paper's symbol
ALIASES = {"x": ("images",), "y": ("labels",), "x_triggered": ("images",), "y_true": ("labels",)}


def public_names() -> dict[str, Any]:
    """Every function and class defined (not imported) in a module of workbench.core / workbench.defenses whose
    name has no leading underscore, keyed by `module.name` without the `workbench.` prefix."""
    found = {}
    for package in (workbench.core, workbench.defenses):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            module = importlib.import_module(info.name)
            for name, obj in vars(module).items():
                if (not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
                        and obj.__module__ == module.__name__):
                    found[f"{module.__name__.removeprefix('workbench.')}.{name}"] = obj
    return found


def _driven_elsewhere(obj: Any) -> bool:
    """Exceptions and Protocols take no input; registered defence classes are fuzzed through `create`."""
    registered = {describe(name).factory for name in available()}
    return inspect.isclass(obj) and (issubclass(obj, BaseException) or getattr(obj, "_is_protocol", False)
                                     or obj in registered)


def test_catalogue_covers_every_public_name() -> None:
    public = public_names()
    missing = sorted(name for name, obj in public.items() if name not in CATALOGUE and not _driven_elsewhere(obj))
    stale = sorted(name for name in CATALOGUE if name not in public)
    wrong = sorted(name for name, example in CATALOGUE.items()
                   if name in public and (example.public or example.call) is not public[name])
    assert not missing, f"public names without a fuzz example: {missing}"
    assert not stale and not wrong, (stale, wrong)


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_valid_example_runs(name: str) -> None:
    example = CATALOGUE[name]
    example.call(**example.full_arguments())


def _cases() -> list[tuple[str, str]]:
    cases = []
    for name, example in sorted(CATALOGUE.items()):
        for argument, value in example.full_arguments().items():
            if kinds_of(example, argument, value):
                cases.append((name, argument))
    return cases


@pytest.mark.parametrize(("name", "argument"), _cases())
@settings(max_examples=6, deadline=None, database=None,  # no .hypothesis/ folder in the checkout
          phases=[Phase.generate],  # no shrinking: a failure already names its corruption, shrinking only repeats it
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_corrupted_argument_is_refused(name: str, argument: str, data: st.DataObject) -> None:
    example = CATALOGUE[name]
    arguments = example.full_arguments()
    kind = data.draw(st.sampled_from(kinds_of(example, argument, arguments[argument])), label="corruption")
    arguments[argument] = corrupt(kind, arguments[argument], data.draw, st)
    with pytest.raises(WorkbenchError) as info:
        example.call(**arguments)
    message = str(info.value)
    words = (argument, *ALIASES.get(argument, ()), *example.mentions.get(argument, ()))
    assert "\n" not in message, message
    assert any(word in message for word in words), f"{kind}: the message does not name {words}: {message}"
