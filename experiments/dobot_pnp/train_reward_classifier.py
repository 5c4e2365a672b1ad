"""Train the success (reward) classifier on LeRobot datasets; the actor can then use it as its label source.

    python -m experiments.dobot_pnp.train_reward_classifier --dataset=RUN/replay/online[,MORE] --out=DIR

Which frames are positive is documented in `hiors_jax.data.classifier_frames`: the last --positive_frames
frames (and, with --positive_seconds, every frame of the last seconds) of each successful episode, plus frames
the data marks positive (next.reward > --reward_threshold, next.success); every frame of a failed episode and
the earlier frames of a successful one are negative; the --margin_frames frames before a success window are
left out. Each training batch is half positives, half negatives. Episodes (not frames) are held out, drawn
separately among successes and failures, so the held-out figures measure episodes the model never saw.

DIR receives the classifier (`params/` orbax + `reward_classifier.json`), `metrics.json` (held-out accuracy,
precision, recall, false-positive rate at --threshold, and episode-level checks: would the classifier have
labelled a held-out failed episode a success, did it fire before the success window) and `tensorboard/`.
Use it on the actor: `ClassifierLabels(load_label_fn(DIR), threshold)` (see robot.dobot.labels).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from hiors_jax.data.classifier_frames import (
    NEGATIVE,
    POSITIVE,
    ClassifierDataError,
    ClassifierFrames,
    LabelRule,
    camera_name,
    load_frames,
    split_episodes,
)

log = logging.getLogger("experiments.dobot_pnp.train_reward_classifier")


# --------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------
def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text}")
    return value


def _image_size(text: str) -> tuple[int, int]:
    parts = [p for p in text.replace("x", ",").split(",") if p]
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected H or H,W in pixels, got {text!r}") from None
    if len(sizes) == 1:
        sizes *= 2
    if len(sizes) != 2 or min(sizes) < 8:
        raise argparse.ArgumentTypeError(f"expected H or H,W with both >= 8, got {text!r}")
    return sizes[0], sizes[1]


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(p) for p in text.split(",") if p)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive comma-separated integers, got {text!r}")
    return values


def _names(values: Sequence[str]) -> list[str]:
    """Repeated and comma-separated options, flattened in order."""
    return [p.strip() for v in values for p in v.split(",") if p.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.dobot_pnp.train_reward_classifier",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset",
        action="append",
        required=True,
        metavar="ROOT[,ROOT...]",
        help="LeRobot dataset root(s) (v2.1 or v3.0), comma-separated or repeated: a run's replay `online/` "
        "dataset, or any LeRobot dataset with next.reward / next.success (or none: demonstrations)",
    )
    data.add_argument(
        "--camera",
        action="append",
        metavar="NAME[,NAME...]",
        help="cameras the classifier looks at, as observation keys (cam_high) or dataset keys "
        "(observation.images.cam_high); comma-separated or repeated (default: cam_high,cam_left_wrist, "
        "the original's classifier cameras)",
    )
    data.add_argument(
        "--use_state",
        action="store_true",
        help="also feed the robot state (--state_key) to the classifier; off by default: on the simulated "
        "X-Trainer a state input made the classifier fire on arm poses it never saw in training (images only: "
        "1 false success in 8 wandering episodes, with state: 6 in 8)",
    )
    data.add_argument(
        "--state_key",
        default="observation.state",
        help="dataset feature holding the robot state, with --use_state (default: observation.state)",
    )
    data.add_argument(
        "--positive_frames",
        type=_positive_int,
        default=3,
        help="the last N frames of each successful episode are positives (default: 3)",
    )
    data.add_argument(
        "--positive_seconds",
        type=_non_negative_float,
        default=0.0,
        help="also every frame observed within this many seconds of a successful episode's end (robot clock "
        "when the dataset records it); 0 = off (default: 0)",
    )
    data.add_argument(
        "--margin_frames",
        type=_non_negative_int,
        default=2,
        help="frames just before a success window that are left out of training and metrics (default: 2)",
    )
    data.add_argument(
        "--reward_threshold",
        type=float,
        default=0.5,
        help="a frame with next.reward above this is positive; an episode with one is a success when the "
        "dataset has no complementary_info.label (default: 0.5)",
    )
    data.add_argument(
        "--val_fraction",
        type=_fraction,
        default=0.2,
        help="fraction of the successful and of the failed episodes held out for evaluation (default: 0.2)",
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--image_size",
        type=_image_size,
        default=(64, 64),
        metavar="H[,W]",
        help="camera images are resized-with-pad to this size (default: 64)",
    )
    model.add_argument(
        "--conv_features",
        type=_int_list,
        default=(16, 32, 64, 64),
        metavar="C1,C2,...",
        help="channels of the stride-2 convolutions per camera (default: 16,32,64,64)",
    )
    train = parser.add_argument_group("training")
    train.add_argument("--out", required=True, help="output directory for the classifier, metrics and tensorboard")
    train.add_argument(
        "--overwrite", action="store_true", help="replace a classifier already in --out (refused otherwise)"
    )
    train.add_argument("--steps", type=_positive_int, default=1000, help="training steps (default: 1000)")
    train.add_argument(
        "--batch_size",
        type=_positive_int,
        default=32,
        help="frames per step, half positives and half negatives; must be even (default: 32)",
    )
    train.add_argument("--lr", type=_positive_float, default=3e-4, help="peak AdamW learning rate (default: 3e-4)")
    train.add_argument(
        "--weight_decay", type=_non_negative_float, default=1e-4, help="AdamW weight decay (default: 1e-4)"
    )
    train.add_argument(
        "--augment_shift",
        type=_non_negative_int,
        default=4,
        help="random-shift augmentation: pixels of edge padding before a random crop; 0 = off (default: 4)",
    )
    train.add_argument(
        "--threshold",
        type=_probability,
        default=0.75,
        help="probability above which a frame counts as success in the metrics; use the same value as the "
        "actor's classifier threshold (default: 0.75, the original's)",
    )
    train.add_argument("--eval_every", type=_positive_int, default=200, help="held-out evaluation period in steps")
    train.add_argument("--log_every", type=_positive_int, default=10, help="training-metrics period in steps")
    train.add_argument("--seed", type=int, default=42, help="seed for the split, init, batches and augmentation")
    train.add_argument("--log_level", default="INFO", help="python logging level (default: INFO)")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.dataset = _names(args.dataset)
    args.camera = _names(args.camera or ["cam_high,cam_left_wrist"])
    if not args.dataset:
        parser.error("--dataset: no dataset given")
    if not args.camera:
        parser.error("--camera: no camera given")
    if len({camera_name(c) for c in args.camera}) != len(args.camera):
        parser.error(f"--camera: a camera is named twice in {args.camera}")
    if args.batch_size % 2 or args.batch_size < 2:
        parser.error(f"--batch_size must be even (half positives, half negatives), got {args.batch_size}")
    out = pathlib.Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        parser.error(f"--out {out}: exists and is not a directory")
    if (out / "params").exists() and not args.overwrite:
        parser.error(f"--out {out}: already holds a classifier (params/); pass --overwrite to replace it")
    return args


# --------------------------------------------------------------------------------------------------------
# Metrics (pure numpy)
# --------------------------------------------------------------------------------------------------------
def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den else None


def binary_metrics(prob: np.ndarray, label: np.ndarray, threshold: float) -> dict[str, Any]:
    """Frame-level figures at `threshold` (p > threshold means success, as ClassifierLabels decides).
    Ratios with an empty denominator are None."""
    pred, truth = prob > threshold, label == POSITIVE
    tp, fp = int(np.sum(pred & truth)), int(np.sum(pred & ~truth))
    fn, tn = int(np.sum(~pred & truth)), int(np.sum(~pred & ~truth))
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    specificity = _ratio(tn, tn + fp)
    f1 = None if not precision or not recall else 2 * precision * recall / (precision + recall)
    return {
        "frames": tp + fp + fn + tn,
        "positives": tp + fn,
        "negatives": tn + fp,
        "accuracy": _ratio(tp + tn, tp + fp + fn + tn),
        "balanced_accuracy": None if recall is None or specificity is None else (recall + specificity) / 2,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "false_positive_rate": _ratio(fp, fp + tn),
        "true_positives": tp,
        "false_positives": fp,
        "true_negatives": tn,
        "false_negatives": fn,
    }


def episode_metrics(
    prob: np.ndarray, frames: ClassifierFrames, rows: np.ndarray, threshold: float
) -> dict[str, float | int | None]:
    """What the actor's ClassifierLabels would have done on these episodes: it labels success at the first
    frame with p > threshold. A failed episode where that happens is a false success (the worst error: a
    failure would train the policy); a successful one is detected when the first firing frame is not a
    negative frame, and fired early when it is."""
    false_success = failed = detected = early = succeeded = 0
    episode = frames.episode[rows]
    for e in np.unique(episode):
        member = episode == e
        fired = np.flatnonzero(prob[member] > threshold)
        labels = frames.label[rows][member]
        if frames.episodes[e].outcome == "failure":
            failed += 1
            false_success += int(len(fired) > 0)
        else:
            succeeded += 1
            if len(fired):
                first = labels[fired[0]]
                early += int(first == NEGATIVE)
                detected += int(first != NEGATIVE)
    return {
        "failed_episodes": failed,
        "false_success_rate": _ratio(false_success, failed),
        "successful_episodes": succeeded,
        "detection_rate": _ratio(detected, succeeded),
        "fired_early_rate": _ratio(early, succeeded),
    }


# --------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------
def state_stats(state: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std of the training states; a constant dimension (a parked arm) gets std 1."""
    mean, std = state.mean(0), state.std(0)
    std = np.where(std > 1e-6, std, 1.0)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def balanced_batch(
    frames: ClassifierFrames, positives: np.ndarray, negatives: np.ndarray, batch_size: int, rng
) -> dict[str, Any]:
    half = batch_size // 2
    rows = np.concatenate([rng.choice(positives, half), rng.choice(negatives, half)])
    return {
        "images": {c: a[rows] for c, a in frames.images.items()},
        "state": frames.state[rows],
        "label": np.concatenate([np.ones(half, np.float32), np.zeros(half, np.float32)]),
    }


