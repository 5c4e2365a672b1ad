"""Replay windows -> model-ready batches: source mixing, openpi normalisation, augmentation, prefetch, sharding.

    windows = {"accepted": store.window("accepted"), "demo": window_from_dataset(...)}
    stats = norm_stats_from_windows(windows.values())                  # or preprocessing.load_norm_stats(...)
    loader = BatchLoader(windows, PipelineConfig(ratios={"accepted": 1.0}), model_config, tokenizer, stats,
                         sharding=NamedSharding(mesh, P("data")))
    for batch, metrics in loader:                                      # Batch on device, metrics host ints
        state, info = update(state, batch, rng)

A `Batch` holds `observation` (a `pi0.Observation`: images in [-1, 1] at the model's resolution, normalised
state zero-padded to action_dim, tokenised prompt and mask), `actions` (B, H, action_dim) normalised and
zero-padded, `action_is_pad` (B, H), `weight` (B,), and for SAC `reward` (B,), `done` (B,) (terminal only;
truncation is not an end of the MDP) and `next_observation` (the next frame of the same episode; an episode's
last frame is its own next). Sources are mixed with fixed per-batch counts from `ratios` (largest remainder),
so a 50/50 demo/online batch of 56 is always 28 + 28.

The transforms are openpi's: z-score (PI0) or quantile (PI0.5) normalisation with norm_stats.json statistics
(`norm_stats_from_windows` computes them from the data with openpi's running-statistics algorithm), images
resized with pad (the windows store them at the model's resolution already) and mapped x/255*2-1, and in
training the augmentation openpi applies: for non-wrist cameras a random 95 % crop resized back and a
rotation of up to 5 degrees (on the host, uint8, PIL), for every camera a colour jitter (brightness 0.3,
contrast 0.4, saturation 0.5; on the device). Images cross to the device as uint8 and are converted there.
"""

from __future__ import annotations

import dataclasses
import functools
import queue
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hiors_jax.data.replay import SOURCES, EmptySourceError, FrameWindow
from hiors_jax.models import pi0
from hiors_jax.models.config import Pi0Config
from hiors_jax.models.preprocessing import IMAGE_KEYS, NormStats, normalize, pad_to_dim, resize_with_pad

DEFAULT_CAMERA_MAP = {
    "base_0_rgb": "cam_high",
    "left_wrist_0_rgb": "cam_left_wrist",
    "right_wrist_0_rgb": "cam_right_wrist",
}
QUANTILE_BINS = 5000  # openpi's RunningStats
# Source mixes of the algorithms (Hi-ORS trains on accepted episodes only; SAC samples demos and online
# transitions 50/50, RLPD-style; SFT / behaviour cloning on demos).
ALGORITHM_RATIOS = {
    "hiors": {"accepted": 1.0},
    "sac": {"demo": 0.5, "online": 0.5},
    "sft": {"demo": 1.0},
}


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Batch:
    """One training batch, every leaf with the batch axis first (see the module docstring)."""

    observation: pi0.Observation
    actions: jax.Array
    action_is_pad: jax.Array
    weight: jax.Array
    reward: jax.Array
    done: jax.Array
    next_observation: pi0.Observation | None = None


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """How batches are drawn and transformed; every field is a config value a user may change."""

    batch_size: int = 56
    ratios: Mapping[str, float] = dataclasses.field(default_factory=lambda: {"accepted": 1.0})
    camera_map: Mapping[str, str | None] = dataclasses.field(default_factory=lambda: dict(DEFAULT_CAMERA_MAP))
    augment: bool = True
    with_next: bool = False  # SAC needs next_observation
    use_quantiles: bool = False  # PI0.5 normalises with quantiles
    discrete_state: bool = False  # PI0.5 writes the state into the prompt
    prefetch: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"pipeline.batch_size must be >= 1, got {self.batch_size}")
        if self.prefetch < 1:
            raise ValueError(f"pipeline.prefetch must be >= 1, got {self.prefetch}")
        source_counts(self.ratios, self.batch_size)  # validates the ratios
        unknown = set(self.camera_map) - set(IMAGE_KEYS)
        if unknown:
            raise ValueError(f"pipeline.camera_map has unknown model cameras {sorted(unknown)}; expected {IMAGE_KEYS}")


