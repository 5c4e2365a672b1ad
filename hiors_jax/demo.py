"""Self-contained PI0 round trip: build a model, save it as an openpi checkpoint, reload it, act on a robot frame.

    python -m hiors_jax.demo [--preset pi0_tiny] [--out outputs/demo] [--tokenizer PATH] [--steps 10]

The checkpoint is written in openpi's release layout (`params/` orbax tree + `assets/<id>/norm_stats.json`) and
read back through `load_openpi_params`, the same loader that reads openpi's `pi0_base`. The host observation
is shaped like the Dobot X-Trainer's: three uint8 cameras at 224x298, a 14-d joint state and a prompt.
"""

from __future__ import annotations

import argparse
import pathlib
import time

import jax
import numpy as np

from hiors_jax.models import config as model_config
from hiors_jax.models import pi0, preprocessing, tokenizer, weights

PROMPT = "pick up the cube and put it in the box"
CAMERA_MAP = {"base_0_rgb": "cam_high", "left_wrist_0_rgb": "cam_left_wrist", "right_wrist_0_rgb": "cam_right_wrist"}
ROBOT_DIM = 14


def synthetic_robot_frame(rng: np.random.Generator, height=224, width=298) -> dict:
    yy, xx = np.mgrid[0:height, 0:width]
    images = {}
    for i, cam in enumerate(CAMERA_MAP.values()):
        base = np.stack([xx * 255 // width, yy * 255 // height, np.full_like(xx, 80 * i)], axis=-1)
        images[cam] = np.clip(base + rng.integers(0, 20, base.shape), 0, 255).astype(np.uint8)
    return {"images": images, "state": rng.normal(size=ROBOT_DIM).astype(np.float32), "prompt": PROMPT}


def write_checkpoint(out: pathlib.Path, params: dict, stats: dict) -> pathlib.Path:
    weights.save_params_tree(out / "params", params, overwrite=True)
    preprocessing.save_norm_stats(out / "assets" / "xtrainer" / "norm_stats.json", stats)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="pi0_tiny", choices=sorted(model_config.PRESETS))
    parser.add_argument("--out", default="outputs/demo", type=pathlib.Path)
    parser.add_argument(
        "--tokenizer", type=pathlib.Path, help="PaliGemma SentencePiece model (default: train a tiny one)"
    )
    parser.add_argument("--steps", type=int, default=10, help="denoising steps")
    parser.add_argument("--repeats", type=int, default=5, help="timed sampling calls after the first")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)

    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; preset {args.preset}")
    config = model_config.get_preset(args.preset)
    t0 = time.perf_counter()
    params = jax.jit(pi0.init_params, static_argnums=0)(config, jax.random.key(0))
    jax.block_until_ready(params)
    print(f"built {weights.count_params(params):,} parameters in {time.perf_counter() - t0:.2f}s")

    states = rng.normal(size=(1000, ROBOT_DIM)) * 0.3
    q01, q99 = np.quantile(states, [0.01, 0.99], axis=0)
    state_stats = preprocessing.NormStats(mean=states.mean(0), std=states.std(0), q01=q01, q99=q99)
    stats = {"state": state_stats, "actions": state_stats}
    t0 = time.perf_counter()
    ckpt = write_checkpoint(args.out, params, stats)
    print(f"saved openpi-layout checkpoint to {ckpt} in {time.perf_counter() - t0:.2f}s")

    t0 = time.perf_counter()
    config, params = pi0.load_openpi_params(
        ckpt / "params", max_token_len=config.max_token_len, compute_dtype=config.dtype
    )
    norm = preprocessing.load_norm_stats(ckpt / "assets" / "xtrainer")
    elapsed = time.perf_counter() - t0
    print(f"reloaded {weights.count_params(params):,} parameters (pi05={config.pi05}) in {elapsed:.2f}s")

    if args.tokenizer is None:
        args.tokenizer = tokenizer.train_tiny_tokenizer(
            args.out / "tiny_tokenizer.model", [PROMPT, "fold the towel", "transfer the cube"], vocab_size=64
        )
        print(f"no --tokenizer given: trained a tiny SentencePiece model at {args.tokenizer}")
    tok = tokenizer.PaligemmaTokenizer(args.tokenizer, max_len=config.max_token_len)

    frame = synthetic_robot_frame(rng)
    inputs = preprocessing.make_observation_inputs(
        frame,
        camera_map=CAMERA_MAP,
        tokenizer=tok,
        state_stats=norm["state"],
        use_quantiles=config.pi05,
        discrete_state=config.pi05,
        action_dim=config.action_dim,
        image_size=(config.vision.image_size, config.vision.image_size),
    )
    obs = pi0.Observation.from_dict(inputs)
    noise = jax.random.normal(jax.random.key(1), (1, config.action_horizon, config.action_dim))

    t0 = time.perf_counter()
    actions = jax.block_until_ready(pi0.sample_actions(config, params, obs, noise, num_steps=args.steps))
    first = time.perf_counter() - t0
    timings = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(pi0.sample_actions(config, params, obs, noise, num_steps=args.steps))
        timings.append(time.perf_counter() - t0)
    chunk = preprocessing.unnormalize(np.asarray(actions[0, :, :ROBOT_DIM]), norm["actions"], use_quantiles=config.pi05)

    print(
        f"observation: {', '.join(f'{k} {v.shape}' for k, v in frame['images'].items())}, state {frame['state'].shape}"
    )
    print(f"model input: images {obs.images['base_0_rgb'].shape}, prompt {int(obs.tokenized_prompt_mask.sum())} tokens")
    print(f"action chunk: {chunk.shape} in robot units, finite={bool(np.all(np.isfinite(chunk)))}")
    print(
        f"sample_actions ({args.steps} steps): first call {first * 1e3:.0f} ms (includes compile), "
        f"then {np.median(timings) * 1e3:.1f} ms median over {len(timings)}"
    )
    print(f"first action: {np.array2string(chunk[0], precision=3, suppress_small=True)}")


if __name__ == "__main__":
    main()
