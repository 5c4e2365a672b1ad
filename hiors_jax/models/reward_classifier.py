"""A small image (+ state) success classifier: p(task done | observation), a label source for the actor.

Per camera a few strided convolutions (separate weights per camera: the views differ), average-pooled to a
small grid so *where* things are survives (global pooling would lose "the object is in the box"), flattened;
the robot state, normalised with the training data's mean/std, through a small MLP; both concatenated into a
head Dense -> LayerNorm -> ReLU -> Dense(1) giving one logit. Images enter as uint8 HWC at any size and are
resized-with-pad to `image_size` on the host exactly as in training, then scaled to [-1, 1].

Pure functions with explicit params: `init_params`, `logits`, `loss`. A trained classifier is a directory:
`params/` (orbax, `{"params": tree}` like openpi's params item) and `reward_classifier.json` (the config
below, so nothing about the architecture or preprocessing is guessed at load time). `load_label_fn(path)`
gives the callable `robot.dobot.ClassifierLabels` takes: observation dict -> probability of success.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from hiors_jax.models import weights
from hiors_jax.models.preprocessing import resize_with_pad

CONFIG_FILE = "reward_classifier.json"
PARAMS_DIR = "params"
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """Architecture and preprocessing of one classifier.

    cameras: observation camera names (`obs["images"]` keys, e.g. "cam_high"), in model input order.
    image_size: (H, W) every camera is resized-with-pad to. state_dim: robot state width, 0 = images only.
    state_mean / state_std: the state normalisation (from the training frames), state_dim values each.
    """

    cameras: tuple[str, ...]
    image_size: tuple[int, int] = (64, 64)
    state_dim: int = 0
    state_mean: tuple[float, ...] = ()
    state_std: tuple[float, ...] = ()
    conv_features: tuple[int, ...] = (16, 32, 64, 64)
    pool_grid: int = 4
    state_features: int = 64
    hidden: int = 256

    def __post_init__(self):
        if not self.cameras:
            raise ValueError("ClassifierConfig.cameras: at least one camera is needed")
        if len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"ClassifierConfig.cameras: repeated camera in {list(self.cameras)}")
        if len(self.image_size) != 2 or min(self.image_size) < 8:
            raise ValueError(f"ClassifierConfig.image_size: must be (H, W) with both >= 8, got {self.image_size}")
        if self.state_dim < 0:
            raise ValueError(f"ClassifierConfig.state_dim: must be >= 0, got {self.state_dim}")
        for name in ("state_mean", "state_std"):
            if len(getattr(self, name)) != self.state_dim:
                raise ValueError(
                    f"ClassifierConfig.{name}: needs state_dim={self.state_dim} values, got {len(getattr(self, name))}"
                )
        if any(not s > 0 for s in self.state_std):
            raise ValueError(f"ClassifierConfig.state_std: must be positive, got {list(self.state_std)}")
        if not self.conv_features or min(self.conv_features) < 1:
            raise ValueError(f"ClassifierConfig.conv_features: must be positive widths, got {self.conv_features}")
        if self.pool_grid < 1:
            raise ValueError(f"ClassifierConfig.pool_grid: must be >= 1, got {self.pool_grid}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, values: Mapping[str, Any], where: str = "config") -> ClassifierConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{where}: unknown classifier config field(s) {unknown}; known: {sorted(known)}")
        if "cameras" not in values:
            raise ValueError(f"{where}: classifier config lacks 'cameras'")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**values)


class CameraEncoder(nn.Module):
    features: Sequence[int]
    pool_grid: int

    @nn.compact
    def __call__(self, x):  # (B, H, W, 3) float in [-1, 1]
        for width in self.features:
            x = nn.relu(nn.Conv(width, (3, 3), strides=(2, 2), padding="SAME")(x))
        h, w = x.shape[1], x.shape[2]
        gh, gw = min(self.pool_grid, h), min(self.pool_grid, w)
        # average over equal-ish cells of a gh x gw grid (shapes are static, so plain slicing)
        rows = np.linspace(0, h, gh + 1).astype(int)
        cols = np.linspace(0, w, gw + 1).astype(int)
        cells = [
            x[:, rows[i] : rows[i + 1], cols[j] : cols[j + 1], :].mean(axis=(1, 2))
            for i in range(gh)
            for j in range(gw)
        ]
        return jnp.concatenate(cells, axis=-1)


class RewardClassifierNet(nn.Module):
    config: ClassifierConfig

    @nn.compact
    def __call__(self, images: Sequence[jax.Array], state: jax.Array | None):
        cfg = self.config
        parts = [
            CameraEncoder(tuple(cfg.conv_features), cfg.pool_grid, name=f"camera_{name}")(img)
            for name, img in zip(cfg.cameras, images, strict=True)
        ]
        if cfg.state_dim:
            s = nn.relu(nn.Dense(cfg.state_features, name="state_mlp_0")(state))
            parts.append(nn.relu(nn.Dense(cfg.state_features, name="state_mlp_1")(s)))
        x = jnp.concatenate(parts, axis=-1)
        x = nn.relu(nn.LayerNorm(name="head_norm")(nn.Dense(cfg.hidden, name="head_hidden")(x)))
        return nn.Dense(1, name="head_out")(x)[..., 0]


# ---------------------------------------------------------------------------------------------- pure functions
def _model_inputs(config: ClassifierConfig, images: Mapping[str, Any], state: Any):
    missing = [c for c in config.cameras if c not in images]
    if missing:
        raise KeyError(f"images lack camera(s) {missing} the classifier was trained on (has {sorted(images)})")
    h, w = config.image_size
    xs = []
    for c in config.cameras:
        img = jnp.asarray(images[c])
        if img.shape[-3:] != (h, w, 3):
            raise ValueError(f"images[{c!r}] must be (..., {h}, {w}, 3) (resize_with_pad first), got {img.shape}")
        xs.append(img.astype(jnp.float32) / 127.5 - 1.0)
    s = None
    if config.state_dim:
        s = jnp.asarray(state, jnp.float32)
        if s.shape[-1] != config.state_dim:
            raise ValueError(f"state must have {config.state_dim} values, got shape {s.shape}")
        mean = jnp.asarray(config.state_mean, jnp.float32)
        std = jnp.asarray(config.state_std, jnp.float32)
        s = (s - mean) / std
    return xs, s


def init_params(config: ClassifierConfig, key: jax.Array) -> dict:
    return _compiled_init(config)(key)


@functools.lru_cache(maxsize=8)
def _compiled_init(config: ClassifierConfig):
    """One compiled initialiser per architecture (op-by-op initialisation takes seconds on a CPU)."""
    h, w = config.image_size

    def init(key):
        images = {c: jnp.zeros((1, h, w, 3), jnp.uint8) for c in config.cameras}
        xs, s = _model_inputs(config, images, jnp.zeros((1, config.state_dim)))
        return RewardClassifierNet(config).init(key, xs, s)["params"]

    return jax.jit(init)


def logits(config: ClassifierConfig, params, images: Mapping[str, Any], state: Any = None) -> jax.Array:
    """images: {camera: uint8 (B, H, W, 3) at config.image_size}; state: (B, state_dim) in robot units -> (B,)."""
    xs, s = _model_inputs(config, images, state)
    return RewardClassifierNet(config).apply({"params": params}, xs, s)


def loss(config: ClassifierConfig, params, batch: Mapping[str, Any]) -> tuple[jax.Array, dict]:
    """Mean binary cross-entropy of batch["label"] (1 success, 0 not) given batch["images"], batch["state"]."""
    z = logits(config, params, batch["images"], batch.get("state"))
    label = jnp.asarray(batch["label"], jnp.float32)
    bce = optax.sigmoid_binary_cross_entropy(z, label).mean()
    accuracy = ((z > 0) == (label > 0.5)).mean()
    return bce, {"loss": bce, "accuracy": accuracy}


def random_shift(images: Mapping[str, jax.Array], key: jax.Array, pad: int) -> dict[str, jax.Array]:
    """DrQ-style augmentation: each image edge-padded by `pad` pixels and cropped back at a random offset."""
    if pad <= 0:
        return dict(images)
    out = {}
    for i, (name, img) in enumerate(sorted(images.items())):
        b, h, w, _ = img.shape
        padded = jnp.pad(img, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
        offsets = jax.random.randint(jax.random.fold_in(key, i), (b, 2), 0, 2 * pad + 1)
        out[name] = jax.vmap(functools.partial(_crop, size=(h, w, 3)))(padded, offsets)
    return out


def _crop(image: jax.Array, offset: jax.Array, size: tuple[int, int, int]) -> jax.Array:
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), size)


def preprocess_images(config: ClassifierConfig, images: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Host side: uint8 HWC (or batched) camera images of any size -> config.image_size (resize-with-pad)."""
    h, w = config.image_size
    missing = [c for c in config.cameras if c not in images]
    if missing:
        raise KeyError(f"observation images lack camera(s) {missing} the classifier uses (has {sorted(images)})")
    return {c: resize_with_pad(np.asarray(images[c]), h, w) for c in config.cameras}


