"""Shared test helpers: the external fixtures live in ../shared/fixtures beside the project root."""

import os
import pathlib

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")

PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_FIXTURES = PROJECT_ROOT.parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def shared_fixtures() -> pathlib.Path:
    if not SHARED_FIXTURES.is_dir():
        pytest.skip(f"external fixtures not found at {SHARED_FIXTURES} (they come from ../shared/fixtures)")
    return SHARED_FIXTURES
