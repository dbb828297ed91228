"""Validators give one-line messages naming the problem, whatever the wrong value's type."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from workbench.core.validation import WorkbenchError, check_fraction, check_positive, check_positive_int


@pytest.mark.parametrize(("call", "fragment"), [
    (lambda: check_fraction("0.1", "poison ratio"), "poison ratio must be a number in (0, 1], got '0.1'"),
    (lambda: check_fraction(True, "ratio"), "ratio must be a number in (0, 1], got True"),
    (lambda: check_fraction(1.0, "holdout", allow_one=False), "holdout must be in (0, 1), got 1.0"),
    (lambda: check_fraction(0, "w", allow_zero=True) and None, None),
    (lambda: check_positive(0, "lr"), "lr must be a finite number > 0, got 0"),
    (lambda: check_positive_int(2.5, "epochs"), "epochs must be a positive integer, got 2.5"),
    (lambda: check_positive_int(None, "size", optional=True), None),
])
def test_messages(call: Callable[[], object], fragment: str | None) -> None:
    if fragment is None:
        call()
        return
    with pytest.raises(WorkbenchError) as info:
        call()
    assert str(info.value) == fragment or str(info.value).startswith(fragment)
    assert "\n" not in str(info.value)
