"""Fixtures shared by every test folder."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_PATHS = ROOT.parent / "shared" / "data" / "paths.npz"


@pytest.fixture(scope="session")
def shared_paths() -> Path:
    """The chapter's real data (../shared/data/paths.npz); tests that need it skip where it is absent."""
    if not SHARED_PATHS.is_file():
        pytest.skip(f"the chapter's data is not at {SHARED_PATHS} (only the team's machines have it)")
    return SHARED_PATHS
