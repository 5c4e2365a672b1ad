"""The sim Hi-ORS benchmark end to end in its --quick mode: demos, SFT base, every method's rounds, evaluation,
and the table, plot, JSON and tensorboard files it writes (the numbers are checked for sanity, not values)."""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def test_quick_mode_writes_sane_outputs(tmp_path):
    out = tmp_path / "bench"
    env = dict(os.environ, MUJOCO_GL="egl", JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, str(ROOT / "benchmarks" / "sim_hiors.py"), "--quick", "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    check_outputs(out)


def check_outputs(out: pathlib.Path) -> None:
    report = json.loads((out / "results.json").read_text())
    cfg = report["config"]
    assert list(report["summary"]) == cfg["methods"] == ["hiors", "sft", "sac", "hiors_no_takeover", "hiors_no_filters"]
    seed = report["per_seed"][str(cfg["seeds"][0])]
    demos = seed["demos"]
    assert demos["episodes"] == cfg["demos"] and demos["successes"] == demos["episodes"]  # the teleoperator
    for name, entry in report["summary"].items():
        run = seed["methods"][name]
        curve = run["curve"]
        assert len(curve) == 1 + math.ceil(cfg["frames"] / cfg["frames_per_round"])
        frames = [p["frames"] for p in curve]
        assert frames[0] == demos["frames"] and all(b > a for a, b in zip(frames, frames[1:], strict=False))
        assert run["online_frames"] >= cfg["frames"]
        for p in curve:
            assert 0.0 <= p["success"] <= 1.0
            if cfg["task"] == "easy":  # metres from the left TCP to the target: somewhere in the scene
                assert 0.0 <= p["tcp_error_m"] < 2.0
        within = [entry[f"success@{k}"][0] for k in range(1, cfg["trials"] + 1)]
        assert all(0.0 <= v <= 1.0 for v in within)
        assert within == sorted(within), f"{name}: success within k attempts must not fall with k"
        acc = run["acceptance"]
        assert acc["episodes"] == run["episodes"] and 0 <= acc["accepted"] <= acc["episodes"]
        assert all(math.isfinite(p["loss"]) for p in curve[1:])
    methods = seed["methods"]
    # The scripted teleoperator succeeds from reset; labels-only collection never intervenes.
    assert methods["sft"]["acceptance"]["accepted"] == methods["sft"]["episodes"]
    assert methods["hiors_no_takeover"]["interventions"] == 0
    # Without the filters nothing is dropped as a no-op; with them the no-op counter is the only difference.
    assert methods["hiors_no_filters"]["acceptance"]["dropped/noop"] == 0

    table = (out / "results.md").read_text()
    for name in report["summary"]:
        assert f"| {name} |" in table
    png = out / "success_vs_frames.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    events = list((out / "tensorboard").rglob("*tfevents*"))
    assert {p.relative_to(out / "tensorboard").parts[0] for p in events} >= {"base", *report["summary"]}
