"""Video frames for LeRobot datasets with PyAV: decode by timestamp, encode episodes, concatenate by remux.

Decoding matches lerobot's readers: a query time picks the decoded frame with the nearest pts, and it is an
error when that frame is `tolerance_s` or more away. Frames come back as uint8 RGB HWC (swscale's default
conversion, which is what torchcodec produces, so AV1 frames are bit-identical to lerobot's).
"""

from __future__ import annotations

import fractions
import os
import pathlib
from collections import OrderedDict
from collections.abc import Sequence

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from hiors_jax.data.lerobot_meta import LeRobotFormatError

# Encoder names accepted by the writer, and the codec name lerobot records in info.json for each.
VIDEO_CODECS = {"libsvtav1": "av1", "av1": "av1", "h264": "h264", "libx264": "h264"}
# Queries at most this many frame intervals apart are decoded forward without a new seek. lerobot's g=2
# puts a keyframe every 2 frames, so seeking is cheaper than decoding through anything farther away.
_SAME_RUN_FRAMES = 1.5


class VideoFile:
    """One open mp4: decodes frames at given times with as few seeks as possible."""

    def __init__(self, path: str | pathlib.Path, threads: int = 1):
        self.path = pathlib.Path(path)
        if not self.path.is_file():
            raise LeRobotFormatError(f"{self.path}: video file is missing")
        try:
            self._container = av.open(str(self.path))
            self._stream = self._container.streams.video[0]
        except (av.error.FFmpegError, IndexError) as err:
            raise LeRobotFormatError(f"{self.path}: cannot open video ({err})") from err
        self._stream.codec_context.thread_count = threads
        self._time_base = float(self._stream.time_base)
        rate = self._stream.average_rate or self._stream.guessed_rate or 30
        self._same_run_gap_s = _SAME_RUN_FRAMES / float(rate)
        # One reformatter per file keeps swscale's context cached; a fresh one per frame costs ~1 ms.
        self._reformatter = VideoReformatter()

    def close(self) -> None:
        self._container.close()

    def frames_at(self, timestamps: Sequence[float], tolerance_s: float, out: np.ndarray | None = None) -> np.ndarray:
        """uint8 (len(timestamps), H, W, 3): for each time, the frame whose pts is nearest (written to `out`)."""
        times = np.asarray(timestamps, dtype=np.float64)
        order = np.argsort(times, kind="stable")
        if out is None:
            out = np.empty((len(times), self.height, self.width, 3), np.uint8)
        run_start = 0
        for i in range(1, len(order) + 1):
            if i == len(order) or times[order[i]] - times[order[i - 1]] > self._same_run_gap_s:
                self._decode_run(times, order[run_start:i], tolerance_s, out)
                run_start = i
        return out

    @property
    def height(self) -> int:
        return self._stream.codec_context.height

    @property
    def width(self) -> int:
        return self._stream.codec_context.width

    def _decode_run(self, times: np.ndarray, run: np.ndarray, tolerance_s: float, out: np.ndarray) -> None:
        """Seek to the keyframe at or before the first time, decode forward past the last one."""
        first = times[run[0]]
        try:
            self._container.seek(max(0, int(first / self._time_base)), stream=self._stream, backward=True)
            pending = list(run)
            prev = None
            for frame in self._container.decode(self._stream):
                t = frame.pts * self._time_base
                while pending and t >= times[pending[0]]:
                    q = pending.pop(0)
                    best = frame if prev is None or abs(t - times[q]) <= abs(prev[0] - times[q]) else prev[1]
                    out[q] = self._check(best, times[q], tolerance_s)
                prev = (t, frame)
                if not pending:
                    break
            for q in pending:  # past the last frame: the last frame is the nearest
                if prev is None:
                    raise LeRobotFormatError(
                        f"{self.path}: no frame within {tolerance_s}s of {times[q]:.6f}s: nothing decodes from there "
                        "(truncated or corrupt video)"
                    )
                out[q] = self._check(prev[1], times[q], tolerance_s)
        except av.error.FFmpegError as err:
            raise LeRobotFormatError(f"{self.path}: video decode failed near {first:.4f}s ({err})") from err

    def _check(self, frame: av.VideoFrame, query: float, tolerance_s: float) -> np.ndarray:
        t = frame.pts * self._time_base
        if abs(t - query) >= tolerance_s:
            raise LeRobotFormatError(
                f"{self.path}: no frame within {tolerance_s}s of {query:.6f}s (nearest pts {t:.6f}s); "
                "the video is truncated or does not match the parquet timestamps"
            )
        return self.to_rgb(frame)

    def to_rgb(self, frame: av.VideoFrame) -> np.ndarray:
        return self._reformatter.reformat(frame, format="rgb24").to_ndarray()

    def all_frames(self) -> tuple[np.ndarray, np.ndarray]:
        """Every frame in order: (times float64 (N,), frames uint8 (N, H, W, 3))."""
        try:
            self._container.seek(0, stream=self._stream, backward=True)
            pairs = [
                (f.pts * self._time_base, f.to_ndarray(format="rgb24")) for f in self._container.decode(self._stream)
            ]
        except av.error.FFmpegError as err:
            raise LeRobotFormatError(f"{self.path}: video decode failed ({err})") from err
        if not pairs:
            return np.zeros(0), np.zeros((0, 0, 0, 3), np.uint8)
        return np.array([t for t, _ in pairs]), np.stack([f for _, f in pairs])


