"""Fixtures of the data tests."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng():
    """A seeded numpy generator."""
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path, monkeypatch):
    """Keep every test away from the user's cache and $CONTSUP_DATA."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("CONTSUP_DATA", raising=False)
