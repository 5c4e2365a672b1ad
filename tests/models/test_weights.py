"""Weights I/O against the checkpoints openpi itself wrote (../shared/fixtures/openpi_pi*_tiny)."""

import json
import warnings

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from hiors_jax.models import weights as W

FIXTURES = ("openpi_pi0_tiny", "openpi_pi05_tiny")
CKPT_DIRS = ("params", "params_bf16", "params_nnx_state")
OPENPI_PALI = "paligemma_with_expert.paligemma.model."
EXPERT = "paligemma_with_expert.gemma_expert.model."


def _bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _trees_bitwise_equal(a, b) -> None:
    fa, fb = W.flatten_params(a), W.flatten_params(b)
    assert set(fa) == set(fb)
    for key in fa:
        assert _bits_equal(np.asarray(fa[key]), np.asarray(fb[key])), key


@pytest.fixture(scope="module", params=FIXTURES)
def fixture(request, shared_fixtures):
    root = shared_fixtures / request.param
    checks = json.loads((root / "checks.json").read_text())
    trees = {name: W.restore_params_tree(root / name) for name in CKPT_DIRS}
    return {"root": root, "checks": checks, "trees": trees, "pi05": checks["config"]["pi05"]}


# --------------------------------------------------------------------------------------------------------
# orbax


@pytest.mark.parametrize("ckpt", CKPT_DIRS)
def test_restore_matches_openpi_shapes_and_dtypes(fixture, ckpt):
    tree = fixture["trees"][ckpt]
    flat = W.flatten_params(tree)
    expected = {k: tuple(v) for k, v in fixture["checks"]["param_shapes"].items()}
    assert {k: v.shape for k, v in flat.items()} == expected
    assert all(isinstance(v, np.ndarray) for v in flat.values())
    want_dtype = np.dtype(ml_dtypes.bfloat16) if ckpt == "params_bf16" else np.dtype(np.float32)
    assert {v.dtype for v in flat.values()} == {want_dtype}
    assert W.count_params(tree) == fixture["checks"]["num_params"]


def test_nnx_state_value_key_is_stripped(fixture):
    _trees_bitwise_equal(fixture["trees"]["params_nnx_state"], fixture["trees"]["params"])


def test_restore_with_dtype_casts_like_openpi(fixture):
    # openpi: restoring params/ with dtype=bfloat16 gives exactly the bits of params_bf16/.
    as_bf16 = W.restore_params_tree(fixture["root"] / "params", dtype="bfloat16")
    _trees_bitwise_equal(as_bf16, fixture["trees"]["params_bf16"])
    as_f32 = W.flatten_params(W.restore_params_tree(fixture["root"] / "params_bf16", dtype=np.float32))
    for key, leaf in W.flatten_params(fixture["trees"]["params_bf16"]).items():
        assert as_f32[key].dtype == np.float32
        np.testing.assert_array_equal(as_f32[key], leaf.astype(np.float32))


def test_restore_passes_restore_args_so_no_sharding_fallback_warning(shared_fixtures):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        W.restore_params_tree(shared_fixtures / "openpi_pi0_tiny" / "params")
    assert not [w for w in caught if "harding" in str(w.message)], [str(w.message) for w in caught]


def test_orbax_011_metadata_tree_is_accepted():
    # orbax 0.11 returns the tree itself; 0.12 a StepMetadata with item_metadata.tree.
    tree = {"params": {"a": 1}}

    class Item:
        def __init__(self, t):
            self.tree = t

    class Step:
        item_metadata = Item(tree)

    assert W._tree_from_metadata(tree) is tree
    assert W._tree_from_metadata(Step()) is tree
    with pytest.raises(ValueError, match="unexpected orbax metadata"):
        W._tree_from_metadata([1, 2])


