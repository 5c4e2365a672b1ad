"""configs/dobot_pnp.py and the command's start-up checks: every variant builds and validates, every field is
documented (in --help and the README), and typos or bad values fail before anything starts, naming the field."""

from __future__ import annotations

import pathlib

import pytest

from configs import dobot_pnp
from experiments.dobot_pnp import __main__ as command
from experiments.dobot_pnp import build
from experiments.dobot_pnp.settings import ConfigError, Settings

ROOT = pathlib.Path(__file__).resolve().parents[2]
SPEC = "configs/dobot_pnp.py"


def leaves(cfg) -> dict:
    return command._leaf_paths(cfg)


@pytest.mark.parametrize("variant", [v for v in dobot_pnp.VARIANTS if not v.startswith("sft")])
def test_every_variant_validates(variant, tmp_path):
    cfg = dobot_pnp.get_config(variant)
    with cfg.unlocked():
        cfg.output_dir = str(tmp_path)
        if variant in ("hiors", "sac"):
            cfg.model.preset = "pi0_tiny"  # the real presets need the PaliGemma tokenizer file
        if variant.startswith("sac"):
            cfg.pipeline.ratios.demo = 0.0
    s = Settings.from_config(cfg)
    assert s.workdir == tmp_path.resolve() / cfg.run_name
    assert s.algorithm == {"sac": "sac", "sft": "sft"}.get(variant.removesuffix("_sim"), "hiors")
    assert s.sim.task in ("easy", "transfer")


def test_sft_needs_demos_and_names_the_field(tmp_path):
    cfg = dobot_pnp.get_config("sft_sim")
    with pytest.raises(ConfigError, match=r"--config\.data\.demos"):
        Settings.from_config(cfg)
    with cfg.unlocked():
        cfg.data.demos = str(tmp_path)
    with pytest.raises(ConfigError, match=r"--config\.data\.demos: .* is not a LeRobot dataset"):
        Settings.from_config(cfg)


def test_every_field_is_documented_and_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    for variant in dobot_pnp.VARIANTS:
        for path in leaves(dobot_pnp.get_config(variant)):
            documented = path in dobot_pnp.DOCS or path.rsplit(".", 1)[0] in dobot_pnp.DOCS
            assert documented, f"{path} has no entry in configs/dobot_pnp.DOCS"
    assert command.config_table() in readme, (
        "README's config table is stale: paste `python -m experiments.dobot_pnp --config_table`"
    )


def test_help_lists_fields_with_the_variants_values(capsys):
    assert command.main([f"--config={SPEC}:sim", "--help"]) == 0
    out = capsys.readouterr().out
    assert "learner.batch_size" in out and "samples per update" in out
    assert "'pi0_tiny'" in out  # the sim variant's preset, not the base's


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--config.learner.batch_sizee=16", r"--config\.learner\.batch_sizee: no such config field \(did you mean "
         r"--config\.learner\.batch_size\?\)"),
        ("--config.lerner.batch_size=16", r"--config\.lerner\.batch_size: no such config field"),
        ("--config.learner.batch_size=abc", r"--config\.learner\.batch_size=abc"),
        ("--config.learner.batch_size=0", r"--config\.learner\.batch_size=0 must be positive"),
        ("--config.learner.algorithm=ppo", r"--config\.learner\.algorithm='ppo' is not one of"),
        ("--config.role=both", r"--config\.role: 'both' is not one of"),
        ("--config.model.preset=pi7", r"--config\.model\.preset: 'pi7' is not one of"),
        ("--config.model.init=hf:foo", r"--config\.model\.init: 'hf:foo' must be random"),
        ("--config.model.init=openpi:/nonexistent/p", r"--config\.model\.init: /nonexistent/p does not exist"),
        ("--config.sim.task=fold", r"--config\.sim\.task: 'fold' is not one of"),
        ("--config.env.port=70000", r"--config\.env\.port: must be in \[0, 65535\]"),
        ("--config.transport.port=5589", r"--config\.transport\.port and broadcast_port must differ"),
        ("--config.transport.host=10.0.0.2", r"--config\.transport\.auth_key"),
        ("--config.transport.auth_key=short", r"--config\.transport\.auth_key: must be at least 16 bytes"),
        ("--config.env.host=0.0.0.0", r"--config\.env\.api_key"),
        ("--config.actor.labels=classifier", r"--config\.actor\.classifier_path"),
        ("--config.agent.optimizer.warmup_steps=99999", r"agent\.optimizer\.warmup_steps=99999 is longer than"),
        ("--config.agent.optimizer.schedule=linear", r"--config\.agent.*schedule='linear'"),
        ("--config.replay.noop_eps=-1", r"--config\.replay: .*noop_eps must be >= 0"),
        ("--config.pipeline.ratios.accepted=0", r"--config\.pipeline\.ratios: must be >= 0 with at least one > 0"),
    ],
)  # fmt: skip
def test_bad_overrides_fail_at_start_naming_the_field(override, message, capsys):
    assert command.main([f"--config={SPEC}:sim", override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: "), err
    assert __import__("re").search(message, err), err


def test_unknown_variant_is_named(capsys):
    assert command.main([f"--config={SPEC}:simm"]) == 2
    assert "unknown variant 'simm'" in capsys.readouterr().err


def test_overrides_reach_the_settings():
    overrides = ["--config.learner.batch_size=16", "--config.sim.task=transfer", "--config.replay.image_size=(32, 32)",
                 "--config.agent.optimizer.clip_grad_norm=0"]  # fmt: skip
    cfg = command.parse([f"--config={SPEC}:sim", *overrides])
    s = Settings.from_config(cfg)
    assert s.learner.batch_size == 16 and s.pipeline.batch_size == 16
    assert s.sim.task == "transfer"
    assert tuple(cfg.replay.image_size) == (32, 32)
    assert s.agent.optimizer.clip_grad_norm is None


def test_tiny_tokenizer_covers_the_sim_tasks_prompts():
    from robot.sim.xtrainer import TASKS

    assert {t.prompt for t in TASKS.values()} <= set(build.TINY_CORPUS)
