"""Shared test fixtures."""
import os
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("SPICE_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
REAL_ROOT_FILE = SHARED_DATA / "small_192px.root"


@pytest.fixture
def real_root_file() -> Path:
    """The 5-event PILArNet sample (../shared/data/small_192px.root or $SPICE_SHARED_DATA); skips when absent."""
    if not REAL_ROOT_FILE.is_file():
        pytest.skip(f"real PILArNet sample not found at {REAL_ROOT_FILE} (set SPICE_SHARED_DATA to its folder)")
    return REAL_ROOT_FILE