def test_restore_errors_are_clear(tmp_path, shared_fixtures):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        W.restore_params_tree(tmp_path / "nope")
    (tmp_path / "not_ckpt").mkdir()
    (tmp_path / "not_ckpt" / "weights.bin").write_bytes(b"\0" * 8)
    with pytest.raises(ValueError, match="not an orbax checkpoint"):
        W.restore_params_tree(tmp_path / "not_ckpt")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        W.restore_params_tree(tmp_path / "file")
    # The checkpoint root instead of its params/ item: the error points at params/.
    with pytest.raises(ValueError, match="pass .*params"):
        W.restore_params_tree(shared_fixtures / "openpi_pi0_tiny" / "params" / "..")


def test_restore_without_params_item_is_rejected(tmp_path):
    import orbax.checkpoint as ocp

    ocp.PyTreeCheckpointer().save(tmp_path / "other", args=ocp.args.PyTreeSave({"weights": {"w": np.ones(3)}}))
    with pytest.raises(ValueError, match="no top-level 'params'"):
        W.restore_params_tree(tmp_path / "other")


def test_value_key_kept_unless_every_leaf_has_it(tmp_path):
    tree = {"layer": {"value": np.arange(3, dtype=np.float32)}, "bias": np.ones(2, np.float32)}
    W.save_params_tree(tmp_path / "params", tree)
    back = W.restore_params_tree(tmp_path / "params")
    assert set(W.flatten_params(back)) == {"layer/value", "bias"}
    np.testing.assert_array_equal(back["layer"]["value"], tree["layer"]["value"])


@pytest.mark.parametrize("ckpt", ["params", "params_bf16"])
def test_save_params_tree_round_trip_and_openpi_style_restore(fixture, ckpt, tmp_path):
    import jax
    import orbax.checkpoint as ocp

    tree = fixture["trees"][ckpt]
    out = W.save_params_tree(tmp_path / "params", tree)
    assert out == (tmp_path / "params").resolve()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params"]  # no temp dir left behind
    _trees_bitwise_equal(W.restore_params_tree(out), tree)
    # What openpi's restore_params does: metadata tree -> {"params": ...} with explicit jax.Array restore args.
    checkpointer = ocp.PyTreeCheckpointer()
    item = {"params": W._tree_from_metadata(checkpointer.metadata(out))["params"]}
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    args = jax.tree_util.tree_map(lambda _: ocp.ArrayRestoreArgs(sharding=sharding, restore_type=jax.Array), item)
    restored = checkpointer.restore(out, args=ocp.args.PyTreeRestore(item=item, restore_args=args))["params"]
    _trees_bitwise_equal(W._map_leaves(restored, np.asarray), tree)


