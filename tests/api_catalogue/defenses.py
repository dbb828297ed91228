"""Fuzz catalogue entries for defenses (see tests/api_catalogue/__init__.py)."""

from __future__ import annotations

from tests.api_catalogue import Example

EXAMPLES: dict[str, Example] = {}