def predict(config, params, frames: ClassifierFrames, rows: np.ndarray, apply, batch_size: int = 256) -> np.ndarray:
    out = []
    for s in range(0, len(rows), batch_size):
        r = rows[s : s + batch_size]
        images = {c: a[r] for c, a in frames.images.items()}
        out.append(np.asarray(apply(params, images, frames.state[r])))
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def _describe_split(frames: ClassifierFrames, held: np.ndarray) -> dict[str, Any]:
    labelled = [i for i, e in enumerate(frames.episodes) if e.outcome is not None]
    out: dict[str, Any] = {
        "episodes": len(frames.episodes),
        "unlabelled_episodes": len(frames.episodes) - len(labelled),
        "outcome_sources": sorted({e.outcome_source for e in frames.episodes}),
    }
    for split, mask in (("train", ~held), ("held_out", held)):
        members = [i for i in labelled if mask[i]]
        rows = np.flatnonzero(np.isin(frames.episode, members))
        out[split] = {
            "episodes": len(members),
            "successful_episodes": sum(frames.episodes[i].outcome == "success" for i in members),
            "failed_episodes": sum(frames.episodes[i].outcome == "failure" for i in members),
            **frames.counts(rows),
        }
    out["held_out"]["which"] = [
        {"dataset": frames.episodes[i].root, "episode_index": frames.episodes[i].episode_index}
        for i in labelled
        if held[i]
    ]
    return out