def test_save_params_tree_refuses_to_clobber_unless_asked(tmp_path):
    first = {"a": np.zeros(2, np.float32)}
    second = {"a": np.ones(2, np.float32)}
    W.save_params_tree(tmp_path / "params", first)
    with pytest.raises(FileExistsError):
        W.save_params_tree(tmp_path / "params", second)
    W.save_params_tree(tmp_path / "params", second, overwrite=True)
    np.testing.assert_array_equal(W.restore_params_tree(tmp_path / "params")["a"], second["a"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params"]


# --------------------------------------------------------------------------------------------------------
# safetensors


@pytest.mark.parametrize("naming", W.SAFETENSORS_NAMINGS)
@pytest.mark.parametrize("ckpt", ["params", "params_bf16"])
def test_safetensors_round_trip_is_bitwise(fixture, naming, ckpt, tmp_path):
    tree = fixture["trees"][ckpt]
    path = W.save_safetensors_params(tmp_path, tree, naming)
    assert path == (tmp_path / "model.safetensors").resolve()
    # Shapes from a template tree, or just the SigLIP head count: same result.
    _trees_bitwise_equal(W.load_safetensors_params(tmp_path, expected=fixture["trees"]["params"]), tree)
    _trees_bitwise_equal(W.load_safetensors_params(path, siglip_num_heads=2), tree)
    assert W.detect_safetensors_naming(set(load_file(path))) == naming


def test_safetensors_dtype_cast(fixture, tmp_path):
    path = W.save_safetensors_params(tmp_path, fixture["trees"]["params"])
    as_bf16 = W.load_safetensors_params(path, dtype="bfloat16", siglip_num_heads=2)
    _trees_bitwise_equal(as_bf16, fixture["trees"]["params_bf16"])  # round to nearest even, like orbax


def test_openpi_pytorch_key_layout(fixture, tmp_path):
    """The file has the documented keys, and each tensor acts like the JAX op it came from (y = x @ W.T)."""
    tree = fixture["trees"]["params"]
    flat = W.flatten_params(tree)
    st = load_file(W.save_safetensors_params(tmp_path, tree))
    rng = np.random.default_rng(0)
    layer = 1

    # Gemma q / k / v / o: PyTorch Linear over the model width vs openpi's einsums.
    q = flat["PaliGemma/llm/layers/attn/q_einsum/w"][layer]  # (N, D, H)
    kv = flat["PaliGemma/llm/layers/attn/kv_einsum/w"][layer]  # (2, K, D, H)
    o = flat["PaliGemma/llm/layers/attn/attn_vec_einsum/w"][layer]  # (N, H, D)
    n, d, h = q.shape
    x = rng.normal(size=(5, d)).astype(np.float32)
    pre = f"{OPENPI_PALI}language_model.layers.{layer}.self_attn."
    np.testing.assert_allclose(
        (x @ st[pre + "q_proj.weight"].T).reshape(5, n, h), np.einsum("td,ndh->tnh", x, q), rtol=1e-5, atol=1e-5
    )
    for j, name in enumerate(("k_proj", "v_proj")):
        np.testing.assert_allclose(
            (x @ st[pre + f"{name}.weight"].T).reshape(5, -1, h),
            np.einsum("td,kdh->tkh", x, kv[j]),
            rtol=1e-5,
            atol=1e-5,
        )
    heads = rng.normal(size=(5, n, h)).astype(np.float32)
    np.testing.assert_allclose(
        heads.reshape(5, n * h) @ st[pre + "o_proj.weight"].T, np.einsum("tnh,nhd->td", heads, o), rtol=1e-5, atol=1e-5
    )

    # Expert MLP: gate/up from gating_einsum[0]/[1], down from linear.
    gating = flat["PaliGemma/llm/layers/mlp_1/gating_einsum"][layer]
    xe = rng.normal(size=(3, gating.shape[1])).astype(np.float32)
    mlp = f"{EXPERT}layers.{layer}.mlp."
    np.testing.assert_allclose(xe @ st[mlp + "gate_proj.weight"].T, xe @ gating[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(xe @ st[mlp + "up_proj.weight"].T, xe @ gating[1], rtol=1e-5, atol=1e-5)

    # SigLIP fused q and out projections over heads.
    vis = f"{OPENPI_PALI}vision_tower.vision_model."
    sq = flat["PaliGemma/img/Transformer/encoderblock/MultiHeadDotProductAttention_0/query/kernel"][layer]
    sout = flat["PaliGemma/img/Transformer/encoderblock/MultiHeadDotProductAttention_0/out/kernel"][layer]
    xv = rng.normal(size=(4, sq.shape[0])).astype(np.float32)
    attn = f"{vis}encoder.layers.{layer}.self_attn."
    np.testing.assert_allclose(
        (xv @ st[attn + "q_proj.weight"].T).reshape(4, *sq.shape[1:]),
        np.einsum("td,dnh->tnh", xv, sq),
        rtol=1e-5,
        atol=1e-5,
    )
    hv = rng.normal(size=(4, *sout.shape[:2])).astype(np.float32)
    np.testing.assert_allclose(
        hv.reshape(4, -1) @ st[attn + "out_proj.weight"].T, np.einsum("tnh,nhd->td", hv, sout), rtol=1e-5, atol=1e-5
    )

    # Patch embedding: PyTorch conv weight (O, I, kh, kw) vs JAX HWIO on one 14x14 patch.
    kernel = flat["PaliGemma/img/embedding/kernel"]
    patch = rng.normal(size=kernel.shape[:3]).astype(np.float32)  # (kh, kw, I)
    torch_out = np.einsum("oikl,kli->o", st[vis + "embeddings.patch_embedding.weight"], patch)
    np.testing.assert_allclose(torch_out, np.einsum("kli,klio->o", patch, kernel), rtol=1e-5, atol=1e-5)
    assert st[vis + "embeddings.position_embedding.weight"].shape == flat["PaliGemma/img/pos_embedding"].shape[1:]

    if fixture["pi05"]:
        assert f"{EXPERT}layers.0.input_layernorm.dense.weight" in st and "time_mlp_in.weight" in st
        assert "state_proj.weight" not in st
    else:
        assert f"{EXPERT}layers.0.input_layernorm.weight" in st and "state_proj.weight" in st
    np.testing.assert_array_equal(st["action_out_proj.weight"], flat["action_out_proj/kernel"].T)
    assert not any("lm_head" in k for k in st)


def test_lerobot_namings_use_documented_prefixes(fixture, tmp_path):
    tree = fixture["trees"]["params"]
    new = set(load_file(W.save_safetensors_params(tmp_path / "new", tree, "lerobot")))
    old = set(load_file(W.save_safetensors_params(tmp_path / "old", tree, "lerobot_old")))
    assert "model.paligemma_with_expert.paligemma.model.language_model.layers.1.self_attn.q_proj.weight" in new
    assert "model.paligemma_with_expert.paligemma.language_model.model.layers.1.self_attn.q_proj.weight" in old
    assert "model.paligemma_with_expert.paligemma.language_model.model.embed_tokens.weight" in old
    assert "model.paligemma_with_expert.paligemma.vision_tower.vision_model.post_layernorm.weight" in old
    expert_key = "model.paligemma_with_expert.gemma_expert.model.layers.0.mlp.down_proj.weight"
    assert expert_key in old and expert_key in new
    assert "model.action_in_proj.weight" in old and "model.action_in_proj.weight" in new


@pytest.mark.parametrize("naming", W.SAFETENSORS_NAMINGS)
def test_lm_heads_and_expert_embedding_are_ignored(fixture, naming, tmp_path):
    tree = fixture["trees"]["params"]
    path = W.save_safetensors_params(tmp_path, tree, naming)
    tensors = load_file(path)
    vocab, width = W.flatten_params(tree)["PaliGemma/llm/embedder/input_embedding"].shape
    extra = {
        "openpi": ["paligemma_with_expert.paligemma.lm_head.weight"],
        "lerobot": ["model.paligemma_with_expert.paligemma.lm_head.weight"],
        "lerobot_old": [
            "model.paligemma_with_expert.paligemma.language_model.lm_head.weight",
            "model.paligemma_with_expert.gemma_expert.lm_head.weight",
            "model.paligemma_with_expert.gemma_expert.model.embed_tokens.weight",
        ],
    }[naming]
    for key in extra:
        tensors[key] = np.zeros((vocab, width), np.float32)
    save_file(tensors, str(path))
    _trees_bitwise_equal(W.load_safetensors_params(path, siglip_num_heads=2), tree)


def test_sharded_safetensors_with_index(fixture, tmp_path):
    tree = fixture["trees"]["params_bf16"]
    tensors = load_file(W.save_safetensors_params(tmp_path / "single", tree))
    keys = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    out = tmp_path / "sharded"
    out.mkdir()
    for name, names in shards.items():
        save_file({k: tensors[k] for k in names}, str(out / name))
    weight_map = {k: name for name, names in shards.items() for k in names}
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    _trees_bitwise_equal(W.load_safetensors_params(out, siglip_num_heads=2), tree)


@pytest.fixture()
def openpi_file(fixture, tmp_path):
    path = W.save_safetensors_params(tmp_path / "base", fixture["trees"]["params"])
    return path, load_file(path)


def _write(tmp_path, tensors):
    path = tmp_path / "edited.safetensors"
    save_file(tensors, str(path))
    return path


def test_missing_tensor_is_named(openpi_file, tmp_path):
    _, tensors = openpi_file
    key = f"{EXPERT}layers.1.mlp.down_proj.weight"
    del tensors[key]
    with pytest.raises(KeyError, match=key.replace(".", r"\.")):
        W.load_safetensors_params(_write(tmp_path, tensors), siglip_num_heads=2)


def test_unknown_tensor_is_named(openpi_file, tmp_path):
    _, tensors = openpi_file
    tensors["paligemma_with_expert.paligemma.model.language_model.layers.0.self_attn.rotary.weight"] = np.ones(3)
    with pytest.raises(KeyError, match=r"unknown tensors .*rotary"):
        W.load_safetensors_params(_write(tmp_path, tensors), siglip_num_heads=2)


def test_extra_layer_is_reported(openpi_file, tmp_path):
    _, tensors = openpi_file
    tensors[f"{OPENPI_PALI}language_model.layers.2.input_layernorm.weight"] = np.ones(64, np.float32)
    with pytest.raises(KeyError, match="missing tensors"):
        W.load_safetensors_params(_write(tmp_path, tensors), siglip_num_heads=2)


def test_wrong_shape_is_named(openpi_file, tmp_path, fixture):
    _, tensors = openpi_file
    key = f"{OPENPI_PALI}language_model.layers.1.mlp.down_proj.weight"
    tensors[key] = np.ascontiguousarray(tensors[key].T)  # one layer stored the other way round
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        W.load_safetensors_params(_write(tmp_path, tensors), siglip_num_heads=2)
    key = "action_in_proj.bias"
    tensors = load_file(openpi_file[0])
    tensors[key] = np.ones((2, 2), np.float32)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        W.load_safetensors_params(_write(tmp_path, tensors), siglip_num_heads=2)


def test_layer_dtype_mismatch_is_named(openpi_file, tmp_path):
    _, tensors = openpi_file
    key = f"{EXPERT}layers.1.self_attn.o_proj.weight"
    tensors[key] = tensors[key].astype(np.float16)
    with pytest.raises(ValueError, match=key.replace(".", r"\.") + ".*float16.*layer 0 gives .*float32"):
        W.load_safetensors_params(_write(tmp_path, tensors), siglip_num_heads=2)


def test_shape_mismatch_against_expected_tree_is_named(openpi_file, tmp_path, fixture):
    _, tensors = openpi_file
    key = "action_out_proj.weight"
    tensors[key] = np.ones((32, 16), np.float32)
    tensors["action_out_proj.bias"] = np.ones(32, np.float32)
    with pytest.raises(ValueError, match="action_out_proj/kernel"):
        W.load_safetensors_params(_write(tmp_path, tensors), expected=fixture["trees"]["params"])


def test_pi0_pi05_detection_errors(openpi_file, tmp_path):
    _, tensors = openpi_file
    both = dict(tensors, **{"state_proj.weight": np.ones((32, 32), np.float32)})
    both["time_mlp_in.weight"] = np.ones((32, 32), np.float32)
    with pytest.raises(ValueError, match="PI0 from PI0.5"):
        W.load_safetensors_params(_write(tmp_path, both), siglip_num_heads=2)


def test_naming_errors(openpi_file, tmp_path):
    _, tensors = openpi_file
    mixed = dict(tensors)
    mixed["model.paligemma_with_expert.paligemma.model.language_model.norm.weight"] = np.ones(64, np.float32)
    with pytest.raises(ValueError, match="cannot tell the safetensors naming"):
        W.load_safetensors_params(_write(tmp_path, mixed), siglip_num_heads=2)
    with pytest.raises(ValueError, match="no PaliGemma keys"):
        W.load_safetensors_params(_write(tmp_path, {"state_proj.weight": np.ones((2, 2), np.float32)}))


def test_unknown_siglip_width_needs_head_count(openpi_file):
    path, _ = openpi_file
    with pytest.raises(ValueError, match="siglip_num_heads"):
        W.load_safetensors_params(path)
    with pytest.raises(ValueError, match="cannot be split into 3 heads"):
        W.load_safetensors_params(path, siglip_num_heads=3)


def test_missing_safetensors_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        W.load_safetensors_params(tmp_path / "none.safetensors")
    with pytest.raises(FileNotFoundError, match="neither model.safetensors"):
        W.load_safetensors_params(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        W.load_safetensors_params(tmp_path)


def test_save_safetensors_rejects_foreign_trees(tmp_path, fixture):
    with pytest.raises(KeyError, match="missing"):
        W.save_safetensors_params(tmp_path, {"a": {"b": np.ones(2)}})
    with pytest.raises(ValueError, match="unknown safetensors naming"):
        W.save_safetensors_params(tmp_path, fixture["trees"]["params"], naming="hf")
    W.save_safetensors_params(tmp_path, fixture["trees"]["params"])
    with pytest.raises(FileExistsError):
        W.save_safetensors_params(tmp_path, fixture["trees"]["params"])


# --------------------------------------------------------------------------------------------------------
# tree helpers


def test_flatten_unflatten_round_trip_and_errors():
    tree = {"a": {"b": np.ones(2), "c": {"d": np.zeros((2, 3))}}, "e": np.ones(1)}
    flat = W.flatten_params(tree)
    assert sorted(flat) == ["a/b", "a/c/d", "e"]
    back = W.unflatten_params(flat)
    assert back["a"]["c"]["d"] is tree["a"]["c"]["d"] and back["e"] is tree["e"]
    assert W.count_params(tree) == 2 + 6 + 1
    with pytest.raises(ValueError, match="goes through leaf"):
        W.unflatten_params({"a": 1, "a/b": 2})
    with pytest.raises(ValueError, match="also a sub-tree"):
        W.unflatten_params({"a/b": 1, "a": 2})
    with pytest.raises(ValueError, match="malformed"):
        W.unflatten_params({"a//b": 1})
    with pytest.raises(ValueError, match="empty sub-tree"):
        W.flatten_params({"a": {}})


@pytest.mark.parametrize("pi05", [False, True])
def test_real_head_geometry_matches_the_model_tree(pi05, tmp_path):
    """So400m's fused SigLIP q/k/v (1152 wide -> 16 heads of 72) and Gemma's 8x256 heads with one KV head,
    split without any hint, give exactly the tree the port's model expects (small widths elsewhere)."""
    import jax

    from hiors_jax.models import config as C
    from hiors_jax.models import pi0

    cfg = C.Pi0Config(
        vlm=C.GemmaConfig(width=256, depth=1, mlp_dim=32, num_heads=8, num_kv_heads=1, head_dim=256),
        expert=C.GemmaConfig(width=128, depth=1, mlp_dim=32, num_heads=8, num_kv_heads=1, head_dim=256),
        vision=C.SiglipConfig(width=1152, depth=1, mlp_dim=32, num_heads=16),
        vocab_size=64,
        pi05=pi05,
        dtype="float32",
    )
    shapes = pi0.param_shapes(cfg)
    rng = np.random.default_rng(0)
    tree = jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape).astype(ml_dtypes.bfloat16), shapes)
    path = W.save_safetensors_params(tmp_path, tree, "lerobot_old")
    loaded = W.load_safetensors_params(path)
    W.check_params_match(loaded, shapes)
    _trees_bitwise_equal(loaded, tree)


def test_safetensors_weights_reproduce_openpi_velocity(fixture, tmp_path):
    """End to end: openpi's checkpoint -> old-lerobot/hiors safetensors -> loader -> the port's model gives
    openpi's v_t for the fixture inputs."""
    from hiors_jax.models import pi0

    path = W.save_safetensors_params(tmp_path, fixture["trees"]["params"], "lerobot_old")
    params = W.load_safetensors_params(path, siglip_num_heads=2)
    io = np.load(fixture["root"] / "io.npz")
    config = pi0.infer_config(params, max_token_len=io["tokenized_prompt"].shape[1], dtype="float32")
    obs = pi0.Observation.from_dict(
        {
            "images": {k: io[f"image_{k}"] for k in config.image_keys},
            "image_masks": {k: io[f"image_mask_{k}"] for k in config.image_keys},
            "state": io["state"],
            "tokenized_prompt": io["tokenized_prompt"],
            "tokenized_prompt_mask": io["tokenized_prompt_mask"],
        }
    )
    v_t = np.asarray(pi0.predict_velocity(config, params, obs, io["x_t"], io["time"]))
    np.testing.assert_allclose(v_t, io["v_t"], rtol=0, atol=1e-4)
