"""Scale presets: resolution and notebook-parameter overrides."""

from __future__ import annotations

import pytest

from workbench.core.scales import pick, resolve_scale, with_overrides
from workbench.core.validation import WorkbenchError
from workbench.repro.trap_replace import PRESETS


def test_overrides_replace_only_given_fields_and_freeze_lists() -> None:
    preset = pick("smoke", PRESETS)
    changed = with_overrides(preset, attacks=["SIG"], lambdas=[[1.0, 0.1]], baselines=None)
    assert changed.attacks == ("SIG",) and changed.lambdas == ((1.0, 0.1),)
    assert changed.baselines == preset.baselines and changed.epochs == preset.epochs
    with pytest.raises(WorkbenchError, match="unknown preset field"):
        with_overrides(preset, atacks=("SIG",))


def test_scale_names_are_checked() -> None:
    assert resolve_scale("paper") == "paper"
    with pytest.raises(WorkbenchError, match="scale"):
        resolve_scale("huge")
