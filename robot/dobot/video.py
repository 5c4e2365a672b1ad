"""Episode videos (the three cameras side by side) and a tool that merges episode videos into one timelapse.

    python -m robot.dobot.video merge timelapse.mp4 videos/episode_*.mp4 --every 4 --fps 20

`EpisodeVideoWrapper` wraps the env and writes one mp4 per episode from the observations the actor saw.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import av
import gymnasium as gym
import numpy as np

from robot.dobot.protocol import CAMERA_KEYS


def tile_cameras(images: dict[str, np.ndarray]) -> np.ndarray:
    """cam_left_wrist | cam_high | cam_right_wrist, as the operator would stand; smaller images are padded."""
    order = ("cam_left_wrist", "cam_high", "cam_right_wrist")
    missing = [k for k in order if k not in images]
    if missing:
        raise KeyError(f"tile_cameras needs {list(CAMERA_KEYS)}; missing {missing}")
    height = max(images[k].shape[0] for k in order)
    parts = [np.pad(images[k], ((0, height - images[k].shape[0]), (0, 0), (0, 0))) for k in order]
    return np.concatenate(parts, axis=1)


class VideoWriter:
    """H.264 (yuv420p) mp4; odd frame sizes are padded to even, as the encoder needs."""

    def __init__(self, path: str | pathlib.Path, fps: int = 10, crf: int = 28):
        self.path = pathlib.Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps = int(fps)
        self.crf = crf
        self._container = None
        self._stream = None
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        frame = np.asarray(frame, np.uint8)
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"video frames must be HxWx3 uint8, got {frame.shape}")
        frame = np.pad(frame, ((0, frame.shape[0] % 2), (0, frame.shape[1] % 2), (0, 0)))
        if self._container is None:
            self._container = av.open(str(self.path), mode="w")
            self._stream = self._container.add_stream("libx264", rate=self.fps, options={"crf": str(self.crf)})
            self._stream.width, self._stream.height = frame.shape[1], frame.shape[0]
            self._stream.pix_fmt = "yuv420p"
        elif (frame.shape[1], frame.shape[0]) != (self._stream.width, self._stream.height):
            raise ValueError(
                f"frame size {frame.shape[1]}x{frame.shape[0]} differs from the video's "
                f"{self._stream.width}x{self._stream.height}"
            )
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        if self._container is None:
            return
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        self._container = None


def read_frames(path: str | pathlib.Path):
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")


def merge_timelapse(inputs: list[str | pathlib.Path], output: str | pathlib.Path, every: int = 1, fps: int = 20) -> int:
    """Every `every`-th frame of each input, in order, into one video; returns the frame count written."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    if not inputs:
        raise ValueError("merge_timelapse needs at least one input video")
    writer = VideoWriter(output, fps=fps)
    size = None
    try:
        for path in inputs:
            for i, frame in enumerate(read_frames(path)):
                if i % every:
                    continue
                if size is None:
                    size = frame.shape
                if frame.shape != size:  # episodes recorded at another size are padded/cropped to the first
                    canvas = np.zeros(size, np.uint8)
                    h, w = min(size[0], frame.shape[0]), min(size[1], frame.shape[1])
                    canvas[:h, :w] = frame[:h, :w]
                    frame = canvas
                writer.write(frame)
    finally:
        writer.close()
    return writer.frames


class EpisodeVideoWrapper(gym.Wrapper):
    """Writes `<directory>/episode_<n>.mp4` for every episode; `info["video_path"]` names it at the end."""

    def __init__(self, env: gym.Env, directory: str | pathlib.Path, fps: int = 10):
        super().__init__(env)
        self.directory = pathlib.Path(directory)
        self.fps = fps
        self.episode = -1
        self._writer: VideoWriter | None = None

    def reset(self, **kwargs):
        self._finish()
        obs, info = self.env.reset(**kwargs)
        self.episode += 1
        self._writer = VideoWriter(self.directory / f"episode_{self.episode:05d}.mp4", self.fps)
        self._writer.write(tile_cameras(obs["images"]))
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self._writer is not None:
            self._writer.write(tile_cameras(obs["images"]))
            if terminated or truncated:
                info = {**info, "video_path": str(self._writer.path)}
                self._finish()
        return obs, reward, terminated, truncated, info

    def _finish(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def close(self):
        self._finish()
        super().close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="episode video tools")
    sub = parser.add_subparsers(dest="command", required=True)
    merge = sub.add_parser("merge", help="merge episode videos into one timelapse")
    merge.add_argument("output")
    merge.add_argument("inputs", nargs="+")
    merge.add_argument("--every", type=int, default=1, help="keep every n-th frame")
    merge.add_argument("--fps", type=int, default=20)
    args = parser.parse_args(argv)
    frames = merge_timelapse(sorted(args.inputs), args.output, args.every, args.fps)
    print(f"wrote {frames} frames from {len(args.inputs)} videos to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
