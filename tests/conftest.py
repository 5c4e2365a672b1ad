"""Shared test helpers: the external fixtures live in ../shared/fixtures beside the project root.

A missing fixture skips on a developer's machine but fails under CI (`CI` set, as `.ci/run` is run), so the tests that
compare against the real openpi and lerobot can never silently drop out of a green CI run.
"""

import os
import pathlib
import sys

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, str(pathlib.Path(__file__).parent))  # net_helpers; importlib mode does not add test dirs

PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[1]
# HIORS_SHARED_FIXTURES points elsewhere (the suite's own check of this policy uses it).
SHARED_FIXTURES = pathlib.Path(os.environ.get("HIORS_SHARED_FIXTURES", PROJECT_ROOT.parent / "shared" / "fixtures"))


def running_in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _fixture_absent(path: pathlib.Path) -> None:
    reason = f"external fixture not found: {path} (it comes from ../shared/fixtures beside the project root)"
    if running_in_ci():
        pytest.fail(f"{reason}; CI must run the comparisons against the real openpi and lerobot", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def require_fixture():
    """`require_fixture("openpi_pi0_tiny", "io.npz")` -> the path; absent: skip locally, fail under CI."""

    def require(*parts: str) -> pathlib.Path:
        path = SHARED_FIXTURES.joinpath(*parts)
        if not path.exists():
            _fixture_absent(path)
        return path

    return require


@pytest.fixture(scope="session")
def shared_fixtures(require_fixture) -> pathlib.Path:
    return require_fixture()