# ------------------------------------------------------------------------------------------------ mixing
def source_counts(ratios: Mapping[str, float], batch_size: int) -> dict[str, int]:
    """Per-batch sample counts for each source: proportional to `ratios`, summing to batch_size exactly
    (largest remainder, ties to the earlier source in SOURCES order)."""
    unknown = [name for name in ratios if name not in SOURCES]
    if unknown:
        raise ValueError(f"unknown data source(s) {unknown} in ratios; sources are {list(SOURCES)}")
    values = {name: float(ratios[name]) for name in SOURCES if name in ratios}
    if any(not np.isfinite(v) or v < 0 for v in values.values()) or sum(values.values()) <= 0:
        raise ValueError(f"source ratios must be finite, >= 0 and not all zero, got {dict(ratios)}")
    total = sum(values.values())
    exact = {name: batch_size * v / total for name, v in values.items()}
    counts = {name: int(np.floor(x)) for name, x in exact.items()}
    left = batch_size - sum(counts.values())
    order = sorted(exact, key=lambda n: (-(exact[n] - counts[n]), SOURCES.index(n)))
    for name in order[:left]:
        counts[name] += 1
    return {name: c for name, c in counts.items() if c > 0 or values[name] > 0}


def sample_host_batch(
    windows: Mapping[str, FrameWindow], counts: Mapping[str, int], rng: np.random.Generator, with_next: bool
) -> dict[str, Any]:
    """Gather `counts[source]` uniform samples from each source's window, concatenated in SOURCES order."""
    parts = []
    for name in SOURCES:
        n = counts.get(name, 0)
        if n == 0:
            continue
        if name not in windows:
            raise ValueError(f"data source {name!r} has ratio > 0 but no window was given (have {sorted(windows)})")
        window = windows[name]
        parts.append(window.gather(window.sample_slots(rng, n), with_next=with_next))
    return _concat(parts)