def train(args: argparse.Namespace) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import optax

    from hiors_jax.agents.train_state import OptimizerConfig, make_optimizer
    from hiors_jax.models import reward_classifier as rc
    from hiors_jax.train.metrics import MetricsWriter

    out = pathlib.Path(args.out).expanduser()
    rule = LabelRule(args.positive_frames, args.positive_seconds, args.margin_frames, args.reward_threshold)
    t0 = time.monotonic()
    frames = load_frames(args.dataset, args.camera, args.image_size, rule, args.state_key if args.use_state else None)
    outcomes = [e.outcome or "unlabelled" for e in frames.episodes]
    held = split_episodes(outcomes, args.val_fraction, args.seed)
    split = _describe_split(frames, held)
    log.info("loaded %d frames of %d episodes in %.1f s", len(frames), len(frames.episodes), time.monotonic() - t0)
    log.info("split: %s", json.dumps({k: v for k, v in split.items() if k != "held_out"} | {"held_out": {
        k: v for k, v in split["held_out"].items() if k != "which"}}))  # fmt: skip
    train_rows = ~held[frames.episode]
    positives = np.flatnonzero(train_rows & (frames.label == POSITIVE))
    negatives = np.flatnonzero(train_rows & (frames.label == NEGATIVE))
    if not len(positives) or not len(negatives):
        kind = "positive" if not len(positives) else "negative"
        raise ClassifierDataError(
            f"--val_fraction {args.val_fraction}: the training episodes have no {kind} frames after holding "
            f"{int(held.sum())} episode(s) out; lower --val_fraction or add episodes"
        )
    val_rows = np.flatnonzero(held[frames.episode])

    state_dim = frames.state.shape[1]
    mean, std = state_stats(frames.state[train_rows]) if state_dim else ((), ())
    config = rc.ClassifierConfig(
        cameras=tuple(camera_name(c) for c in args.camera),
        image_size=tuple(args.image_size),
        state_dim=state_dim,
        state_mean=mean,
        state_std=std,
        conv_features=tuple(args.conv_features),
    )
    key = jax.random.key(args.seed)
    params = rc.init_params(config, jax.random.fold_in(key, 0))
    warmup = min(50, args.steps // 10)
    opt_cfg = OptimizerConfig(
        peak_lr=args.lr,
        decay_lr=args.lr * 0.1,
        warmup_steps=warmup,
        decay_steps=max(args.steps, warmup + 1),
        schedule="warmup_cosine",
        b1=0.9,
        b2=0.999,
        weight_decay=args.weight_decay,
        clip_grad_norm=1.0,
    )
    tx = make_optimizer(opt_cfg, True)
    opt_state = tx.init(params)

    @jax.jit
    def train_step(params, opt_state, batch, step):
        step_key = jax.random.fold_in(jax.random.fold_in(key, 1), step)
        batch = dict(batch, images=rc.random_shift(batch["images"], step_key, args.augment_shift))
        (value, metrics), grads = jax.value_and_grad(lambda p: rc.loss(config, p, batch), has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
        return optax.apply_updates(params, updates), opt_state, metrics

    prob_fn = jax.jit(lambda p, images, state: jax.nn.sigmoid(rc.logits(config, p, images, state)))

    def evaluate() -> dict[str, Any]:
        if not len(val_rows):
            return {}
        prob = predict(config, params, frames, val_rows, prob_fn)
        labelled = frames.label[val_rows] != -1
        return {
            "frames": binary_metrics(prob[labelled], frames.label[val_rows][labelled], args.threshold),
            "episodes": episode_metrics(prob, frames, val_rows, args.threshold),
        }

    out.mkdir(parents=True, exist_ok=True)
    writer = MetricsWriter(out / "tensorboard", progress_total=args.steps)
    rng = np.random.default_rng(args.seed)
    history, held_out, train_metrics = [], {}, {}
    try:
        for step in range(1, args.steps + 1):
            batch = balanced_batch(frames, positives, negatives, args.batch_size, rng)
            params, opt_state, metrics = train_step(params, opt_state, batch, jnp.int32(step))
            if step % args.log_every == 0 or step == args.steps:
                train_metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                writer.log(step, train_metrics, prefix="train")
                writer.progress(step, {"loss": train_metrics["loss"]})
            if step % args.eval_every == 0 or step == args.steps:
                held_out = evaluate()
                if held_out:
                    writer.log(step, held_out, prefix="held_out")
                    history.append({"step": step, **held_out})
                    log.info("step %d held-out: %s", step, _summary(held_out))
        writer.progress(args.steps)
    finally:
        writer.close()

    report = {
        "threshold": args.threshold,
        "held_out": held_out,
        "train": train_metrics,
        "train_frames": binary_metrics(
            predict(config, params, frames, np.concatenate([positives, negatives]), prob_fn),
            frames.label[np.concatenate([positives, negatives])],
            args.threshold,
        ),
        "data": split,
        "label_rule": dataclasses.asdict(rule),
        "history": history,
        "args": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()},
        "seconds": time.monotonic() - t0,
    }
    rc.save(out, config, params, {"training": {"threshold": args.threshold, "held_out": held_out, "data": split}})
    (out / "metrics.json").write_text(json.dumps(report, indent=2))
    return report


def _fmt(value) -> str:
    return "n/a" if value is None else (f"{value:.3f}" if isinstance(value, float) else str(value))


def _summary(held_out: dict[str, Any]) -> str:
    f, e = held_out["frames"], held_out["episodes"]
    return (
        f"accuracy {_fmt(f['accuracy'])} precision {_fmt(f['precision'])} recall {_fmt(f['recall'])} "
        f"false-success episodes {_fmt(e['false_success_rate'])}"
    )


def format_report(report: dict[str, Any]) -> str:
    lines = [f"reward classifier: held-out metrics at threshold {report['threshold']}"]
    held = report["held_out"]
    if not held:
        lines.append("  no episodes held out (--val_fraction 0 or too few episodes): no held-out metrics")
    else:
        rows = [(k, held["frames"][k]) for k in ("frames", "positives", "negatives", "accuracy", "balanced_accuracy",
                                                "precision", "recall", "f1", "false_positive_rate")]  # fmt: skip
        rows += [(f"episodes: {k}", v) for k, v in held["episodes"].items()]
        lines += [f"  {k:<34} {_fmt(v)}" for k, v in rows]
    lines.append(f"  {'train accuracy (all labelled frames)':<34} {_fmt(report['train_frames']['accuracy'])}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        report = train(args)
    except (ClassifierDataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(format_report(report))
    print(f"wrote {pathlib.Path(args.out).expanduser()} (classifier, metrics.json, tensorboard/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
