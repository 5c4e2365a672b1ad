"""Convert a LeRobot v2.1 dataset to v3.0 without re-encoding video (parquet rows copied, mp4s remuxed)."""

from __future__ import annotations

import pathlib
from typing import Any

from hiors_jax.data.lerobot_meta import DEFAULT_FEATURES, LeRobotFormatError, load_meta, read_jsonl, read_parquet
from hiors_jax.data.lerobot_write import LeRobotDatasetWriter


def _episode_stats_v21(root: pathlib.Path) -> dict[int, dict[str, Any]]:
    path = root / "meta" / "episodes_stats.jsonl"
    if not path.is_file():
        return {}
    return {int(r["episode_index"]): r["stats"] for r in read_jsonl(path)}


def convert_v21_to_v30(
    source: str | pathlib.Path,
    destination: str | pathlib.Path,
    data_files_size_in_mb: float = 100,
    video_files_size_in_mb: float = 200,
) -> pathlib.Path:
    """Write `source` (v2.1) as a v3.0 dataset at `destination` (which must not exist)."""
    source = pathlib.Path(source)
    meta = load_meta(source)
    if meta.version != "v2.1":
        raise LeRobotFormatError(f"{source}: convert expects a v2.1 dataset, found {meta.version}")
    features = {k: f for k, f in meta.features.items() if k not in DEFAULT_FEATURES}
    episode_stats = _episode_stats_v21(source)
    writer = LeRobotDatasetWriter(
        destination,
        meta.fps,
        features,
        use_videos=True,
        robot_type=meta.robot_type,
        data_files_size_in_mb=data_files_size_in_mb,
        video_files_size_in_mb=video_files_size_in_mb,
    )
    try:
        # Keep the source's task numbering so task_index values stay valid.
        writer.tasks = {task: i for i, task in enumerate(meta.tasks)}
        for pos in range(len(meta.episodes)):
            episode = int(meta.episodes.episode_index[pos])
            table = read_parquet(meta.data_path(pos))
            if table.num_rows != int(meta.episodes.length[pos]):
                raise LeRobotFormatError(
                    f"{meta.data_path(pos)}: {table.num_rows} rows but episodes.jsonl says {meta.episodes.length[pos]}"
                )
            stats = episode_stats.get(episode)
            if stats is None:
                raise LeRobotFormatError(f"{source}/meta/episodes_stats.jsonl: no stats for episode {episode}")
            videos = {key: meta.video_path(key, pos) for key in meta.video_keys}
            writer.save_prepared_episode(table, videos, stats, meta.episodes.tasks[pos])
        return writer.finalize()
    except BaseException:
        writer.abort()
        raise