def _concat(parts: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in parts[0].items():
        if isinstance(value, dict):
            out[key] = {k: np.concatenate([p[key][k] for p in parts]) for k in value}
        elif isinstance(value, list):
            out[key] = [x for p in parts for x in p[key]]
        else:
            out[key] = np.concatenate([p[key] for p in parts])
    return out


# ------------------------------------------------------------------------------------------------ norm stats
class RunningStats:
    """openpi's running statistics: mean and mean of squares, quantiles from 5000-bin histograms whose edges
    follow the running min/max (counts redistributed when they move)."""

    def __init__(self, bins: int = QUANTILE_BINS):
        self.bins = bins
        self.count = 0
        self.mean = self.mean_sq = self.min = self.max = None
        self.hist: list[np.ndarray] = []
        self.edges: list[np.ndarray] = []

    def _edges(self, i: int) -> np.ndarray:
        return np.linspace(self.min[i] - 1e-10, self.max[i] + 1e-10, self.bins + 1)

    def update(self, batch: np.ndarray) -> None:
        batch = np.asarray(batch, np.float64).reshape(-1, np.shape(batch)[-1])
        n, dim = batch.shape
        if n == 0:
            return
        if self.count == 0:
            self.mean, self.mean_sq = batch.mean(0), (batch**2).mean(0)
            self.min, self.max = batch.min(0), batch.max(0)
            self.hist = [np.zeros(self.bins) for _ in range(dim)]
            self.edges = [self._edges(i) for i in range(dim)]
        else:
            if dim != len(self.mean):
                raise ValueError(f"vectors of {dim} dims, the statistics so far have {len(self.mean)}")
            new_min, new_max = np.minimum(self.min, batch.min(0)), np.maximum(self.max, batch.max(0))
            moved = np.any(new_min < self.min) or np.any(new_max > self.max)
            self.min, self.max = new_min, new_max
            if moved:
                for i in range(dim):
                    edges = self._edges(i)
                    self.hist[i] = np.histogram(self.edges[i][:-1], bins=edges, weights=self.hist[i])[0]
                    self.edges[i] = edges
        self.count += n
        self.mean += (batch.mean(0) - self.mean) * (n / self.count)
        self.mean_sq += ((batch**2).mean(0) - self.mean_sq) * (n / self.count)
        for i in range(dim):
            self.hist[i] += np.histogram(batch[:, i], bins=self.edges[i])[0]

    def get(self) -> NormStats:
        if self.count < 2:
            raise ValueError(f"norm stats need at least 2 vectors, got {self.count}")
        std = np.sqrt(np.maximum(0.0, self.mean_sq - self.mean**2))
        q = []
        for frac in (0.01, 0.99):
            target = frac * self.count
            q.append(
                np.array([e[np.searchsorted(np.cumsum(h), target)] for h, e in zip(self.hist, self.edges, strict=True)])
            )
        return NormStats(mean=self.mean, std=std, q01=q[0], q99=q[1])


def norm_stats_from_windows(windows: Iterable[FrameWindow], min_std: float = 0.0) -> dict[str, NormStats]:
    """openpi-format stats ({"state", "actions"}: mean, std, q01, q99) over every frame the windows hold.

    min_std: floor of each dim's std and of half its q01..q99 range (widened about its centre). A dim the data never
    moves (the idle arm of a one-arm task) has std ~0, and normalising by std + 1e-6 turns any later movement of it
    (a drifting policy, a takeover) into values of 1e2..1e6 that swamp the loss. 0 keeps openpi's exact stats.

    Actions are counted over all H rows of each target chunk, as openpi counts its action chunks. All data go
    into one update, so the quantile histograms span the final min/max (openpi's batch-by-batch updates
    redistribute counts when the range grows, which costs accuracy). Save with
    `preprocessing.save_norm_stats(dir, stats)` to get openpi's norm_stats.json.
    """
    states, actions = [], []
    for window in windows:
        with window.lock:
            states.append(window.state[: len(window)].copy())
            actions.append(window.actions[: len(window)].copy())
    state = np.concatenate(states) if states else np.zeros((0, 0))
    if len(state) < 2:
        raise ValueError(f"norm stats need at least 2 frames, the windows hold {len(state)}")
    out = {}
    for key, values in (("state", state), ("actions", np.concatenate(actions))):
        stats = RunningStats()
        stats.update(values)
        out[key] = floor_spread(stats.get(), min_std)
    return out


def floor_spread(stats: NormStats, min_std: float) -> NormStats:
    """`stats` with std >= min_std and q99 - q01 >= 2 * min_std in every dim (see norm_stats_from_windows)."""
    if min_std < 0:
        raise ValueError(f"min_std must be >= 0, got {min_std}")
    if min_std == 0:
        return stats
    q01, q99 = stats.q01, stats.q99
    if q01 is not None:
        centre, half = (q01 + q99) / 2, np.maximum((q99 - q01) / 2, min_std)
        q01, q99 = centre - half, centre + half
    return NormStats(mean=stats.mean, std=np.maximum(stats.std, min_std), q01=q01, q99=q99)


# ------------------------------------------------------------------------------------------------ host side
def crop_rotate(rng: np.random.Generator, images: np.ndarray, scale: float = 0.95, max_deg: float = 5.0):
    """openpi's base-camera augmentation on uint8 (B, H, W, 3): a random crop to `scale` of each side resized
    back, and a rotation in [-max_deg, max_deg] degrees about the centre (bilinear, black outside); one draw
    per sample. Done on the host with PIL (a gather-heavy warp is slow on CPU devices)."""
    from PIL import Image

    b, h, w, _ = images.shape
    out = np.empty_like(images)
    offsets = rng.uniform(0.0, 1.0, (b, 2)) * [h * (1 - scale), w * (1 - scale)]
    angles = np.deg2rad(rng.uniform(-max_deg, max_deg, b))
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    for i in range(b):
        cos, sin = np.cos(angles[i]), np.sin(angles[i])
        # input (x, y) = offset + scale * (R (p - c) + c) for output pixel p, in pixel-index coordinates;
        # PIL samples at pixel centres (index + 0.5), hence the half-pixel terms.
        a, bb, d, e = scale * cos, scale * sin, -scale * sin, scale * cos
        c = offsets[i, 1] + scale * (cx - cos * cx - sin * cy)
        f = offsets[i, 0] + scale * (cy + sin * cx - cos * cy)
        c += 0.5 - 0.5 * (a + bb)
        f += 0.5 - 0.5 * (d + e)
        warped = Image.fromarray(images[i]).transform(
            (w, h), Image.Transform.AFFINE, (a, bb, c, d, e, f), resample=Image.Resampling.BILINEAR, fillcolor=0
        )
        out[i] = np.asarray(warped)
    return out


class HostTransform:
    """Host batch (from windows) -> numpy model arrays: normalised and padded state/actions, tokenised prompts,
    uint8 images at the model's resolution per model camera."""

    def __init__(
        self,
        config: PipelineConfig,
        model: Pi0Config,
        tokenizer,
        norm_stats: Mapping[str, NormStats],
        rng: np.random.Generator | None = None,
    ):
        for key in ("state", "actions"):
            if key not in norm_stats:
                raise ValueError(f"norm stats have no {key!r} entry (have {sorted(norm_stats)})")
        self.config, self.model, self.tokenizer = config, model, tokenizer
        self.state_stats, self.action_stats = norm_stats["state"], norm_stats["actions"]
        self.size = (model.vision.image_size, model.vision.image_size)
        self.rng = rng if rng is not None else np.random.default_rng(config.seed)
        self._tokens: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _tokenize(self, prompts: list[str], norm_state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.config.discrete_state:  # PI0.5: the state is part of the prompt, so no cache
            return self.tokenizer.tokenize_batch(prompts, norm_state)
        for p in set(prompts) - set(self._tokens):
            self._tokens[p] = self.tokenizer.tokenize(p)
        return np.stack([self._tokens[p][0] for p in prompts]), np.stack([self._tokens[p][1] for p in prompts])

    def _observation(self, images: Mapping[str, np.ndarray], state: np.ndarray, prompts: list[str]) -> dict:
        batch = len(state)
        if state.shape[-1] > self.state_stats.dim:
            raise ValueError(f"state has {state.shape[-1]} dims but the state norm stats cover {self.state_stats.dim}")
        norm_state = normalize(state.astype(np.float64), self.state_stats, self.config.use_quantiles)
        tokens, mask = self._tokenize(prompts, norm_state)
        out_images, masks = {}, {}
        for key in self.model.image_keys:
            name = self.config.camera_map.get(key)
            if name is None:
                out_images[key] = np.zeros((batch, *self.size, 3), np.uint8)
                masks[key] = np.zeros(batch, bool)
                continue
            if name not in images:
                raise ValueError(f"camera {name!r} (model camera {key}) is not in the windows (have {sorted(images)})")
            img = images[name]
            img = img if img.shape[1:3] == self.size else resize_with_pad(img, *self.size)
            if self.config.augment and "wrist" not in key:  # openpi: crop + rotate only non-wrist cameras
                img = crop_rotate(self.rng, img)
            out_images[key] = img
            masks[key] = np.ones(batch, bool)
        return {
            "images": out_images,
            "image_masks": masks,
            "state": pad_to_dim(norm_state.astype(np.float32), self.model.action_dim),
            "tokenized_prompt": tokens,
            "tokenized_prompt_mask": mask,
        }

    def __call__(self, host: Mapping[str, Any]) -> dict[str, Any]:
        out = {"observation": self._observation(host["images"], host["state"], host["prompt"])}
        actions = normalize(host["actions"].astype(np.float64), self.action_stats, self.config.use_quantiles)
        if actions.shape[1] != self.model.action_horizon:
            raise ValueError(
                f"action targets have horizon {actions.shape[1]}, the model's action_horizon is "
                f"{self.model.action_horizon}"
            )
        out["actions"] = pad_to_dim(actions.astype(np.float32), self.model.action_dim)
        out["action_is_pad"] = np.asarray(host["action_is_pad"], bool)
        out["weight"] = np.asarray(host["weight"], np.float32)
        out["reward"] = np.asarray(host["reward"], np.float32)
        out["done"] = np.asarray(host["done"], bool)
        if self.config.with_next:
            out["next_observation"] = self._observation(host["next_images"], host["next_state"], host["next_prompt"])
        return out


# ------------------------------------------------------------------------------------------------ device side
def color_jitter(rng: jax.Array, images: jax.Array, p: float = 0.5) -> jax.Array:
    """(B, H, W, 3) in [0, 1]: per sample, with probability p, brightness +-0.3, contrast +-0.4 (GIMP slant
    around 0.5) and saturation x[1/1.5, 1.5] (log-uniform), as openpi's augmax ColorJitter settings."""
    b = images.shape[0]
    k_b, k_c, k_s, k_p = jax.random.split(rng, 4)

    def factor(key, lo, hi):
        return jax.random.uniform(key, (b, 1, 1, 1), minval=lo, maxval=hi)

    x = images + factor(k_b, -0.3, 0.3)
    slant = jnp.tan((factor(k_c, -0.4, 0.4) + 1.0) * (jnp.pi / 4))
    x = (x - 0.5) * slant + 0.5
    gray = x[..., :1] * 0.299 + x[..., 1:2] * 0.587 + x[..., 2:] * 0.114
    x = jnp.clip(gray + (x - gray) * jnp.exp(factor(k_s, -np.log(1.5), np.log(1.5))), 0.0, 1.0)
    return jnp.where(jax.random.bernoulli(k_p, p, (b, 1, 1, 1)), x, images)


def _to_model_observation(rng, obs: dict, augment: bool) -> pi0.Observation:
    images = {}
    keys = jax.random.split(rng, len(obs["images"]))
    for k, (name, img) in zip(keys, sorted(obs["images"].items()), strict=True):
        x = img.astype(jnp.float32) / 255.0
        if augment:
            x = color_jitter(k, x)
        images[name] = x * 2.0 - 1.0
    return pi0.Observation(
        images=images,
        image_masks=obs["image_masks"],
        state=obs["state"],
        tokenized_prompt=obs["tokenized_prompt"],
        tokenized_prompt_mask=obs["tokenized_prompt_mask"],
    )


@functools.partial(jax.jit, static_argnames=("augment",))
def finish_batch(rng: jax.Array, arrays: dict, augment: bool) -> Batch:
    """On device: uint8 images -> [-1, 1] float (colour-jittered in training), packed into a `Batch`."""
    k_obs, k_next = jax.random.split(rng)
    nxt = arrays.get("next_observation")
    return Batch(
        observation=_to_model_observation(k_obs, arrays["observation"], augment),
        actions=arrays["actions"],
        action_is_pad=arrays["action_is_pad"],
        weight=arrays["weight"],
        reward=arrays["reward"],
        done=arrays["done"],
        next_observation=None if nxt is None else _to_model_observation(k_next, nxt, augment),
    )


# ------------------------------------------------------------------------------------------------ loader
class BatchLoader:
    """Iterator of `(Batch, metrics)`: a background thread samples, transforms, places on devices (with
    `sharding` for every batch-leading array when given) and keeps `config.prefetch` batches ready.

    metrics: host ints/floats per batch (`batch/<source>` counts, `batch/weight_mean`, `batch/pad_fraction`).
    While a source with a ratio > 0 is still empty the thread waits for data (`next()` blocks). Errors in the
    thread surface on the next `next()`. `close()` (or `with`) stops it.
    """

    def __init__(
        self,
        windows: Mapping[str, FrameWindow],
        config: PipelineConfig,
        model: Pi0Config,
        tokenizer,
        norm_stats: Mapping[str, NormStats],
        *,
        sharding: jax.sharding.Sharding | None = None,
    ):
        unknown = [name for name in windows if name not in SOURCES]
        if unknown:
            raise ValueError(f"unknown data source(s) {unknown}; sources are {list(SOURCES)}")
        self.windows, self.config, self.sharding = dict(windows), config, sharding
        self.counts = source_counts(config.ratios, config.batch_size)
        missing = [name for name, n in self.counts.items() if n and name not in self.windows]
        if missing:
            raise ValueError(f"data source(s) {missing} have ratio > 0 but no window was given")
        if sharding is not None:
            n_dev = len(sharding.device_set)
            if config.batch_size % n_dev:
                raise ValueError(f"pipeline.batch_size {config.batch_size} is not divisible by {n_dev} devices")
        self.empty_poll_s = 0.2
        self._rng = np.random.default_rng(config.seed)
        self.transform = HostTransform(config, model, tokenizer, norm_stats, self._rng)
        self._key = jax.random.key(config.seed)
        self._queue: queue.Queue = queue.Queue(maxsize=config.prefetch)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None  # started by the first next(): next_host() alone needs none

    def next_host(self) -> tuple[dict[str, Any], dict[str, float]]:
        """One batch as numpy arrays (uint8 images) and its metrics, sampled in the calling thread (use either
        this or iteration on one loader: they share the random generator)."""
        host = sample_host_batch(self.windows, self.counts, self._rng, self.config.with_next)
        arrays = self.transform(host)
        metrics: dict[str, float] = {f"batch/{name}": n for name, n in self.counts.items()}
        metrics["batch/weight_mean"] = float(arrays["weight"].mean())
        metrics["batch/pad_fraction"] = float(arrays["action_is_pad"].mean())
        return arrays, metrics

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                try:
                    arrays, metrics = self.next_host()
                except EmptySourceError:  # the learner starts before the first accepted episode: wait for it
                    self._stop.wait(self.empty_poll_s)
                    continue
                self._key, key = jax.random.split(self._key)
                placed = jax.device_put(arrays, self.sharding) if self.sharding is not None else arrays
                batch = finish_batch(key, placed, self.config.augment)
                item: Any = (batch, metrics)
            except Exception as err:  # surfaced to the consumer
                item = err
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, Exception):
                return

    def __iter__(self) -> BatchLoader:
        return self

    def __next__(self) -> tuple[Batch, dict[str, float]]:
        if self._thread is None and not self._stop.is_set():
            self._thread = threading.Thread(target=self._run, name="hiors-batch-loader", daemon=True)
            self._thread.start()
        while True:
            if self._stop.is_set():
                raise StopIteration
            try:
                item = self._queue.get(timeout=0.5)
                break
            except queue.Empty:
                if not self._thread.is_alive():
                    raise RuntimeError("batch loader thread stopped") from None
        if isinstance(item, Exception):
            self.close()
            raise RuntimeError(f"batch loader failed: {type(item).__name__}: {item}") from item
        return item

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> BatchLoader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
