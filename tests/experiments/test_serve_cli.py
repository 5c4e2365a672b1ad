"""The serve command line: every option documented, bad arguments fail naming the option (before any serving)."""

from __future__ import annotations

import pytest

from experiments.dobot_pnp import serve

OPTIONS = [
    "--checkpoint_path",
    "--host",
    "--port",
    "--api_key",
    "--num_steps",
    "--prompt",
    "--tokenizer",
    "--prompt_format",
    "--asset_id",
    "--camera_map",
    "--action_horizon",
    "--max_token_len",
    "--dtype",
    "--seed",
    "--log_level",
]


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as exit_:
        serve.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    declared = {s for a in serve.build_parser()._actions for s in a.option_strings if s.startswith("--")}
    assert declared - {"--help"} == set(OPTIONS)
    for option in OPTIONS:
        assert option in out
    assert "openpi" in out and "norm_stats.json" in out


@pytest.mark.parametrize(
    "argv, names",
    [
        ([], "--checkpoint_path"),
        (["--checkpoint_path=/nonexistent/ckpt"], "--checkpoint_path"),
        (["--checkpoint_path=.", "--port=abc"], "--port"),
        (["--checkpoint_path=.", "--port=70000"], "--port"),
        (["--checkpoint_path=.", "--num_steps=0"], "--num_steps"),
        (["--checkpoint_path=.", "--action_horizon=-1"], "--action_horizon"),
        (["--checkpoint_path=.", "--camera_map=base_0_rgb"], "--camera_map"),
        (["--checkpoint_path=.", "--dtype=float16"], "--dtype"),
    ],
)
def test_bad_arguments_name_the_option(capsys, argv, names):
    with pytest.raises(SystemExit) as exit_:
        serve.main(argv)
    assert exit_.value.code == 2
    assert names in capsys.readouterr().err


def test_checkpoint_problems_name_the_option(capsys, tiny_checkpoint):
    with pytest.raises(SystemExit):
        serve.main([f"--checkpoint_path={tiny_checkpoint}"])  # two asset dirs in this checkpoint
    assert "--asset_id" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        serve.main([f"--checkpoint_path={tiny_checkpoint}", "--asset_id=xtrainer", "--tokenizer=/no/such.model"])
    assert "--tokenizer" in capsys.readouterr().err


def test_parse_camera_map():
    assert serve.parse_camera_map("base_0_rgb=top, right_wrist_0_rgb=none") == {
        "base_0_rgb": "top",
        "right_wrist_0_rgb": None,
    }
