"""The README's main job: tiny PI0 built, saved in openpi's layout, reloaded and sampled."""

import pytest

from hiors_jax import demo


@pytest.mark.parametrize("preset", ["pi0_tiny", "pi05_tiny"])
def test_demo_round_trip(tmp_path, capsys, preset):
    demo.main(["--preset", preset, "--out", str(tmp_path / "demo"), "--steps", "3", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "action chunk: (50, 14) in robot units, finite=True" in out
    assert (tmp_path / "demo" / "params" / "_METADATA").is_file()
    assert (tmp_path / "demo" / "assets" / "xtrainer" / "norm_stats.json").is_file()
