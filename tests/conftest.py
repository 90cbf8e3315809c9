"""Shared test fixtures: real frames (skipped when absent) and an isolated default-data folder."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """../shared/fixtures (real Cityscapes and KITTI frames); the test skips when it is absent."""
    if not (FIXTURES / "cityscapes").is_dir():
        pytest.skip("real-frame fixtures (../shared/fixtures) are not present")
    return FIXTURES


@pytest.fixture(autouse=True)
def _isolated_data_home(tmp_path_factory, monkeypatch):
    """Keep the synthetic default data of tests out of the user's ~/.cache."""
    monkeypatch.setenv("CITYSEG_DATA_HOME", str(tmp_path_factory.getbasetemp() / "data_home"))