# ---------------------------------------------------------------------------------------------- files
def save(directory, config: ClassifierConfig, params, extra: Mapping[str, Any] | None = None) -> pathlib.Path:
    """Write `params/` (orbax) and `reward_classifier.json` (config + `extra`, e.g. training summary)."""
    directory = pathlib.Path(directory).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    weights.save_params_tree(directory / PARAMS_DIR, jax.device_get(params), overwrite=True)
    doc = {"format_version": FORMAT_VERSION, "config": config.to_json(), **dict(extra or {})}
    tmp = directory / (CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(directory / CONFIG_FILE)
    return directory


def load(directory) -> tuple[ClassifierConfig, dict]:
    """(config, params) of a classifier directory written by `save`."""
    directory = pathlib.Path(directory).expanduser()
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{directory}: not a reward classifier directory ({CONFIG_FILE} is missing)")
    try:
        doc = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path}: not valid JSON ({err})") from err
    if doc.get("format_version") != FORMAT_VERSION or "config" not in doc:
        raise ValueError(f"{config_path}: expected format_version {FORMAT_VERSION} with a 'config' entry")
    config = ClassifierConfig.from_json(doc["config"], str(config_path))
    if not (directory / PARAMS_DIR).is_dir():
        raise FileNotFoundError(f"{directory}: classifier weights ({PARAMS_DIR}/) are missing")
    params = weights.restore_params_tree(directory / PARAMS_DIR)
    expected = jax.eval_shape(_compiled_init(config), jax.random.key(0))
    got_shapes = jax.tree.map(np.shape, params)
    want_shapes = jax.tree.map(lambda x: tuple(x.shape), expected)
    if got_shapes != want_shapes:
        raise ValueError(f"{directory / PARAMS_DIR}: parameter shapes do not match {CONFIG_FILE}'s architecture")
    return config, params


def load_label_fn(path) -> Callable[[Mapping[str, Any]], float]:
    """The success-probability function `robot.dobot.ClassifierLabels` polls each env step.

    It takes one observation as the env gives it (`obs["images"][camera]` uint8 HWC at any size, `obs["state"]`
    in robot units) and returns p(success) as a Python float.
    """
    config, params = load(path)
    params = jax.device_put(params)
    apply = jax.jit(lambda p, images, state: jax.nn.sigmoid(logits(config, p, images, state)))
    h, w = config.image_size
    # compile now, not during the robot's first step (inputs always arrive at config.image_size)
    apply(params, {c: np.zeros((1, h, w, 3), np.uint8) for c in config.cameras}, np.zeros((1, config.state_dim)))

    def success_probability(obs: Mapping[str, Any]) -> float:
        images = preprocess_images(config, obs["images"])
        batch = {c: img[None] for c, img in images.items()}
        state = np.asarray(obs["state"], np.float32)[None] if config.state_dim else np.zeros((1, 0), np.float32)
        return float(apply(params, batch, state)[0])

    return success_probability
