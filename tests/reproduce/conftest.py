"""Fixtures for the sweep tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.reproduce.tiny import TINY


@pytest.fixture
def tiny_preset(tmp_path: Path) -> Path:
    """Path of the tiny preset file."""
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path
