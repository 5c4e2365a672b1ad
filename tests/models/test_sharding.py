"""Logical axis names, mesh shardings and trainable-parameter filters of PI0 / PI0.5."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from hiors_jax.models import config as model_config
from hiors_jax.models import pi0, sharding, trainable, weights

HERE = pathlib.Path(__file__).parent
ALL_PRESETS = sorted(model_config.PRESETS)


def _is_axes(x):
    return isinstance(x, tuple) and all(isinstance(a, str) for a in x)


@pytest.mark.parametrize("preset", ALL_PRESETS)
def test_logical_axes_cover_every_parameter(preset):
    config = model_config.get_preset(preset)
    shapes = pi0.param_shapes(config)
    axes = sharding.param_logical_axes(config)
    assert jax.tree.structure(axes, is_leaf=_is_axes) == jax.tree.structure(shapes)
    for (path, leaf), names in zip(
        weights.flatten_params(shapes).items(), jax.tree.leaves(axes, is_leaf=_is_axes), strict=True
    ):
        assert len(names) == leaf.ndim, path
        assert all(n in sharding.DEFAULT_RULES for n in names), (path, names)
        if path.startswith(("PaliGemma/llm/layers/", "PaliGemma/img/Transformer/encoderblock/")):
            assert names[0] == "layers", path


def test_rules_shard_the_large_dim():
    mesh = sharding.make_mesh(1, 1)
    spec = sharding.partition_spec(("layers", "gate_up", "embed", "mlp"), (18, 2, 2048, 16384), mesh)
    assert spec == jax.sharding.PartitionSpec(None, None, None, "fsdp")
    spec = sharding.partition_spec(("vocab", "embed"), (257152, 2048), mesh)
    assert spec == jax.sharding.PartitionSpec("fsdp", None)
    # Small leaves stay replicated, as openpi's FSDP keeps arrays under 4 MiB whole.
    assert sharding.partition_spec(("layers", "norm"), (18, 2048), mesh) == jax.sharding.PartitionSpec(None, None)
    with pytest.raises(ValueError, match="logical axis 'bogus'"):
        sharding.partition_spec(("bogus",), (8,), mesh)


def test_make_mesh_checks_device_count():
    mesh = sharding.make_mesh(1, 1)
    assert mesh.axis_names == ("data", "fsdp")
    with pytest.raises(ValueError, match="needs 8 devices, got 1"):
        sharding.make_mesh(2, 4)


def _run_8_devices(what: str) -> dict:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(HERE.parents[1]), env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, str(HERE / "sharded_check.py"), what],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_sharded_loss_and_grads_equal_unsharded_on_8_devices():
    result = _run_8_devices("tiny")
    assert result["devices"] == 8
    assert result["sharded_leaves"] >= result["leaves"] // 2  # the layout really splits parameters
    assert result["loss_err"] <= 1e-5
    assert result["grad_err"] <= 1e-5, result


@pytest.mark.parametrize("preset", ["pi0", "pi05_lora"])
def test_real_model_fsdp_4_holds_a_quarter_of_the_bytes(preset):
    result = _run_8_devices(preset)
    assert result["max_device_bytes"] <= result["total_bytes"] / 4 * 1.02, result


# --------------------------------------------------------------------------------------------------------------
# Trainable filters.


def _count(config, which):
    return trainable.trainable_count(config, pi0.param_shapes(config), which)


def test_trainable_filters_on_tiny_lora():
    config = model_config.get_preset("pi0_tiny_lora")
    shapes = pi0.param_shapes(config)
    flat = weights.flatten_params(shapes)
    total = weights.count_params(shapes)
    masks = {w: weights.flatten_params(trainable.trainable_mask(config, shapes, w)) for w in trainable.FILTERS}
    assert all(masks["all"].values())
    assert {p for p, m in masks["lora"].items() if m} == {p for p in flat if "lora" in p}
    assert len([p for p, m in masks["lora"].items() if m]) == 20
    assert not any(m for p, m in masks["no_vision"].items() if p.startswith("PaliGemma/img/"))
    assert all(m for p, m in masks["no_vision"].items() if not p.startswith("PaliGemma/img/"))
    expert = {p for p, m in masks["action_expert"].items() if m}
    assert "PaliGemma/llm/layers/attn/q_einsum_1/lora_a" in expert and "action_out_proj/kernel" in expert
    assert (
        "PaliGemma/llm/layers/attn/q_einsum/w" not in expert and "PaliGemma/llm/embedder/input_embedding" not in expert
    )
    # openpi's freeze filter: LM and expert frozen except LoRA; SigLIP and projections train.
    openpi = {p for p, m in masks["openpi_lora"].items() if m}
    assert "PaliGemma/img/head/kernel" in openpi and "state_proj/kernel" in openpi
    assert "PaliGemma/llm/layers/mlp_1/linear" not in openpi and "PaliGemma/llm/layers/mlp_1/linear_lora_a" in openpi
    assert _count(config, "lora") == 23_296  # the LoRA fixture's LoRA parameter count
    assert _count(config, "all") == total


def test_openpi_lora_filter_with_only_the_lm_lora_keeps_the_expert_trainable():
    config = model_config.tiny_config(vlm=model_config.TINY_VLM.with_lora(4))
    mask = weights.flatten_params(trainable.trainable_mask(config, pi0.param_shapes(config), "openpi_lora"))
    assert mask["PaliGemma/llm/layers/mlp_1/linear"] and not mask["PaliGemma/llm/layers/mlp/linear"]
    assert mask["PaliGemma/llm/final_norm_1/scale"] and not mask["PaliGemma/llm/embedder/input_embedding"]


@pytest.mark.parametrize("which, message", [("bogus", "unknown trainable filter which='bogus'"), ("lora", "'lora'")])
def test_bad_filters_are_named(which, message):
    config = model_config.tiny_config()
    with pytest.raises(ValueError, match=message):
        trainable.trainable_mask(config, pi0.param_shapes(config), which)


def test_real_trainable_counts():
    pi0_cfg, lora_cfg = model_config.pi0_config(), model_config.lora_config()
    assert _count(pi0_cfg, "all") == 3_238_048_528
    # Per layer r * (N*D + N*H + 2*D + 2*H + N*H + N*D + 2*D + 2*F + F + D), 18 layers: openpi's +27.9 M / +22.1 M.
    lm_lora, expert_lora = 27_869_184, 22_118_400
    assert _count(lora_cfg, "lora") == lm_lora + expert_lora
    assert _count(lora_cfg, "all") == 3_238_048_528 + lm_lora + expert_lora
    siglip = _count(pi0_cfg, "all") - _count(pi0_cfg, "no_vision")
    assert abs(siglip - 414.80e6) < 0.01e6


def test_trainable_command_prints_counts(capsys):
    trainable.main(["--preset", "pi0_tiny_lora"])
    out = capsys.readouterr().out
    assert "226,400 parameters" in out  # the LoRA fixture's tree with 56x56 instead of 224x224 images
    assert "lora" in out and "23,296 trainable" in out


# --------------------------------------------------------------------------------------------------------------
# Remat policy field.


def test_remat_field_accepts_policies_and_booleans():
    assert model_config.pi0_config().remat == "full"  # training default on, as openpi
    assert model_config.tiny_config(remat=True).remat == "full"
    assert model_config.tiny_config(remat=False).remat == "none"
    assert model_config.tiny_config(remat="dots").remat == "dots"
    with pytest.raises(ValueError, match="remat='sometimes'"):
        model_config.tiny_config(remat="sometimes")


def test_remat_policies_give_the_same_loss_and_grads():
    config = model_config.tiny_config(action_horizon=4, max_token_len=8)
    from pi0_test_helpers import random_observation, random_params

    params = random_params(config, seed=4)
    obs = random_observation(config, batch=2, seed=5)
    chunk = np.random.default_rng(6).normal(size=(2, 4, 32)).astype(np.float32)
    time = np.array([0.3, 0.7], np.float32)
    results = {}
    for policy in ("none", "dots"):  # "full" vs "none": test_pi0_properties.test_remat_and_bf16_compute
        cfg = config.replace(remat=policy)
        results[policy] = jax.value_and_grad(lambda p, c=cfg: pi0.compute_loss(c, p, obs, chunk, chunk, time).mean())(
            params
        )
    base_loss, base_grads = results["none"]
    for policy in ("dots",):
        loss, grads = results[policy]
        np.testing.assert_allclose(loss, base_loss, rtol=1e-6)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(base_grads), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5)
