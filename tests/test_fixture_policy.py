"""A missing external fixture must fail the run under CI (naming the path) and only skip elsewhere."""

import os
import pathlib
import subprocess
import sys

import pytest

PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[1]
# One comparison against the real lerobot; light to import, so the two subprocess runs stay quick.
TARGET = "tests/data/test_lerobot_fixtures_match.py"


def _run_without_fixtures(tmp_path, ci: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["HIORS_SHARED_FIXTURES"] = str(tmp_path / "no-fixtures-here")
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", TARGET, "-q", "-x", "-p", "no:cacheprovider"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("ci", ["true", "1"])
def test_missing_fixtures_fail_under_ci_naming_the_path(tmp_path, ci):
    run = _run_without_fixtures(tmp_path, ci)
    out = run.stdout + run.stderr
    assert run.returncode != 0, out
    assert str(tmp_path / "no-fixtures-here" / "lerobot") in out
    assert "CI must run the comparisons" in out


def test_missing_fixtures_skip_on_a_developer_machine(tmp_path):
    run = _run_without_fixtures(tmp_path, None)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert "skipped" in out and "passed" not in out, out
