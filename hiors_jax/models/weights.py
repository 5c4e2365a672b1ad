"""PI0 / PI0.5 weights I/O: openpi orbax ``params`` checkpoints and PyTorch-style safetensors.

Every loader returns openpi's "pure dict" parameter tree: nested dicts of numpy arrays named exactly like
openpi's checkpoints (``params["PaliGemma"]["llm"]["layers"]["attn"]["q_einsum"]["w"]``, scanned layers
stacked on a leading depth axis). Loading is from local paths only; nothing is downloaded.

Safetensors namings understood (all with identical per-layer sub-names and transposes):

* ``openpi``: openpi's PyTorch port (``paligemma_with_expert.paligemma.model.…``, ``state_proj.weight``).
* ``lerobot``: new lerobot (``src/lerobot/policies/pi0|pi05``) = the openpi keys with a leading ``model.``.
* ``lerobot_old``: old lerobot / hiors (transformers 4.48 layout,
  ``model.paligemma_with_expert.paligemma.language_model.model.layers.…``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import re
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

ParamTree = dict[str, Any]
PathLike = str | os.PathLike

SAFETENSORS_NAMINGS = ("openpi", "lerobot", "lerobot_old")

# SigLIP query/key/value kernels are stored fused as (W, W) in PyTorch; the head split is not recoverable
# from shapes, so known encoder widths map to their head count (So400m/14: 1152 wide, 16 heads of 72).
_KNOWN_SIGLIP_HEADS = {1152: 16}

_LAYER_INDEX = "{i}"

_OPENPI_PALI = "paligemma_with_expert.paligemma.model."
_OLD_PALI_LM = "model.paligemma_with_expert.paligemma.language_model.model."
_OLD_PALI = "model.paligemma_with_expert.paligemma."


# --------------------------------------------------------------------------------------------------------
# Tree helpers
# --------------------------------------------------------------------------------------------------------


def flatten_params(tree: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
    """``{"a": {"b": x}}`` -> ``{"a/b": x}`` (leaves are anything that is not a Mapping)."""
    flat: dict[str, Any] = {}

    def visit(node: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if not isinstance(key, str):
                raise TypeError(f"parameter tree keys must be strings, got {key!r} under '{prefix or '<root>'}'")
            path = f"{prefix}{sep}{key}" if prefix else key
            if isinstance(value, Mapping):
                if not value:
                    raise ValueError(f"empty sub-tree at '{path}'")
                visit(value, path)
            else:
                flat[path] = value

    visit(tree, "")
    return flat


def unflatten_params(flat: Mapping[str, Any], sep: str = "/") -> ParamTree:
    """Inverse of :func:`flatten_params`; a path that is both a leaf and a prefix is an error."""
    tree: ParamTree = {}
    for path, value in flat.items():
        parts = path.split(sep)
        if any(not part for part in parts):
            raise ValueError(f"malformed parameter path {path!r}")
        node = tree
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"parameter path {path!r} goes through leaf '{sep.join(parts[: depth + 1])}'")
            node = child
        if parts[-1] in node:
            raise ValueError(f"parameter path {path!r} is given twice or is also a sub-tree")
        node[parts[-1]] = value
    return tree


def count_params(tree: Mapping[str, Any]) -> int:
    """Total number of scalars in a tree whose leaves have a ``shape``."""
    return int(sum(int(np.prod(leaf.shape, dtype=np.int64)) for leaf in flatten_params(tree).values()))


def _map_leaves(tree: Mapping[str, Any], fn: Callable[[Any], Any]) -> ParamTree:
    return {k: _map_leaves(v, fn) if isinstance(v, Mapping) else fn(v) for k, v in tree.items()}


def _resolve_dtype(dtype: Any) -> np.dtype | None:
    if dtype is None:
        return None
    try:
        return np.dtype(dtype)
    except TypeError as err:
        if str(dtype) == "bfloat16":
            import ml_dtypes

            return np.dtype(ml_dtypes.bfloat16)
        raise ValueError(f"unsupported dtype {dtype!r}") from err


# --------------------------------------------------------------------------------------------------------
# openpi orbax checkpoints
# --------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_absl_metadata_warning() -> Iterator[None]:
    # openpi's params/ item directories are copied out of a step directory, so orbax logs that the step's
    # _CHECKPOINT_METADATA is missing; that file is not needed to restore the item.
    absl_logger = logging.getLogger("absl")
    old_level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        absl_logger.setLevel(old_level)


def _check_orbax_dir(path: pathlib.Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"checkpoint directory {path} does not exist")
    if not path.is_dir():
        raise NotADirectoryError(f"checkpoint path {path} is a file, expected an orbax checkpoint directory")
    markers = ("_METADATA", "manifest.ocdbt", "checkpoint")
    if not any((path / m).exists() for m in markers):
        hint = ""
        if (path / "params" / "_METADATA").exists():
            hint = f"; it holds a 'params' checkpoint: pass {path / 'params'}"
        raise ValueError(f"{path} is not an orbax checkpoint (none of {', '.join(markers)} found){hint}")


def _tree_from_metadata(metadata: Any) -> Mapping[str, Any]:
    # orbax 0.11 returns the metadata tree itself; orbax >= 0.12 a StepMetadata whose
    # item_metadata.tree holds it (openpi's own metadata["params"] fails there).
    item = getattr(metadata, "item_metadata", None)
    if item is not None:
        tree = getattr(item, "tree", item)
    else:
        tree = getattr(metadata, "tree", metadata)
    if not isinstance(tree, Mapping):
        raise ValueError(f"unexpected orbax metadata of type {type(tree).__name__}; expected a tree of dicts")
    return tree


def _strip_nnx_value(tree: ParamTree) -> ParamTree:
    flat = flatten_params(tree)
    if flat and all(path.rsplit("/", 1)[-1] == "value" for path in flat):
        return unflatten_params({path.rsplit("/", 1)[0]: leaf for path, leaf in flat.items()})
    return tree


def restore_params_tree(path: PathLike, dtype: Any = None) -> ParamTree:
    """Restore an openpi ``params`` orbax checkpoint as a pure dict of numpy arrays.

    Leaves keep their stored dtype (float32 or bfloat16) unless ``dtype`` is given, in which case orbax casts
    on read (round to nearest even for bfloat16, bit-identical to openpi's ``restore_params(dtype=...)``).
    A tree saved from an ``nnx.State`` (every leaf path ending in ``value``) is returned without that key.
    """
    import jax
    import orbax.checkpoint as ocp

    path = pathlib.Path(path).expanduser().resolve()
    _check_orbax_dir(path)
    np_dtype = _resolve_dtype(dtype)
    checkpointer = ocp.PyTreeCheckpointer()
    with _quiet_absl_metadata_warning():
        try:
            tree = _tree_from_metadata(checkpointer.metadata(path))
        except (FileNotFoundError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"cannot read orbax metadata of {path}: {err}") from err
        if "params" not in tree:
            raise ValueError(
                f"orbax checkpoint {path} has no top-level 'params' item (found keys {sorted(tree)}); "
                "openpi params checkpoints store {'params': tree}"
            )
        item = {"params": tree["params"]}
        # Explicit restore args: numpy arrays, no fallback to the device recorded in _sharding.
        restore_args = jax.tree_util.tree_map(
            lambda _: ocp.ArrayRestoreArgs(restore_type=np.ndarray, dtype=np_dtype), item
        )
        restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args))
    params = _map_leaves(restored["params"], np.asarray)
    return _strip_nnx_value(params)


def save_params_tree(path: PathLike, params: Mapping[str, Any], *, overwrite: bool = False) -> pathlib.Path:
    """Write ``params`` as openpi writes its ``params`` item: a PyTree checkpoint of ``{"params": tree}``.

    The checkpoint is written to a temporary sibling directory and renamed into place, so ``path`` is either
    absent or complete. Arrays are stored as jax.Array on the CPU device, like openpi's trainer does.
    """
    import jax
    import orbax.checkpoint as ocp

    path = pathlib.Path(path).expanduser().resolve()
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (pass overwrite=True to replace it)")
    flatten_params(params)  # validates the structure before anything is written
    cpu = jax.devices("cpu")[0]
    item = {"params": _map_leaves(params, lambda leaf: jax.device_put(np.asarray(leaf), cpu))}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with _quiet_absl_metadata_warning():
            ocp.PyTreeCheckpointer().save(tmp, args=ocp.args.PyTreeSave(item))
        if path.exists():
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old)
        else:
            tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


# --------------------------------------------------------------------------------------------------------
# Safetensors: per-leaf conversion rules
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Dims:
    siglip_heads: int
    llm_kv_heads: int
    expert_kv_heads: int


@dataclass(frozen=True)
class _Rule:
    """One JAX leaf <-> one or more openpi-PyTorch tensors (``{i}`` in the key = scanned layer index)."""

    jax_path: str
    torch_keys: tuple[str, ...]
    # JAX array (one layer's slice when stacked) -> PyTorch tensors, in torch_keys order.
    to_torch: Callable[[np.ndarray], tuple[np.ndarray, ...]]
    # PyTorch tensors (torch_keys, then borrowed) -> JAX array (one layer), given the head-split dims.
    from_torch: Callable[[tuple[np.ndarray, ...], _Dims], np.ndarray]
    # Tensors of other rules read only for their shape (q and o take head_dim from k_proj).
    borrowed: tuple[str, ...] = ()

    @property
    def stacked(self) -> bool:
        return _LAYER_INDEX in self.torch_keys[0]


def _swap_last_two(x: np.ndarray, block: int = 256) -> np.ndarray:
    """Contiguous ``x.swapaxes(-1, -2)``, copied in cache-sized tiles.

    A plain strided copy of a large transposed matrix runs at a fraction of memory bandwidth; the kernels of
    a real PI0 (e.g. 16384 x 2048 MLP weights) are several times faster to convert tile by tile.
    """
    *lead, rows, cols = x.shape
    out = np.empty((*lead, cols, rows), dtype=x.dtype)
    if rows * cols <= 4 * block * block:
        out[...] = x.swapaxes(-1, -2)
        return out
    for i in range(0, rows, block):
        for j in range(0, cols, block):
            out[..., j : j + block, i : i + block] = x[..., i : i + block, j : j + block].swapaxes(-1, -2)
    return out


def _same(a: np.ndarray) -> tuple[np.ndarray, ...]:
    return (a,)


def _same_back(ts: tuple[np.ndarray, ...], _: _Dims) -> np.ndarray:
    return ts[0]


def _dense(a: np.ndarray) -> tuple[np.ndarray, ...]:
    return (_swap_last_two(a),)


def _dense_back(ts: tuple[np.ndarray, ...], _: _Dims) -> np.ndarray:
    return _swap_last_two(ts[0])


def _split_heads(rows: int, heads: int, key: str) -> int:
    if heads <= 0 or rows % heads:
        raise ValueError(f"'{key}': {rows} rows cannot be split into {heads} heads")
    return rows // heads


def _rules(pi05: bool) -> list[_Rule]:
    """The openpi JAX <-> openpi-PyTorch mapping (pi0.md §3.4), generic in N, K, H and widths."""
    vis = _OPENPI_PALI + "vision_tower.vision_model."
    vlayer = vis + "encoder.layers.{i}."
    lm = _OPENPI_PALI + "language_model."
    ex = "paligemma_with_expert.gemma_expert.model."
    img = "PaliGemma/img/"
    enc = img + "Transformer/encoderblock/"
    mha = enc + "MultiHeadDotProductAttention_0/"
    rules = [
        _Rule(
            img + "embedding/kernel",
            (vis + "embeddings.patch_embedding.weight",),
            lambda a: (a.transpose(3, 2, 0, 1),),
            lambda ts, d: ts[0].transpose(2, 3, 1, 0),
        ),
        _Rule(img + "embedding/bias", (vis + "embeddings.patch_embedding.bias",), _same, _same_back),
        _Rule(
            img + "pos_embedding",
            (vis + "embeddings.position_embedding.weight",),
            lambda a: (a.reshape(a.shape[-2], a.shape[-1]),),
            lambda ts, d: ts[0][None],
        ),
        _Rule(img + "Transformer/encoder_norm/scale", (vis + "post_layernorm.weight",), _same, _same_back),
        _Rule(img + "Transformer/encoder_norm/bias", (vis + "post_layernorm.bias",), _same, _same_back),
        _Rule(img + "head/kernel", (_OPENPI_PALI + "multi_modal_projector.linear.weight",), _dense, _dense_back),
        _Rule(img + "head/bias", (_OPENPI_PALI + "multi_modal_projector.linear.bias",), _same, _same_back),
    ]
    for ln_jax, ln_torch in (("LayerNorm_0", "layer_norm1"), ("LayerNorm_1", "layer_norm2")):
        rules.append(_Rule(enc + f"{ln_jax}/scale", (vlayer + f"{ln_torch}.weight",), _same, _same_back))
        rules.append(_Rule(enc + f"{ln_jax}/bias", (vlayer + f"{ln_torch}.bias",), _same, _same_back))
    for dense_jax, fc in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
        rules.append(_Rule(enc + f"MlpBlock_0/{dense_jax}/kernel", (vlayer + f"mlp.{fc}.weight",), _dense, _dense_back))
        rules.append(_Rule(enc + f"MlpBlock_0/{dense_jax}/bias", (vlayer + f"mlp.{fc}.bias",), _same, _same_back))
    for proj_jax, proj_torch in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
        key = vlayer + f"self_attn.{proj_torch}."
        rules.append(
            _Rule(
                mha + f"{proj_jax}/kernel",
                (key + "weight",),
                lambda a: (_swap_last_two(a.reshape(a.shape[0], -1)),),  # (W, N, H) -> (N*H, W)
                lambda ts, d, k=key + "weight": _swap_last_two(ts[0]).reshape(
                    ts[0].shape[1], d.siglip_heads, _split_heads(ts[0].shape[0], d.siglip_heads, k)
                ),
            )
        )
        rules.append(
            _Rule(
                mha + f"{proj_jax}/bias",
                (key + "bias",),
                lambda a: (a.reshape(-1),),
                lambda ts, d, k=key + "bias": ts[0].reshape(
                    d.siglip_heads, _split_heads(ts[0].shape[0], d.siglip_heads, k)
                ),
            )
        )
    out_key = vlayer + "self_attn.out_proj.weight"
    rules.append(
        _Rule(
            mha + "out/kernel",
            (out_key,),
            lambda a: (_swap_last_two(a.reshape(-1, a.shape[-1])),),  # (N, H, W) -> (W, N*H)
            lambda ts, d: _swap_last_two(ts[0]).reshape(
                d.siglip_heads, _split_heads(ts[0].shape[1], d.siglip_heads, out_key), ts[0].shape[0]
            ),
        )
    )
    rules.append(_Rule(mha + "out/bias", (vlayer + "self_attn.out_proj.bias",), _same, _same_back))

    rules.append(_Rule("PaliGemma/llm/embedder/input_embedding", (lm + "embed_tokens.weight",), _same, _same_back))
    for suffix, prefix in (("", lm), ("_1", ex)):
        rules.extend(_gemma_rules(suffix, prefix, expert=suffix == "_1", adaptive_norms=pi05 and suffix == "_1"))

    top = ["action_in_proj", "action_out_proj"]
    top += ["time_mlp_in", "time_mlp_out"] if pi05 else ["state_proj", "action_time_mlp_in", "action_time_mlp_out"]
    for name in top:
        rules.append(_Rule(f"{name}/kernel", (f"{name}.weight",), _dense, _dense_back))
        rules.append(_Rule(f"{name}/bias", (f"{name}.bias",), _same, _same_back))
    return rules


def _gemma_rules(suffix: str, prefix: str, *, expert: bool, adaptive_norms: bool) -> list[_Rule]:
    layers = "PaliGemma/llm/layers/"
    layer = prefix + "layers.{i}."
    q_key, k_key, v_key = (layer + f"self_attn.{p}_proj.weight" for p in "qkv")

    def kv_heads(d: _Dims) -> int:
        return d.expert_kv_heads if expert else d.llm_kv_heads

    def q_back(ts: tuple[np.ndarray, ...], d: _Dims) -> np.ndarray:
        q, k = ts
        head_dim = _split_heads(k.shape[0], kv_heads(d), k_key)
        return _swap_last_two(q.reshape(_split_heads(q.shape[0], head_dim, q_key), head_dim, q.shape[1]))

    def kv_back(ts: tuple[np.ndarray, ...], d: _Dims) -> np.ndarray:
        k, v = ts
        head_dim = _split_heads(k.shape[0], kv_heads(d), k_key)
        return np.stack([_swap_last_two(t.reshape(kv_heads(d), head_dim, t.shape[1])) for t in (k, v)])

    rules = [
        _Rule(
            layers + f"attn/q_einsum{suffix}/w",
            (q_key,),
            lambda a: (_swap_last_two(a).reshape(-1, a.shape[1]),),  # (N, D, H) -> (N*H, D)
            q_back,
            borrowed=(k_key,),
        ),
        _Rule(
            layers + f"attn/kv_einsum{suffix}/w",
            (k_key, v_key),
            lambda a: tuple(_swap_last_two(a[j]).reshape(-1, a.shape[2]) for j in range(2)),  # (2,K,D,H)
            kv_back,
        ),
        _Rule(
            layers + f"attn/attn_vec_einsum{suffix}/w",
            (layer + "self_attn.o_proj.weight",),
            lambda a: (_swap_last_two(a.reshape(-1, a.shape[-1])),),  # (N, H, D) -> (D, N*H)
            lambda ts, d: _swap_last_two(ts[0]).reshape(
                -1, _split_heads(ts[1].shape[0], kv_heads(d), k_key), ts[0].shape[0]
            ),
            borrowed=(k_key,),
        ),
        _Rule(
            layers + f"mlp{suffix}/gating_einsum",
            (layer + "mlp.gate_proj.weight", layer + "mlp.up_proj.weight"),
            lambda a: (_swap_last_two(a[0]), _swap_last_two(a[1])),
            lambda ts, d: np.stack([_swap_last_two(ts[0]), _swap_last_two(ts[1])]),
        ),
        _Rule(layers + f"mlp{suffix}/linear", (layer + "mlp.down_proj.weight",), _dense, _dense_back),
    ]
    norms = (
        (layers + f"pre_attention_norm{suffix}", layer + "input_layernorm"),
        (layers + f"pre_ffw_norm{suffix}", layer + "post_attention_layernorm"),
        (f"PaliGemma/llm/final_norm{suffix}", prefix + "norm"),
    )
    for jax_name, torch_name in norms:
        if adaptive_norms:
            rules.append(_Rule(jax_name + "/Dense_0/kernel", (torch_name + ".dense.weight",), _dense, _dense_back))
            rules.append(_Rule(jax_name + "/Dense_0/bias", (torch_name + ".dense.bias",), _same, _same_back))
        else:
            rules.append(_Rule(jax_name + "/scale", (torch_name + ".weight",), _same, _same_back))
    return rules


# --------------------------------------------------------------------------------------------------------
# Safetensors: key namings
# --------------------------------------------------------------------------------------------------------


def _to_naming(openpi_key: str, naming: str) -> str:
    if naming == "openpi":
        return openpi_key
    if naming == "lerobot":
        return "model." + openpi_key
    if naming == "lerobot_old":
        if openpi_key.startswith(_OPENPI_PALI + "language_model."):
            return _OLD_PALI_LM + openpi_key[len(_OPENPI_PALI + "language_model.") :]
        if openpi_key.startswith(_OPENPI_PALI):
            return _OLD_PALI + openpi_key[len(_OPENPI_PALI) :]
        return "model." + openpi_key
    raise ValueError(f"unknown safetensors naming {naming!r}; expected one of {SAFETENSORS_NAMINGS}")


def _from_naming(key: str, naming: str) -> str:
    if naming == "openpi":
        return key
    if not key.startswith("model."):
        raise KeyError(f"'{key}': expected the 'model.' prefix of the {naming} naming")
    if naming == "lerobot":
        return key[len("model.") :]
    if key.startswith(_OLD_PALI_LM):
        return _OPENPI_PALI + "language_model." + key[len(_OLD_PALI_LM) :]
    if key.startswith(_OLD_PALI):
        rest = key[len(_OLD_PALI) :]
        if rest.startswith("language_model."):
            raise KeyError(f"'{key}': old-lerobot language-model keys live under '{_OLD_PALI_LM}'")
        return _OPENPI_PALI + rest
    return key[len("model.") :]


# Tensors that PyTorch checkpoints carry but the JAX tree does not: the (tied) LM head and the expert's
# unused head / embedding (zeros in hiors checkpoints).
_IGNORED = re.compile(
    r"^(model\.)?paligemma_with_expert\.(paligemma\.(model\.)?(language_model\.)?lm_head\.weight"
    r"|gemma_expert\.lm_head\.weight|gemma_expert\.model\.embed_tokens\.weight)$"
)


def detect_safetensors_naming(keys: list[str] | set[str]) -> str:
    """Which of the three PyTorch namings a key set uses (decided by its PaliGemma keys only)."""
    found = set()
    for key in keys:
        if key.startswith("paligemma_with_expert."):
            found.add("openpi")
        elif key.startswith("model.paligemma_with_expert.paligemma.model."):
            found.add("lerobot")
        elif key.startswith(
            (
                "model.paligemma_with_expert.paligemma.language_model.model.",
                _OLD_PALI + "vision_tower.",
                _OLD_PALI + "multi_modal_projector.",
            )
        ):
            found.add("lerobot_old")
    if len(found) != 1:
        what = "no PaliGemma keys" if not found else f"a mix of {sorted(found)}"
        raise ValueError(
            f"cannot tell the safetensors naming: {what} (expected keys starting with "
            "'paligemma_with_expert.', 'model.paligemma_with_expert.paligemma.model.' or "
            "'model.paligemma_with_expert.paligemma.language_model.model.')"
        )
    return found.pop()


def _detect_pi05(openpi_keys: set[str]) -> bool:
    has_state = "state_proj.weight" in openpi_keys
    has_time = "time_mlp_in.weight" in openpi_keys
    if has_state == has_time:
        raise ValueError(
            "cannot tell PI0 from PI0.5: expected exactly one of 'state_proj.weight' (PI0) and "
            f"'time_mlp_in.weight' (PI0.5), found {'both' if has_state else 'neither'}"
        )
    return has_time


# --------------------------------------------------------------------------------------------------------
# Safetensors: files
# --------------------------------------------------------------------------------------------------------


def _safetensors_files(path: pathlib.Path) -> list[pathlib.Path]:
    if not path.exists():
        raise FileNotFoundError(f"safetensors path {path} does not exist")
    if path.is_file():
        return [path]
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [path / name for name in sorted(set(weight_map.values()))]
    raise FileNotFoundError(f"{path} holds neither model.safetensors nor model.safetensors.index.json")


class _TensorSource:
    """Lazy access to the tensors of one or more safetensors files, keyed by name."""

    def __init__(self, files: list[pathlib.Path]):
        from safetensors import safe_open

        self._stack = contextlib.ExitStack()
        self._where: dict[str, Any] = {}
        for file in files:
            try:
                handle = self._stack.enter_context(safe_open(str(file), framework="numpy"))
            except Exception as err:  # safetensors raises its own error types for truncated/foreign files
                self._stack.close()
                raise ValueError(f"{file} is not a readable safetensors file: {err}") from err
            for key in handle.keys():
                if key in self._where:
                    raise ValueError(f"tensor '{key}' appears in more than one safetensors file ({file})")
                self._where[key] = handle

    def keys(self) -> set[str]:
        return set(self._where)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._where[key].get_slice(key).get_shape())

    def get(self, key: str) -> np.ndarray:
        return self._where[key].get_tensor(key)

    def close(self) -> None:
        self._stack.close()


def _layer_count(openpi_keys: set[str], template: str) -> int:
    pattern = re.compile(re.escape(template).replace(re.escape(_LAYER_INDEX), r"(\d+)") + "$")
    indices = sorted(int(m.group(1)) for key in openpi_keys if (m := pattern.match(key)))
    if not indices:
        raise KeyError(f"missing tensor '{template.replace(_LAYER_INDEX, '0')}'")
    return indices[-1] + 1


def _infer_dims(
    source: _TensorSource,
    to_stored: Callable[[str], str],
    expected: Mapping[str, Any] | None,
    siglip_heads: int | None,
    num_kv_heads: int,
) -> _Dims:
    vis_q = to_stored(_OPENPI_PALI + "vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight")
    if expected is not None:
        flat = flatten_params(expected)
        q = flat.get("PaliGemma/img/Transformer/encoderblock/MultiHeadDotProductAttention_0/query/kernel")
        kv = flat.get("PaliGemma/llm/layers/attn/kv_einsum/w")
        kv1 = flat.get("PaliGemma/llm/layers/attn/kv_einsum_1/w")
        if q is None or kv is None or kv1 is None:
            raise ValueError("`expected` is not a PI0/PI0.5 parameter tree (no SigLIP query kernel or kv_einsum)")
        return _Dims(siglip_heads=q.shape[-2], llm_kv_heads=kv.shape[-3], expert_kv_heads=kv1.shape[-3])
    if siglip_heads is None:
        if vis_q not in source.keys():
            raise KeyError(f"missing tensor '{vis_q}'")
        width = source.shape(vis_q)[1]
        if width not in _KNOWN_SIGLIP_HEADS:
            raise ValueError(
                f"SigLIP width {width} is not a known variant: pass siglip_num_heads= (or expected=) "
                "to split its fused q/k/v projections into heads"
            )
        siglip_heads = _KNOWN_SIGLIP_HEADS[width]
    return _Dims(siglip_heads=siglip_heads, llm_kv_heads=num_kv_heads, expert_kv_heads=num_kv_heads)


def load_safetensors_params(
    path_or_dir: PathLike,
    dtype: Any = None,
    *,
    expected: Mapping[str, Any] | None = None,
    siglip_num_heads: int | None = None,
    num_kv_heads: int = 1,
    naming: str | None = None,
) -> ParamTree:
    """Load a PI0 / PI0.5 ``model.safetensors`` (openpi-PyTorch, lerobot or old lerobot/hiors naming).

    Returns the openpi pure-dict tree (per-layer tensors stacked on a leading depth axis). PI0 vs PI0.5 and
    the naming are detected from the keys. Strict: every tensor must be used (apart from LM heads and the
    expert's embedding, which the JAX model does not have), every needed tensor must exist, and all layers
    must agree in shape and dtype; errors name the offending key.

    The head split of fused projections cannot be read from PyTorch shapes: give ``expected`` (a tree of
    arrays or ShapeDtypeStructs, e.g. ``jax.eval_shape`` of the model init, also checked leaf by leaf), or
    ``siglip_num_heads`` for an unknown SigLIP width; Gemma uses ``num_kv_heads`` (1 in every openpi variant).
    """
    path = pathlib.Path(path_or_dir).expanduser().resolve()
    np_dtype = _resolve_dtype(dtype)
    source = _TensorSource(_safetensors_files(path))
    try:
        stored_keys = source.keys()
        naming = naming or detect_safetensors_naming(stored_keys)
        if naming not in SAFETENSORS_NAMINGS:
            raise ValueError(f"unknown safetensors naming {naming!r}; expected one of {SAFETENSORS_NAMINGS}")
        to_openpi = {}
        for key in stored_keys:
            if _IGNORED.match(key):
                continue
            to_openpi[_from_naming(key, naming)] = key
        openpi_keys = set(to_openpi)
        pi05 = _detect_pi05(openpi_keys)

        def stored(openpi_key: str) -> str:
            return to_openpi.get(openpi_key, _to_naming(openpi_key, naming))

        dims = _infer_dims(source, stored, expected, siglip_num_heads, num_kv_heads)
        rules = _rules(pi05)
        depths = {
            "vision": _layer_count(
                openpi_keys, _OPENPI_PALI + "vision_tower.vision_model.encoder.layers.{i}.layer_norm1.weight"
            ),
            "llm": _layer_count(openpi_keys, _OPENPI_PALI + "language_model.layers.{i}.input_layernorm.weight"),
        }
        wanted: set[str] = set()
        for rule in rules:
            for template in rule.torch_keys:
                depth = depths["vision" if "vision_tower" in template else "llm"]
                names = [template.format(i=i) for i in range(depth)] if rule.stacked else [template]
                wanted.update(names)
        missing = sorted(stored(k) for k in wanted - openpi_keys)
        unknown = sorted(to_openpi[k] for k in openpi_keys - wanted)
        if missing or unknown:
            parts = []
            if missing:
                parts.append(f"missing tensors {missing[:10]}{' …' if len(missing) > 10 else ''}")
            if unknown:
                parts.append(f"unknown tensors {unknown[:10]}{' …' if len(unknown) > 10 else ''}")
            raise KeyError(f"{path} ({naming} naming, {'PI0.5' if pi05 else 'PI0'}): " + "; ".join(parts))

        flat: dict[str, np.ndarray] = {}
        for rule in rules:
            depth = depths["vision" if "vision_tower" in rule.torch_keys[0] else "llm"]
            if rule.stacked:
                flat[rule.jax_path] = _stack_layers(rule, source, stored, dims, depth, np_dtype)
            else:
                value = _convert(rule, source, stored, dims, None)
                flat[rule.jax_path] = value if np_dtype is None else value.astype(np_dtype)
    finally:
        source.close()
    params = unflatten_params(flat)
    if expected is not None:
        check_params_match(params, expected)
    return params


def _convert(
    rule: _Rule, source: _TensorSource, stored: Callable[[str], str], dims: _Dims, i: int | None
) -> np.ndarray:
    keys = [stored(t.format(i=i) if i is not None else t) for t in rule.torch_keys + rule.borrowed]
    tensors = tuple(source.get(k) for k in keys)
    for key, tensor in zip(keys, tensors, strict=True):
        if tensor.ndim != _torch_rank(key):
            raise ValueError(f"tensor '{key}' has shape {tuple(tensor.shape)}, expected rank {_torch_rank(key)}")
        if not np.issubdtype(tensor.dtype, np.floating) and tensor.dtype.name != "bfloat16":
            raise ValueError(f"tensor '{key}' has dtype {tensor.dtype}, expected a floating type")
    try:
        return np.ascontiguousarray(rule.from_torch(tensors, dims))
    except ValueError as err:
        shapes = {k: tuple(t.shape) for k, t in zip(keys, tensors, strict=True)}
        raise ValueError(f"cannot convert {shapes} to '{rule.jax_path}': {err}") from err


def _torch_rank(key: str) -> int:
    if key.endswith("patch_embedding.weight"):
        return 4
    if key.endswith(".bias") or re.search(r"norm[12]?\.weight$", key):
        return 1
    return 2


def _stack_layers(
    rule: _Rule,
    source: _TensorSource,
    stored: Callable[[str], str],
    dims: _Dims,
    depth: int,
    dtype: np.dtype | None,
) -> np.ndarray:
    """Convert layer by layer straight into the stacked (and cast) output: one full-size copy, not three."""
    first = _convert(rule, source, stored, dims, 0)
    out = np.empty((depth, *first.shape), dtype=first.dtype if dtype is None else dtype)
    out[0] = first
    for i in range(1, depth):
        layer = _convert(rule, source, stored, dims, i)
        if layer.shape != first.shape or layer.dtype != first.dtype:
            key = stored(rule.torch_keys[0].format(i=i))
            raise ValueError(
                f"'{key}' gives {layer.shape} {layer.dtype} for '{rule.jax_path}' but layer 0 gives "
                f"{first.shape} {first.dtype}"
            )
        out[i] = layer
    return out


def check_params_match(params: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    """Raise naming the first differing key if the two trees differ in key set or leaf shapes."""
    got, want = flatten_params(params), flatten_params(expected)
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing or extra:
        raise KeyError(f"parameter tree mismatch: missing {missing[:10]}, unexpected {extra[:10]}")
    for key in sorted(want):
        if tuple(got[key].shape) != tuple(want[key].shape):
            raise ValueError(f"parameter '{key}' has shape {tuple(got[key].shape)}, expected {tuple(want[key].shape)}")


def save_safetensors_params(
    path: PathLike, params: Mapping[str, Any], naming: str = "openpi", *, overwrite: bool = False
) -> pathlib.Path:
    """Write a pure-dict PI0 / PI0.5 tree as ``model.safetensors`` in one of the PyTorch namings.

    ``path`` is the file, or a directory to hold ``model.safetensors``. Written atomically (temp + rename).
    Dtypes are kept per leaf; the tied LM head is not written (openpi-PyTorch and lerobot drop it too).
    """
    from safetensors.numpy import save_file

    if naming not in SAFETENSORS_NAMINGS:
        raise ValueError(f"unknown safetensors naming {naming!r}; expected one of {SAFETENSORS_NAMINGS}")
    path = pathlib.Path(path).expanduser().resolve()
    if path.is_dir() or not path.suffix:
        path = path / "model.safetensors"
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (pass overwrite=True to replace it)")
    flat = {k: np.asarray(v) for k, v in flatten_params(params).items()}
    pi05 = "time_mlp_in/kernel" in flat
    rules = _rules(pi05)
    known = {rule.jax_path for rule in rules}
    missing, extra = sorted(known - set(flat)), sorted(set(flat) - known)
    if missing or extra:
        raise KeyError(
            f"not a {'PI0.5' if pi05 else 'PI0'} parameter tree: missing {missing[:10]}, unexpected {extra[:10]}"
        )
    tensors: dict[str, np.ndarray] = {}
    for rule in rules:
        value = flat[rule.jax_path]
        slices = [value[i] for i in range(value.shape[0])] if rule.stacked else [value]
        for i, piece in enumerate(slices):
            for template, tensor in zip(rule.torch_keys, rule.to_torch(piece), strict=True):
                key = _to_naming(template.format(i=i) if rule.stacked else template, naming)
                tensors[key] = np.ascontiguousarray(tensor)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        tmp.chmod(0o644)  # the writer creates the file owner-only
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
