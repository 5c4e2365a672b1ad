"""Images, norm stats, padding and observation -> model inputs (pi0.md §4, §7.2 items 10-11)."""

import importlib.util
import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from hiors_jax.models import preprocessing as P
from hiors_jax.models.tokenizer import PaligemmaTokenizer

_spec = importlib.util.spec_from_file_location(
    "tokenizer_helpers", pathlib.Path(__file__).with_name("tokenizer_helpers.py")
)
tokenizer_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tokenizer_helpers)


def _gradient(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([yy * 255 // max(h - 1, 1), xx * 255 // max(w - 1, 1), np.full_like(xx, 128)], -1).astype(np.uint8)


# --------------------------------------------------------------------------------------------------------
# resize_with_pad


def test_480x640_gives_168x224_content_centred_with_28px_bars():
    image = np.full((480, 640, 3), 200, dtype=np.uint8)
    out = P.resize_with_pad(image, 224, 224)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    assert np.all(out[:28] == 0) and np.all(out[196:] == 0)
    assert np.all(out[28:196] == 200)


def test_content_is_pil_bilinear_of_the_whole_image():
    image = _gradient(480, 640)
    out = P.resize_with_pad(image, 224, 224)
    pil = np.asarray(Image.fromarray(image).resize((224, 168), resample=Image.BILINEAR))
    np.testing.assert_array_equal(out[28:196], pil)


def test_odd_padding_puts_the_extra_pixel_at_the_bottom_and_right():
    # ratio = 229/224: content 97 x 224, 127 rows of padding -> 63 on top, 64 below.
    out = P.resize_with_pad(np.full((100, 229, 3), 50, np.uint8), 224, 224)
    rows = np.flatnonzero(out[:, 100, 0])
    assert (rows[0], rows[-1]) == (63, 63 + 97 - 1)
    # Tall image: columns padded instead; content width int(100 / (300/224)) = 74, 150 columns -> 75 / 75.
    out = P.resize_with_pad(np.full((300, 100, 3), 50, np.uint8), 224, 224)
    cols = np.flatnonzero(out[100, :, 0])
    assert (cols[0], cols[-1]) == (75, 75 + 74 - 1)


def test_upscaling_and_batches_and_identity():
    out = P.resize_with_pad(np.full((10, 20, 3), 9, np.uint8), 224, 224)
    assert np.all(out[56:168] == 9) and np.all(out[:56] == 0) and np.all(out[168:] == 0)
    batch = np.stack([_gradient(48, 64), 255 - _gradient(48, 64)]).reshape(2, 1, 48, 64, 3)
    out = P.resize_with_pad(batch, 30, 30)
    assert out.shape == (2, 1, 30, 30, 3)
    np.testing.assert_array_equal(out[1, 0], P.resize_with_pad(batch[1, 0], 30, 30))
    same = np.zeros((224, 224, 3), np.uint8)
    assert P.resize_with_pad(same, 224, 224) is same


def test_resize_rejects_bad_images():
    with pytest.raises(TypeError, match="uint8"):
        P.resize_with_pad(np.zeros((10, 10, 3), np.float32), 224, 224)
    with pytest.raises(ValueError, match="3 channels"):
        P.resize_with_pad(np.zeros((10, 10, 4), np.uint8), 224, 224)
    with pytest.raises(ValueError, match="HWC"):
        P.resize_with_pad(np.zeros((10, 10), np.uint8), 224, 224)
    with pytest.raises(ValueError, match="1x1000 image would shrink to 0x224"):
        P.resize_with_pad(np.zeros((1, 1000, 3), np.uint8), 224, 224)
    with pytest.raises(ValueError, match="target size must be positive"):
        P.resize_with_pad(np.zeros((10, 10, 3), np.uint8), 0, 224)


def test_jax_variant_geometry_and_agreement_with_pil():
    image = _gradient(480, 640)
    ref = P.resize_with_pad(image, 224, 224)
    out_u8 = np.asarray(P.resize_with_pad_jax(image, 224, 224))
    assert out_u8.dtype == np.uint8 and out_u8.shape == (224, 224, 3)
    assert np.abs(out_u8.astype(int) - ref).max() <= 1  # different resampling arithmetic, same filter
    as_float = P.image_to_model(image)
    out_f = np.asarray(P.resize_with_pad_jax(as_float[None], 224, 224))[0]
    assert out_f.dtype == np.float32
    assert np.all(out_f[:28] == -1.0) and np.all(out_f[196:] == -1.0)
    np.testing.assert_allclose(out_f[28:196], P.image_to_model(ref)[28:196], atol=2.5 / 255 * 2)


def test_image_to_model_matches_openpi_fixture_encoding(shared_fixtures):
    io = np.load(shared_fixtures / "openpi_pi0_tiny" / "io.npz")
    images = io["image_base_0_rgb"]
    u8 = np.round((images + 1) * 127.5).astype(np.uint8)
    converted = P.image_to_model(u8)
    assert converted.dtype == np.float32
    np.testing.assert_array_equal(converted, images)
    edge = P.image_to_model(np.array([[[0, 255, 128]]], np.uint8))
    np.testing.assert_allclose(edge[0, 0], [-1.0, 1.0, 128 / 255 * 2 - 1], rtol=0, atol=1e-7)


# --------------------------------------------------------------------------------------------------------
# norm stats


OPENPI_JSON = """{
  "norm_stats": {
    "state": {
      "mean": [0.5, -1.0, 2.0],
      "std": [2.0, 0.5, 1.0],
      "q01": [-1.0, -2.0, 0.0],
      "q99": [3.0, 0.0, 4.0]
    },
    "actions": {
      "mean": [0.0, 1.0],
      "std": [1.0, 1.0],
      "q01": null,
      "q99": null
    }
  }
}"""


@pytest.fixture()
def stats(tmp_path):
    (tmp_path / "assets" / "dobot").mkdir(parents=True)
    (tmp_path / "assets" / "dobot" / "norm_stats.json").write_text(OPENPI_JSON)
    return P.load_norm_stats(tmp_path / "assets" / "dobot")


def test_load_openpi_norm_stats(stats, tmp_path):
    assert set(stats) == {"state", "actions"}
    np.testing.assert_array_equal(stats["state"].q99, [3.0, 0.0, 4.0])
    assert stats["actions"].q01 is None and stats["actions"].dim == 2
    saved = P.save_norm_stats(tmp_path / "out", stats)
    assert saved.name == "norm_stats.json"
    assert json.loads(saved.read_text()) == json.loads(OPENPI_JSON)
    again = P.load_norm_stats(saved)
    np.testing.assert_array_equal(again["state"].std, stats["state"].std)


def test_norm_stats_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        P.load_norm_stats(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        P.load_norm_stats(bad)
    bad.write_text(json.dumps({"stats": {}}))
    with pytest.raises(ValueError, match="norm_stats"):
        P.load_norm_stats(bad)
    bad.write_text(json.dumps({"norm_stats": {"state": {"mean": [1, 2], "std": [1]}}}))
    with pytest.raises(ValueError, match=r"norm_stats\['state'\].*differ in length"):
        P.load_norm_stats(bad)
    bad.write_text(json.dumps({"norm_stats": {"state": {"mean": [1], "std": [1], "q01": [0]}}}))
    with pytest.raises(ValueError, match="both 'q01' and 'q99'"):
        P.load_norm_stats(bad)
    bad.write_text(json.dumps({"norm_stats": {"state": {"mean": [1], "std": [None]}}}))
    with pytest.raises(ValueError, match="finite"):
        P.load_norm_stats(bad)


def test_zscore_matches_openpi_formula_and_inverts(stats):
    s = stats["state"]
    x = np.array([[1.5, -0.5, 2.0], [0.0, 0.0, 0.0]], np.float32)
    out = P.normalize(x, s, use_quantiles=False)
    want = (x.astype(np.float64) - s.mean) / (s.std + 1e-6)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, want.astype(np.float32))
    np.testing.assert_allclose(P.unnormalize(out, s, use_quantiles=False), x, rtol=1e-6, atol=1e-6)


def test_quantile_matches_openpi_formula_and_inverts(stats):
    s = stats["state"]
    x = np.array([-1.0, -2.0, 4.0], np.float64)
    out = P.normalize(x, s, use_quantiles=True)
    np.testing.assert_allclose(out, [-1.0, -1.0, 1.0], atol=1e-5)
    want = (x - s.q01) / (s.q99 - s.q01 + 1e-6) * 2.0 - 1.0
    np.testing.assert_array_equal(out, want)
    np.testing.assert_allclose(P.unnormalize(out, s, use_quantiles=True), x, atol=1e-12)
    with pytest.raises(ValueError, match="q01/q99"):
        P.normalize(np.zeros(2), stats["actions"], use_quantiles=True)


@pytest.mark.parametrize("use_quantiles", [False, True])
def test_padded_dims_pass_through_and_short_data_uses_first_stats(stats, use_quantiles):
    s = stats["state"]
    padded = P.pad_to_dim(np.array([1.0, 2.0, 3.0], np.float32), 8)
    out = P.normalize(padded, s, use_quantiles)
    np.testing.assert_array_equal(out[3:], 0.0)
    np.testing.assert_array_equal(out[:3], P.normalize(padded[:3], s, use_quantiles))
    model_out = np.concatenate([out[:3], np.arange(5, dtype=np.float32)])
    back = P.unnormalize(model_out, s, use_quantiles)
    np.testing.assert_array_equal(back[3:], np.arange(5))
    np.testing.assert_allclose(back[:3], [1.0, 2.0, 3.0], rtol=1e-6)
    short = P.normalize(np.array([1.0, 2.0]), s, use_quantiles)  # stats sliced to the data's dims
    np.testing.assert_array_equal(short, P.normalize(np.array([1.0, 2.0, 0.0]), s, use_quantiles)[:2])


def test_pad_to_dim():
    x = np.ones((50, 14), np.float32)
    out = P.pad_to_dim(x, 32)
    assert out.shape == (50, 32) and out.dtype == np.float32
    assert np.all(out[:, :14] == 1) and np.all(out[:, 14:] == 0)
    assert P.pad_to_dim(x, 14) is x
    np.testing.assert_array_equal(P.pad_to_dim(np.ones(3), 5, axis=0), [1, 1, 1, 0, 0])
    with pytest.raises(ValueError, match="14 entries along axis -1, more than the model's 8"):
        P.pad_to_dim(x, 8)


# --------------------------------------------------------------------------------------------------------
# observation -> model inputs


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    return tokenizer_helpers.train_tiny_sentencepiece(tmp_path_factory.mktemp("spm"))


CAMERAS = {"base_0_rgb": "cam_high", "left_wrist_0_rgb": "cam_left_wrist", "right_wrist_0_rgb": None}


def _observation(rng, batch=None):
    lead = () if batch is None else (batch,)
    return {
        "images": {
            "cam_high": rng.integers(0, 256, (*lead, 480, 640, 3), dtype=np.uint8),
            "cam_left_wrist": rng.integers(0, 256, (*lead, 224, 224, 3), dtype=np.uint8),
        },
        "state": rng.normal(size=(*lead, 3)).astype(np.float32),
        "prompt": "put the objects in the box" if batch is None else ["put the objects in the box", "fold"] * 1,
    }


def test_observation_inputs_pi0(stats, tokenizer_path):
    rng = np.random.default_rng(0)
    obs = _observation(rng)
    tok = PaligemmaTokenizer(tokenizer_path, max_len=48)
    out = P.make_observation_inputs(obs, camera_map=CAMERAS, tokenizer=tok, state_stats=stats["state"], action_dim=32)
    assert set(out) == {"images", "image_masks", "state", "tokenized_prompt", "tokenized_prompt_mask"}
    assert list(out["images"]) == list(P.IMAGE_KEYS)
    for key in P.IMAGE_KEYS:
        assert out["images"][key].shape == (1, 224, 224, 3) and out["images"][key].dtype == np.float32
        assert out["image_masks"][key].shape == (1,) and out["image_masks"][key].dtype == bool
    np.testing.assert_array_equal(
        out["images"]["base_0_rgb"][0], P.image_to_model(P.resize_with_pad(obs["images"]["cam_high"], 224, 224))
    )
    np.testing.assert_array_equal(
        out["images"]["left_wrist_0_rgb"][0], P.image_to_model(obs["images"]["cam_left_wrist"])
    )
    assert out["image_masks"]["right_wrist_0_rgb"].tolist() == [False]
    assert np.all(out["images"]["right_wrist_0_rgb"] == -1.0)  # a uint8 zero image after conversion
    assert out["state"].shape == (1, 32) and out["state"].dtype == np.float32
    np.testing.assert_allclose(out["state"][0, :3], P.normalize(obs["state"], stats["state"], False), rtol=1e-6)
    assert np.all(out["state"][0, 3:] == 0)
    tokens, mask = tok.tokenize(obs["prompt"])
    np.testing.assert_array_equal(out["tokenized_prompt"][0], tokens)
    np.testing.assert_array_equal(out["tokenized_prompt_mask"][0], mask)


def test_observation_inputs_pi05_discrete_state_and_batch(stats, tokenizer_path):
    rng = np.random.default_rng(1)
    obs = _observation(rng, batch=2)
    tok = PaligemmaTokenizer(tokenizer_path, max_len=200)
    out = P.make_observation_inputs(
        obs,
        camera_map=CAMERAS,
        tokenizer=tok,
        state_stats=stats["state"],
        use_quantiles=True,
        discrete_state=True,
    )
    assert out["images"]["base_0_rgb"].shape == (2, 224, 224, 3)
    assert out["image_masks"]["left_wrist_0_rgb"].tolist() == [True, True]
    norm = P.normalize(obs["state"].astype(np.float64), stats["state"], use_quantiles=True)
    for i in range(2):
        tokens, _ = tok.tokenize(obs["prompt"][i], norm[i])
        np.testing.assert_array_equal(out["tokenized_prompt"][i], tokens)
        assert f"State: {' '.join(str(b) for b in np.digitize(norm[i], np.linspace(-1, 1, 257)[:-1]) - 1)};" in (
            tok.decode(out["tokenized_prompt"][i][out["tokenized_prompt_mask"][i]])
        )


def test_observation_input_errors(stats, tokenizer_path):
    rng = np.random.default_rng(2)
    tok = PaligemmaTokenizer(tokenizer_path, max_len=48)

    def make(obs, **kw):
        kw = {"camera_map": CAMERAS, "tokenizer": tok, "state_stats": stats["state"], **kw}
        return P.make_observation_inputs(obs, **kw)

    obs = _observation(rng)
    obs["images"]["cam_extra"] = obs["images"]["cam_high"]
    with pytest.raises(ValueError, match=r"cam_extra"):
        make(obs)
    with pytest.raises(ValueError, match="unknown model cameras"):
        make(_observation(rng), camera_map={**CAMERAS, "wrist": "cam_left_wrist"})
    obs = _observation(rng)
    del obs["images"]["cam_left_wrist"]
    with pytest.raises(KeyError, match="cam_left_wrist.*missing"):
        make(obs)
    obs = _observation(rng)
    obs["images"]["cam_high"] = obs["images"]["cam_high"].astype(np.float32)
    with pytest.raises(TypeError, match="camera 'cam_high' must be uint8"):
        make(obs)
    obs = _observation(rng)
    obs["images"]["cam_high"] = obs["images"]["cam_high"][None]
    with pytest.raises(ValueError, match="cam_high.*expected HWC"):
        make(obs)
    obs = _observation(rng)
    obs["state"] = np.zeros(40, np.float32)
    with pytest.raises(ValueError, match="40 dims, more than the model's action_dim=32"):
        make(obs, state_stats=None)
    obs = _observation(rng)
    obs["state"] = np.zeros(5, np.float32)
    with pytest.raises(ValueError, match="5 dims but the state norm stats cover 3"):
        make(obs)
    obs = _observation(rng)
    obs["state"] = np.array([0.0, np.nan, 1.0], np.float32)
    with pytest.raises(ValueError, match="non-finite"):
        make(obs)
    obs = _observation(rng)
    del obs["prompt"]
    with pytest.raises(KeyError, match="prompt"):
        make(obs)
    obs = _observation(rng)
    obs["prompt"] = b"bytes prompt"
    with pytest.raises(TypeError, match="prompt must be a str"):
        make(obs)
    obs = _observation(rng, batch=2)
    obs["prompt"] = ["only one"]
    with pytest.raises(ValueError, match="1 prompt"):
        make(obs)


def test_observation_inputs_feed_the_model(stats, tokenizer_path):
    """Host observation -> model inputs -> the port's PI0 sampler (tiny config, random weights)."""
    import jax

    from hiors_jax.models import config as C
    from hiors_jax.models import pi0

    cfg = C.tiny_config(action_horizon=4)
    tok = PaligemmaTokenizer(tokenizer_path, max_len=cfg.max_token_len)
    obs = _observation(np.random.default_rng(3))
    inputs = P.make_observation_inputs(
        obs,
        camera_map=CAMERAS,
        tokenizer=tok,
        state_stats=stats["state"],
        action_dim=cfg.action_dim,
        image_size=(cfg.vision.image_size, cfg.vision.image_size),
    )
    params = pi0.init_params(cfg, jax.random.key(0))
    noise = np.random.default_rng(4).normal(size=(1, cfg.action_horizon, cfg.action_dim)).astype(np.float32)
    actions = np.asarray(pi0.sample_actions(cfg, params, pi0.Observation.from_dict(inputs), noise, num_steps=2))
    assert actions.shape == (1, cfg.action_horizon, cfg.action_dim) and np.all(np.isfinite(actions))
