"""Sharded updates: 8 simulated CPU devices (data x fsdp) give the single-device update within 1e-5."""

import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from hiors_jax.train import mesh as mesh_lib

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def run_update(tmp_path, data, fsdp):
    out = tmp_path / f"mesh_{data}x{fsdp}.npz"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, str(HERE / "mesh_equivalence.py"), str(data), str(fsdp), str(out)],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return dict(np.load(out))


def test_update_on_8_devices_equals_single_device(tmp_path):
    single = run_update(tmp_path, 1, 1)
    sharded = run_update(tmp_path, 4, 2)
    assert int(sharded["sharded_leaves"]) > 0, "fsdp=2 must actually shard some parameters"
    assert int(single["sharded_leaves"]) == 0
    keys = set(single) - {"sharded_leaves"}
    assert keys == set(sharded) - {"sharded_leaves"}
    for k in sorted(keys):
        np.testing.assert_allclose(sharded[k], single[k], atol=1e-5, rtol=1e-5, err_msg=k)


def test_mesh_and_batch_checks_name_the_field():
    with pytest.raises(ValueError, match="mesh.fsdp=3"):
        mesh_lib.make_mesh(-1, 3, [jax.devices()[0]] * 2)
    mesh = mesh_lib.make_mesh(1, 1, jax.devices()[:1])
    mesh_lib.check_batch_size(4, mesh)
    fake = type("M", (), {"shape": {"data": 4, "fsdp": 2}})()
    with pytest.raises(ValueError, match=r"batch_size=12 must be a positive multiple .* = 8"):
        mesh_lib.check_batch_size(12, fake)


def test_fsdp_rule_shards_large_leaves_along_a_divisible_axis():
    devices = np.asarray(jax.devices()[:1] * 2)  # shapes only: the rule never places data
    mesh = jax.sharding.Mesh(devices.reshape(1, 2), ("data", "fsdp"))
    shapes = {"big": jax.ShapeDtypeStruct((3, 4096), np.float32), "small": jax.ShapeDtypeStruct((8,), np.float32)}
    shardings = mesh_lib.fsdp_sharding(shapes, mesh)
    assert shardings["big"].spec == jax.sharding.PartitionSpec(None, "fsdp")
    assert shardings["small"].spec == jax.sharding.PartitionSpec()
