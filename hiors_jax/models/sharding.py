"""Logical axis names of every PI0 / PI0.5 parameter and the rule table that maps them onto a device mesh.

The mesh has two axes: `data` (data parallel: batches split, parameters replicated) and `fsdp` (parameters and
optimizer state split on their large dim, gathered per layer inside the step). `DEFAULT_RULES` maps each logical
axis name to a mesh axis or None; its order is the priority when a parameter has several shardable dims (one mesh
axis shards at most one dim): the MLP and vocabulary dims before the model width. As openpi's FSDP does, small
parameters (under `min_shard_bytes`) and dims not divisible by the mesh axis stay replicated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hiors_jax.models.config import Pi0Config

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
MESH_AXES = (DATA_AXIS, FSDP_AXIS)

DEFAULT_RULES: dict[str, str | None] = {
    "mlp": FSDP_AXIS,  # Gemma / SigLIP hidden MLP dim (16384 / 4304 in the real model)
    "vocab": FSDP_AXIS,  # token embedding rows (257152)
    "embed": FSDP_AXIS,  # Gemma model width (2048 / 1024)
    "vision_embed": FSDP_AXIS,  # SigLIP width (1152)
    "layers": None,  # scanned depth: every device runs every layer
    "heads": None,
    "kv_heads": None,
    "head_dim": None,
    "kv": None,  # the {k, v} pair of kv_einsum
    "gate_up": None,  # the {gate, up} pair of gating_einsum
    "lora": None,  # LoRA rank
    "norm": None,  # norm scales and biases
    "adarms": None,  # adaRMS modulation (scale, shift, gate)
    "patch": None,  # patch-conv window and colour channels
    "position": None,  # SigLIP position table rows
    "action": None,  # action / state dims (32)
}

# openpi shards only arrays of at least 4 MiB (training/sharding.py); smaller ones cost more to gather than to keep.
MIN_SHARD_BYTES = 4 * 2**20


def param_logical_axes(config: Pi0Config) -> dict:
    """Tuples of logical axis names, with the exact structure of `pi0.init_params(config, key)`.

    Read from the modules' own annotations (`nn.with_logical_partitioning`, `layers` added by `nn.scan`), shapes
    only: nothing is allocated.
    """
    from hiors_jax.models import pi0

    boxed = jax.eval_shape(lambda: pi0.init_boxed(config, jax.random.key(0)))
    specs = nn.get_partition_spec(boxed)
    return jax.tree.map(tuple, specs, is_leaf=lambda x: isinstance(x, PartitionSpec))


def _is_axes(x) -> bool:
    return isinstance(x, tuple) and all(isinstance(a, str) for a in x)


def partition_spec(
    axes: Sequence[str],
    shape: Sequence[int],
    mesh: Mesh,
    rules: Mapping[str, str | None] = DEFAULT_RULES,
    itemsize: int = 4,
    min_shard_bytes: int = MIN_SHARD_BYTES,
) -> PartitionSpec:
    """PartitionSpec of one parameter: each mesh axis goes to the highest-priority logical dim it divides."""
    unknown = [a for a in axes if a not in rules]
    if unknown:
        raise ValueError(f"logical axis {unknown[0]!r} has no rule; rules cover {sorted(rules)}")
    spec: list[str | None] = [None] * len(axes)
    if math.prod(shape) * itemsize < min_shard_bytes:
        return PartitionSpec(*spec)
    used: set[str] = set()
    for logical, mesh_axis in rules.items():  # dict order = priority
        if mesh_axis is None or mesh_axis in used:
            continue
        size = mesh.shape[mesh_axis]
        for dim, name in enumerate(axes):
            if name == logical and spec[dim] is None and shape[dim] % size == 0:
                spec[dim] = mesh_axis
                used.add(mesh_axis)
                break
    return PartitionSpec(*spec)


def shardings_for(
    params: Mapping,
    mesh: Mesh,
    rules: Mapping[str, str | None] = DEFAULT_RULES,
    min_shard_bytes: int = MIN_SHARD_BYTES,
    logical_axes: Mapping | None = None,
) -> dict:
    """NamedSharding tree for a PI0 / PI0.5 tree of arrays or ShapeDtypeStructs (e.g. loaded params, whose dtype
    sets the byte size); its config is inferred from the shapes unless `logical_axes` are given."""
    if logical_axes is None:
        from hiors_jax.models import pi0

        logical_axes = param_logical_axes(pi0.infer_config(params))
    axes_tree = logical_axes

    def one(axes, leaf):
        itemsize = np.dtype(leaf.dtype).itemsize
        return NamedSharding(mesh, partition_spec(axes, leaf.shape, mesh, rules, itemsize, min_shard_bytes))

    return jax.tree.map(one, axes_tree, params, is_leaf=_is_axes)


def param_shardings(
    config: Pi0Config,
    mesh: Mesh,
    rules: Mapping[str, str | None] = DEFAULT_RULES,
    min_shard_bytes: int = MIN_SHARD_BYTES,
) -> dict:
    """NamedSharding of every parameter (f32 master weights), same structure as `pi0.init_params(config, key)`.

    Also the sharding of optimizer state shaped like the params (Adam's mu / nu): map it over those sub-trees.
    """
    from hiors_jax.models import pi0

    return shardings_for(pi0.param_shapes(config), mesh, rules, min_shard_bytes)


def make_mesh(data: int, fsdp: int, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp) mesh over `devices` (default: all devices); data * fsdp must equal their number."""
    devices = list(jax.devices() if devices is None else devices)
    if data < 1 or fsdp < 1 or data * fsdp != len(devices):
        raise ValueError(f"mesh data={data} x fsdp={fsdp} needs {data * fsdp} devices, got {len(devices)}")
    return Mesh(np.asarray(devices, dtype=object).reshape(data, fsdp), MESH_AXES)
