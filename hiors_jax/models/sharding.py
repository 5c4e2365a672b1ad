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

_SIGLIP_AXES = {
    "embedding/kernel": ("patch", "patch", "patch", "vision_embed"),
    "embedding/bias": ("vision_embed",),
    "pos_embedding": ("position", "position", "vision_embed"),
    "Transformer/encoder_norm/scale": ("norm",),
    "Transformer/encoder_norm/bias": ("norm",),
    "head/kernel": ("vision_embed", "embed"),
    "head/bias": ("embed",),
}
_SIGLIP_BLOCK_AXES = {
    "LayerNorm_0/scale": ("norm",),
    "LayerNorm_0/bias": ("norm",),
    "LayerNorm_1/scale": ("norm",),
    "LayerNorm_1/bias": ("norm",),
    "MlpBlock_0/Dense_0/kernel": ("vision_embed", "mlp"),
    "MlpBlock_0/Dense_0/bias": ("mlp",),
    "MlpBlock_0/Dense_1/kernel": ("mlp", "vision_embed"),
    "MlpBlock_0/Dense_1/bias": ("vision_embed",),
    "MultiHeadDotProductAttention_0/query/kernel": ("vision_embed", "heads", "head_dim"),
    "MultiHeadDotProductAttention_0/key/kernel": ("vision_embed", "heads", "head_dim"),
    "MultiHeadDotProductAttention_0/value/kernel": ("vision_embed", "heads", "head_dim"),
    "MultiHeadDotProductAttention_0/query/bias": ("heads", "head_dim"),
    "MultiHeadDotProductAttention_0/key/bias": ("heads", "head_dim"),
    "MultiHeadDotProductAttention_0/value/bias": ("heads", "head_dim"),
    "MultiHeadDotProductAttention_0/out/kernel": ("heads", "head_dim", "vision_embed"),
    "MultiHeadDotProductAttention_0/out/bias": ("vision_embed",),
}
# Gemma layer leaves per expert (the `_i` suffix stripped); LoRA factors replace one weight axis by the rank.
_GEMMA_LAYER_AXES = {
    "attn/q_einsum/w": ("heads", "embed", "head_dim"),
    "attn/q_einsum/lora_a": ("heads", "embed", "lora"),
    "attn/q_einsum/lora_b": ("heads", "lora", "head_dim"),
    "attn/kv_einsum/w": ("kv", "kv_heads", "embed", "head_dim"),
    "attn/kv_einsum/lora_a": ("kv", "kv_heads", "embed", "lora"),
    "attn/kv_einsum/lora_b": ("kv", "kv_heads", "lora", "head_dim"),
    "attn/attn_vec_einsum/w": ("heads", "head_dim", "embed"),
    "attn/attn_vec_einsum/lora_a": ("heads", "head_dim", "lora"),
    "attn/attn_vec_einsum/lora_b": ("heads", "lora", "embed"),
    "mlp/gating_einsum": ("gate_up", "embed", "mlp"),
    "mlp/gating_einsum_lora_a": ("gate_up", "embed", "lora"),
    "mlp/gating_einsum_lora_b": ("gate_up", "lora", "mlp"),
    "mlp/linear": ("mlp", "embed"),
    "mlp/linear_lora_a": ("mlp", "lora"),
    "mlp/linear_lora_b": ("lora", "embed"),
}
_NORM_AXES = {
    "scale": ("norm",),
    "Dense_0/kernel": ("embed", "adarms"),
    "Dense_0/bias": ("adarms",),
}
_PROJECTION_AXES = {
    "action_in_proj": ("action", "embed"),
    "action_out_proj": ("embed", "action"),
    "state_proj": ("action", "embed"),
    # The time MLPs: "mlp" names their hidden side, as in the transformer's MLPs.
    "action_time_mlp_in": ("mlp", "embed"),  # [action tokens, time embedding] (2 * width) -> width
    "action_time_mlp_out": ("mlp", "embed"),
    "time_mlp_in": ("embed", "mlp"),
    "time_mlp_out": ("mlp", "embed"),
}


def _strip_expert_suffix(name: str) -> str:
    head, _, tail = name.rpartition("_")
    return head if head and tail.isdigit() else name


def _leaf_axes(path: str, ndim: int) -> tuple[str, ...]:
    """Logical names of one leaf of openpi's pure-dict tree, from its '/'-joined path."""
    parts = path.split("/")
    if parts[:2] == ["PaliGemma", "img"]:
        rest = "/".join(parts[2:])
        if rest.startswith("Transformer/encoderblock/"):
            return ("layers", *_SIGLIP_BLOCK_AXES[rest[len("Transformer/encoderblock/") :]])
        return _SIGLIP_AXES[rest]
    if parts[:2] == ["PaliGemma", "llm"]:
        rest = parts[2:]
        if rest == ["embedder", "input_embedding"]:
            return ("vocab", "embed")
        if rest[0] == "layers":
            module = _strip_expert_suffix(rest[2] if rest[1] == "attn" else rest[1])
            if rest[1] == "attn":
                return ("layers", *_GEMMA_LAYER_AXES["/".join(["attn", module, *rest[3:]])])
            if module == "mlp":
                return ("layers", *_GEMMA_LAYER_AXES["/".join(["mlp", *rest[2:]])])
            return ("layers", *_NORM_AXES["/".join(rest[2:])])  # pre_attention_norm*, pre_ffw_norm*
        return _NORM_AXES["/".join(rest[1:])]  # final_norm*
    name, leaf = parts[0], parts[-1]
    if len(parts) == 2 and name in _PROJECTION_AXES:
        return _PROJECTION_AXES[name] if leaf == "kernel" else _PROJECTION_AXES[name][-1:]
    raise KeyError(path)


def logical_axes_of(params: Mapping) -> dict:
    """Logical axis names of every leaf of a PI0 / PI0.5 tree (arrays or ShapeDtypeStructs), same structure."""

    def visit(node, prefix):
        out = {}
        for key, value in node.items():
            path = f"{prefix}/{key}" if prefix else key
            if isinstance(value, Mapping):
                out[key] = visit(value, path)
                continue
            try:
                axes = _leaf_axes(path, len(value.shape))
            except KeyError:
                raise ValueError(f"no logical axis names for parameter {path!r}: not a PI0/PI0.5 leaf") from None
            if len(axes) != len(value.shape):
                raise ValueError(f"parameter {path!r} has shape {tuple(value.shape)} but logical axes {axes}")
            out[key] = axes
        return out

    return visit(params, "")


def param_logical_axes(config: Pi0Config) -> dict:
    """Tuples of logical axis names, with the exact structure of `pi0.init_params(config, key)`."""
    from hiors_jax.models import pi0

    return logical_axes_of(pi0.param_shapes(config))


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
    """NamedSharding tree for a PI0 / PI0.5 tree of arrays or ShapeDtypeStructs (e.g. loaded params)."""
    axes_tree = logical_axes_of(params) if logical_axes is None else logical_axes

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
