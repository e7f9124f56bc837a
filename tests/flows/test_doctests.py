"""The doctests of flows/ (pytest's --doctest-modules covers pipeline/ and ops/ only)."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize("module", ["flows.artifacts", "flows.tasks", "flows.serve", "flows.demo"])
def test_doctests(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