class VideoFileCache:
    """Keeps open VideoFiles (one cache per process/worker; containers are not fork-safe).

    `get` never closes anything, so files handed out for one batch stay valid while it decodes; `trim`
    (called between batches) closes the least recently used ones beyond `max_open`.
    """

    def __init__(self, max_open: int = 256, threads: int = 1):
        self._files: OrderedDict[pathlib.Path, VideoFile] = OrderedDict()
        self._max_open = max_open
        self._threads = threads

    def get(self, path: pathlib.Path) -> VideoFile:
        video = self._files.get(path)
        if video is None:
            video = self._files[path] = VideoFile(path, threads=self._threads)
        else:
            self._files.move_to_end(path)
        return video

    def trim(self) -> None:
        while len(self._files) > self._max_open:
            self._files.popitem(last=False)[1].close()

    def close(self) -> None:
        for video in self._files.values():
            video.close()
        self._files.clear()


def decode_frames_at(path: str | pathlib.Path, timestamps: Sequence[float], tolerance_s: float = 1e-4) -> np.ndarray:
    video = VideoFile(path)
    try:
        return video.frames_at(timestamps, tolerance_s)
    finally:
        video.close()


class EpisodeVideoEncoder:
    """Streams RGB frames of one episode into an mp4 (lerobot defaults: AV1, yuv420p, g=2, crf=30)."""

    def __init__(
        self,
        path: str | pathlib.Path,
        height: int,
        width: int,
        fps: int,
        codec: str = "libsvtav1",
        crf: int = 30,
        gop: int = 2,
        preset: int | None = 12,
    ):
        if codec not in VIDEO_CODECS:
            raise ValueError(f"video codec {codec!r} not supported; choose one of {sorted(VIDEO_CODECS)}")
        if height % 2 or width % 2:
            raise ValueError(f"yuv420p video needs even height and width, got {height}x{width}")
        self.path = pathlib.Path(path)
        self.height, self.width = height, width
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its whole config to stderr otherwise
        self._container = av.open(str(self.path), "w")
        encoder = "libsvtav1" if VIDEO_CODECS[codec] == "av1" else "libx264"
        self._stream = self._container.add_stream(encoder, rate=fps)
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, "yuv420p"
        options = {"g": str(gop), "crf": str(crf)}
        if encoder == "libsvtav1" and preset is not None:
            options["preset"] = str(preset)
        if encoder == "libx264":
            options["bf"] = "0"  # dts == pts, so episodes concatenate with monotonic timestamps
        self._stream.options = options
        self._stream.codec_context.time_base = fractions.Fraction(1, fps)
        self._count = 0
        self._closed = False

    def add(self, rgb: np.ndarray) -> None:
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = self._count
        self._count += 1
        self._container.mux(self._stream.encode(frame))

    def close(self) -> int:
        """Flush the encoder, close the file; returns the number of frames written (idempotent, so a failed
        save_episode can be retried)."""
        if not self._closed:
            self._container.mux(self._stream.encode(None))
            self._container.close()
            self._closed = True
        return self._count


class ConcatVideoWriter:
    """Appends episode mp4s to one growing mp4 by remuxing packets (no re-encode), like lerobot's concat."""

    def __init__(self, path: str | pathlib.Path):
        self.path = pathlib.Path(path)
        self.duration_s = 0.0  # end of the last appended episode, seconds inside this file
        self._container = None
        self._stream = None
        self._last_dts = None
        self.bytes_written = 0  # packet payload muxed so far (the file on disk lags behind AVIO's buffer)

    def append(self, episode_path: str | pathlib.Path, num_frames: int, fps: int) -> tuple[float, float]:
        """Remux one episode file; returns its (from_timestamp, to_timestamp) inside this file."""
        start = self.duration_s
        with av.open(str(episode_path)) as source:
            in_stream = source.streams.video[0]
            if self._container is None:
                self._container = av.open(str(self.path), "w", options={"movflags": "faststart"})
                self._stream = self._container.add_stream_from_template(in_stream, opaque=True)
            shift = round(start / float(in_stream.time_base))
            for packet in source.demux(in_stream):
                if packet.dts is None:  # demuxer's end-of-stream marker
                    continue
                packet.pts += shift
                packet.dts += shift
                if self._last_dts is not None and packet.dts <= self._last_dts:
                    raise LeRobotFormatError(f"{episode_path}: packet timestamps overlap the previous episode")
                self._last_dts = packet.dts
                packet.stream = self._stream
                self.bytes_written += packet.size
                self._container.mux(packet)
        self.duration_s = start + num_frames / fps
        return start, self.duration_s

    def size_bytes(self) -> int:
        return self.bytes_written

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
