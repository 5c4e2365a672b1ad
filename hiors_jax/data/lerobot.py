"""LeRobot datasets without torch: read v2.1 / v3.0, write v3.0, convert, and a small CLI.

python -m hiors_jax.data.lerobot info ROOT        episodes, frames, features, tasks
python -m hiors_jax.data.lerobot convert ROOT OUT  v2.1 -> v3.0 (video remuxed, not re-encoded)
"""

from __future__ import annotations

import argparse
import sys

from hiors_jax.data.lerobot_convert import convert_v21_to_v30
from hiors_jax.data.lerobot_meta import DatasetMeta, LeRobotFormatError, load_meta
from hiors_jax.data.lerobot_read import LeRobotDataset, MultiLeRobotDataset, open_dataset
from hiors_jax.data.lerobot_video import decode_frames_at
from hiors_jax.data.lerobot_write import FrameValidationError, LeRobotDatasetWriter

__all__ = [
    "DatasetMeta",
    "FrameValidationError",
    "LeRobotDataset",
    "LeRobotDatasetWriter",
    "LeRobotFormatError",
    "MultiLeRobotDataset",
    "convert_v21_to_v30",
    "decode_frames_at",
    "describe",
    "load_meta",
    "open_dataset",
]


def describe(meta: DatasetMeta) -> str:
    """Human-readable summary of a dataset's metadata."""
    lengths = meta.episodes.length
    lines = [
        f"root:      {meta.root}",
        f"version:   {meta.version}   robot_type: {meta.robot_type}   fps: {meta.fps}",
        f"episodes:  {len(meta.episodes)}   frames: {int(lengths.sum())}"
        + (f"   length min/mean/max: {lengths.min()}/{lengths.mean():.1f}/{lengths.max()}" if len(lengths) else ""),
        "features:",
    ]
    for key, feature in meta.features.items():
        extra = ""
        if "info" in feature:
            extra = f"  codec={feature['info'].get('video.codec')}"
        lines.append(f"  {key:<40} {feature['dtype']:<8} {list(feature['shape'])}{extra}")
    lines.append(f"tasks ({len(meta.tasks)}):")
    lines += [f"  {i}: {task}" for i, task in enumerate(meta.tasks)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hiors_jax.data.lerobot", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="print episodes, frames, features and tasks")
    info.add_argument("root")
    convert = sub.add_parser("convert", help="convert a v2.1 dataset to v3.0")
    convert.add_argument("root")
    convert.add_argument("out")
    convert.add_argument("--data-file-mb", type=float, default=100)
    convert.add_argument("--video-file-mb", type=float, default=200)
    args = parser.parse_args(argv)
    try:
        if args.command == "info":
            print(describe(load_meta(args.root)))
        else:
            out = convert_v21_to_v30(args.root, args.out, args.data_file_mb, args.video_file_mb)
            print(f"wrote {out}")
            print(describe(load_meta(out)))
    except (LeRobotFormatError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
