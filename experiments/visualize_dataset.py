"""Look at one episode of a LeRobot dataset: its cameras side by side with state and action curves.

    python -m experiments.visualize_dataset ROOT --episode K [--out PATH] [--format mp4|html]

mp4 (default): every frame shows the cameras with the episode's curves beneath and a cursor at the current frame.
html: one self-contained page, the camera video (embedded) above SVG curves whose cursor follows playback and
whose values at the cursor are printed; click a chart to seek. The dataset is read through
`hiors_jax.data.lerobot.LeRobotDataset` (v2.1 or v3.0; video and image cameras).
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import pathlib
import sys
import tempfile
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from experiments import charts
from hiors_jax.data.lerobot import LeRobotDataset, LeRobotFormatError
from hiors_jax.data.lerobot_meta import image_hwc_shape
from hiors_jax.data.lerobot_video import EpisodeVideoEncoder

DEFAULT_KEYS = ("observation.state", "action")
CURSOR = (0, 0, 0)  # black: no curve colour is, so the frame marker never hides in the data
HEADER_H = 26
CHUNK = 64  # frames decoded at a time, so a long episode never sits in memory whole


class _NoCameras:
    """A FrameSource that decodes nothing: `get_batch` then reads only the parquet columns."""

    def frames(self, key: str, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        return out


def camera_keys(ds: LeRobotDataset) -> list[str]:
    return [k for k, f in ds.features.items() if f["dtype"] in ("video", "image")]


def numeric_keys(ds: LeRobotDataset) -> list[str]:
    skip = {"index", "episode_index", "frame_index", "task_index", "timestamp"}
    return [k for k, f in ds.features.items() if f["dtype"] not in ("video", "image", "string") and k not in skip]


def dim_names(feature: dict, dims: int) -> list[str]:
    names = feature.get("names")
    if isinstance(names, dict):  # lerobot's {"motors": [...]} form
        names = next(iter(names.values()), None)
    if isinstance(names, list) and len(names) == dims and all(isinstance(n, str) for n in names):
        return names
    return [str(i) for i in range(dims)]


def read_columns(ds: LeRobotDataset, keys: Sequence[str]) -> tuple[dict[str, np.ndarray], list[str], np.ndarray]:
    """(values {key: (N, D) float64}, task per frame, timestamps) of the loaded episode, without decoding video."""
    values: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    tasks: list[str] = []
    stamps: list[np.ndarray] = []
    ds.frame_source = _NoCameras()
    try:
        for start in range(0, len(ds), CHUNK * 4):
            batch = ds.get_batch(range(start, min(len(ds), start + CHUNK * 4)))
            for key in keys:
                column = np.asarray(batch[key], np.float64)
                values[key].append(column.reshape(len(column), -1))
            tasks += batch["task"]
            stamps.append(np.asarray(batch["timestamp"], np.float64))
    finally:
        ds.frame_source = None
    return {k: np.concatenate(v) for k, v in values.items()}, tasks, np.concatenate(stamps)


def camera_chunks(ds: LeRobotDataset, cameras: Sequence[str]):
    """Yields (first row, {camera: uint8 (n, H, W, 3)}) for consecutive chunks of the episode."""
    for start in range(0, len(ds), CHUNK):
        rows = list(range(start, min(len(ds), start + CHUNK)))
        outs = {k: np.empty((len(rows), *image_hwc_shape(ds.features[k])), np.uint8) for k in cameras}
        ds.decode_cameras(rows, outs)  # the cameras' mp4s decode in parallel
        yield start, outs


class Layout:
    """Pixel layout of one output frame: header, camera row, optional chart panel (all sizes even)."""

    def __init__(
        self, ds: LeRobotDataset, cameras: Sequence[str], height: int, chart_keys: Sequence[str], chart_h: int
    ):
        self.cameras = list(cameras)
        self.sizes = []
        for key in cameras:
            h, w = image_hwc_shape(ds.features[key])[:2]
            self.sizes.append((height, max(2, round(w * height / h))))
        gap = 4
        row_w = sum(w for _, w in self.sizes) + gap * (len(cameras) - 1)
        self.width = _even(max(row_w, 640 if chart_keys else 0))
        left = (self.width - row_w) // 2
        self.positions = []
        for _, w in self.sizes:
            self.positions.append((left, HEADER_H))
            left += w + gap
        self.charts_top = HEADER_H + height + 6
        self.height = _even(self.charts_top + chart_h * len(chart_keys) if chart_keys else HEADER_H + height)


def _even(n: int) -> int:
    return n + (n % 2)


def draw_chart_panel(
    layout: Layout, values: dict[str, np.ndarray], ds: LeRobotDataset, chart_h: int
) -> tuple[Image.Image, list[charts.Axes]]:
    """The episode's curves, drawn once; each frame stamps a cursor on a copy."""
    panel = Image.new("RGB", (layout.width, chart_h * len(values)), charts.BACKGROUND)
    draw = ImageDraw.Draw(panel)
    axes = []
    for i, (key, data) in enumerate(values.items()):
        frames = np.arange(len(data))
        names = dim_names(ds.features[key], data.shape[1])
        series = [charts.Series(frames, data[:, d], names[d], charts.colour(d)) for d in range(data.shape[1])]
        box = (0, i * chart_h, layout.width - 1, (i + 1) * chart_h - 1)
        xlim = (0.0, float(max(len(data) - 1, 1)))
        axes.append(charts.draw_chart(draw, box, series, title=key, x_label="frame", xlim=xlim, text_size=11))
    return panel, axes


def compose_frame(
    layout: Layout,
    images: dict[str, np.ndarray],
    header: str,
    panel: Image.Image | None,
    axes: Sequence[charts.Axes],
    frame: int,
) -> np.ndarray:
    canvas = Image.new("RGB", (layout.width, layout.height), (24, 24, 24))
    draw = ImageDraw.Draw(canvas)
    draw.text((8, 6), header, fill=(235, 235, 235), font=charts.font(13))
    label_font = charts.font(11)
    for key, (h, w), (x, y) in zip(layout.cameras, layout.sizes, layout.positions, strict=True):
        image = Image.fromarray(images[key])
        canvas.paste(image.resize((w, h), Image.BILINEAR) if image.size != (w, h) else image, (x, y))
        name = key.removeprefix("observation.images.")
        draw.rectangle([x, y, x + draw.textlength(name, font=label_font) + 8, y + 16], fill=(0, 0, 0))
        draw.text((x + 4, y + 2), name, fill=(255, 255, 255), font=label_font)
    if panel is not None:
        stamped = panel.copy()
        pen = ImageDraw.Draw(stamped)
        for ax in axes:
            px, _ = ax.px(frame, 0.0)
            pen.line([(float(px), ax.top), (float(px), ax.bottom)], fill=CURSOR, width=2)
        canvas.paste(stamped, (0, layout.charts_top))
    return np.asarray(canvas)


def write_video(
    ds: LeRobotDataset,
    out: pathlib.Path,
    cameras: Sequence[str],
    values: dict[str, np.ndarray],
    tasks: list[str],
    stamps: np.ndarray,
    *,
    title: str,
    height: int,
    chart_h: int,
    fps: int,
) -> int:
    """Encode the episode as H.264 mp4 (charts beneath the cameras unless `values` is empty); returns frames."""
    layout = Layout(ds, cameras, height, list(values), chart_h)
    panel, axes = draw_chart_panel(layout, values, ds, chart_h) if values else (None, [])
    encoder = EpisodeVideoEncoder(out, layout.height, layout.width, fps, codec="libx264", crf=23, gop=fps)
    try:
        for start, chunk in camera_chunks(ds, cameras):
            for i in range(len(next(iter(chunk.values())))):
                f = start + i
                header = f"{title}   frame {f}/{len(ds) - 1}   t={stamps[f]:.2f}s   {tasks[f]}"
                encoder.add(compose_frame(layout, {k: v[i] for k, v in chunk.items()}, header, panel, axes, f))
    finally:
        count = encoder.close()
    return count


def _svg_chart(key: str, data: np.ndarray, names: list[str], index: int, width: int = 960, height: int = 220) -> str:
    """One chart as inline SVG (same look as the mp4's), with a cursor line the page's script moves."""
    image = Image.new("RGB", (8, 8))  # only for text measurement
    draw = ImageDraw.Draw(image)
    frames = np.arange(len(data))
    xlim = (0.0, float(max(len(data) - 1, 1)))
    ylim = charts.padded_range(data.ravel())
    legend_rows = 1 + int(sum(draw.textlength(n, font=charts.font(11)) + 22 for n in names) // (width - 20))
    top = 24 + 16 * legend_rows
    axes = charts.Axes(left=64, top=top, right=width - 12, bottom=height - 30, xlim=xlim, ylim=ylim)
    parts = [
        f'<svg class="chart" data-index="{index}" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        'xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" font-size="11">',
        f'<text x="8" y="16" font-size="13">{html.escape(key)}</text>',
    ]
    x, y = 8, 28
    for d, name in enumerate(names):
        w = draw.textlength(name, font=charts.font(11)) + 22
        if x + w > width - 4:
            x, y = 8, y + 16
        r, g, b = charts.colour(d)
        parts.append(f'<rect x="{x}" y="{y}" width="10" height="8" fill="rgb({r},{g},{b})"/>')
        parts.append(f'<text x="{x + 14}" y="{y + 8}">{html.escape(name)}</text>')
        x += w
    for t in charts.nice_ticks(*ylim):
        _, py = axes.px(0, t)
        parts.append(f'<line x1="{axes.left}" x2="{axes.right}" y1="{py:.1f}" y2="{py:.1f}" stroke="#e1e1e1"/>')
        parts.append(f'<text x="{axes.left - 6}" y="{py + 4:.1f}" text-anchor="end">{charts.format_tick(t)}</text>')
    for t in charts.nice_ticks(*xlim, count=6):
        px, _ = axes.px(t, 0)
        parts.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{axes.top}" y2="{axes.bottom}" stroke="#e1e1e1"/>')
        parts.append(f'<text x="{px:.1f}" y="{axes.bottom + 14}" text-anchor="middle">{charts.format_tick(t)}</text>')
    parts.append(
        f'<rect x="{axes.left}" y="{axes.top}" width="{axes.right - axes.left}" height="{axes.bottom - axes.top}" '
        'fill="none" stroke="#3c3c3c"/>'
    )
    for d in range(data.shape[1]):
        sx, sy = axes.px(frames, data[:, d])
        ok = np.isfinite(sy)
        points = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(sx[ok], sy[ok], strict=True))
        r, g, b = charts.colour(d)
        parts.append(
            f'<polyline class="series" data-dim="{d}" fill="none" stroke="rgb({r},{g},{b})" stroke-width="1.5" '
            f'points="{points}"/>'
        )
    parts.append(
        f'<line class="cursor" x1="{axes.left}" x2="{axes.left}" y1="{axes.top}" y2="{axes.bottom}" '
        f'stroke="rgb{CURSOR}" stroke-width="2" data-left="{axes.left}" data-right="{axes.right}"/>'
    )
    parts.append("</svg>")
    return "\n".join(parts)


_PAGE_SCRIPT = """
const data = JSON.parse(document.getElementById("episode-data").textContent);
const video = document.getElementById("video");
const last = Math.max(data.frames - 1, 1);
function show(frame) {
  frame = Math.max(0, Math.min(data.frames - 1, frame));
  document.querySelectorAll("svg.chart").forEach((svg) => {
    const cursor = svg.querySelector(".cursor");
    const left = +cursor.dataset.left, right = +cursor.dataset.right;
    const x = left + (right - left) * frame / last;
    cursor.setAttribute("x1", x); cursor.setAttribute("x2", x);
  });
  const lines = [`frame ${frame}  t=${data.timestamps[frame].toFixed(3)}s  task: ${data.tasks[frame]}`];
  for (const [key, rows] of Object.entries(data.values)) {
    lines.push(key + ": " + rows[frame].map((v, d) => `${data.names[key][d]}=${(+v).toPrecision(5)}`).join("  "));
  }
  document.getElementById("values").textContent = lines.join("\\n");
}
function tick() {
  show(Math.floor(video.currentTime * data.fps + 1e-6));
  if (!video.paused) requestAnimationFrame(tick);
}
video.addEventListener("timeupdate", tick);
video.addEventListener("play", () => requestAnimationFrame(tick));
video.addEventListener("seeked", tick);
document.querySelectorAll("svg.chart").forEach((svg) => svg.addEventListener("click", (event) => {
  const cursor = svg.querySelector(".cursor");
  const box = svg.getBoundingClientRect();
  const x = (event.clientX - box.left) * svg.viewBox.baseVal.width / box.width;
  const left = +cursor.dataset.left, right = +cursor.dataset.right;
  const frame = Math.round((x - left) / (right - left) * last);
  video.currentTime = (Math.max(0, Math.min(data.frames - 1, frame)) + 0.5) / data.fps;
  show(frame);
}));
show(0);
"""


def write_html(
    ds: LeRobotDataset,
    out: pathlib.Path,
    cameras: Sequence[str],
    values: dict[str, np.ndarray],
    tasks: list[str],
    stamps: np.ndarray,
    *,
    title: str,
    height: int,
    fps: int,
) -> int:
    """A self-contained page: the camera video (base64 mp4) and SVG curves with a synced cursor; returns frames."""
    with tempfile.TemporaryDirectory() as tmp:
        video_path = pathlib.Path(tmp) / "cameras.mp4"
        count = write_video(ds, video_path, cameras, {}, tasks, stamps, title=title, height=height, chart_h=0, fps=fps)
        video = base64.b64encode(video_path.read_bytes()).decode("ascii")
    names = {k: dim_names(ds.features[k], v.shape[1]) for k, v in values.items()}
    payload = {
        "fps": fps,
        "frames": len(ds),
        "timestamps": stamps.tolist(),
        "tasks": tasks,
        "names": names,
        "values": {k: v.tolist() for k, v in values.items()},
    }
    svgs = "\n".join(_svg_chart(k, v, names[k], i) for i, (k, v) in enumerate(values.items()))
    unique_tasks = ", ".join(html.escape(t) for t in dict.fromkeys(tasks))
    embedded = json.dumps(payload).replace("</", "<\\/")  # a task text cannot close the script element
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 16px; color: #222; }}
video {{ max-width: 100%; background: #111; display: block; }}
svg.chart {{ display: block; max-width: 100%; height: auto; cursor: crosshair; margin-top: 8px; }}
#values {{ font-family: monospace; font-size: 12px; white-space: pre-wrap; background: #f4f4f4; padding: 6px; }}
</style></head>
<body>
<h2>{html.escape(title)}</h2>
<p>{len(ds)} frames at {fps} fps, cameras: {", ".join(html.escape(c) for c in cameras)}; task: {unique_tasks}</p>
<video id="video" controls muted playsinline src="data:video/mp4;base64,{video}"></video>
<pre id="values"></pre>
{svgs}
<script type="application/json" id="episode-data">{embedded}</script>
<script>{_PAGE_SCRIPT}</script>
</body></html>
"""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return count


def _choose(requested: str | None, available: list[str], option: str, parser: argparse.ArgumentParser) -> list[str]:
    """Names from a comma list, each a full feature key or its last dotted part (`cam_high` for images)."""
    if requested is None:
        return available
    chosen = []
    for name in filter(None, (n.strip() for n in requested.split(","))):
        matches = [k for k in available if k == name or k.split(".")[-1] == name]
        if len(matches) != 1:
            parser.error(
                f"{option}: {name!r} is {'ambiguous' if matches else 'not a feature'}; choose from {available}"
            )
        chosen.append(matches[0])
    return chosen


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.visualize_dataset",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("root", type=pathlib.Path, help="LeRobot dataset directory (v2.1 or v3.0)")
    parser.add_argument("--episode", type=int, required=True, help="episode_index of the episode to show")
    parser.add_argument(
        "--out", type=pathlib.Path, help="file to write (default: <dataset name>_episode_<K>.<format> here)"
    )
    parser.add_argument(
        "--format",
        choices=("mp4", "html"),
        help="mp4 video with curves, or a self-contained html page (default: from --out's suffix, else mp4)",
    )
    parser.add_argument(
        "--cameras", help="comma-separated camera features to show, e.g. cam_high,cam_left_wrist (default: all)"
    )
    parser.add_argument(
        "--keys",
        help="comma-separated numeric features to plot (default: observation.state,action where present)",
    )
    parser.add_argument("--height", type=int, default=240, help="camera height in pixels (default %(default)s)")
    parser.add_argument(
        "--chart_height", type=int, default=220, help="height of each chart in the mp4 (default %(default)s)"
    )
    parser.add_argument("--fps", type=int, help="playback rate (default: the dataset's fps)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("height", "chart_height", "fps"):
        value = getattr(args, name)
        if value is not None and value < (8 if name != "fps" else 1):
            parser.error(f"--{name} is too small: {value}")
    suffix = args.out.suffix.lstrip(".").lower() if args.out else ""
    fmt = args.format or (suffix if suffix in ("mp4", "html") else "mp4")
    if args.out and suffix != fmt:
        parser.error(f"--out: {args.out} does not end in .{fmt} (--format {fmt})")
    try:
        ds = LeRobotDataset(args.root, episodes=[args.episode])
    except FileNotFoundError as err:
        parser.error(f"root: {args.root} is not a LeRobot dataset ({err})")
    except LeRobotFormatError as err:
        parser.error(f"root: {err}")
    except ValueError as err:
        parser.error(f"--episode: {err}")
    try:
        cameras = _choose(args.cameras, camera_keys(ds), "--cameras", parser)
        if not cameras:
            parser.error(f"--cameras: {args.root} has no image or video features to show")
        present = [k for k in DEFAULT_KEYS if k in ds.features]
        keys = _choose(args.keys, numeric_keys(ds), "--keys", parser) if args.keys else present
        values, tasks, stamps = read_columns(ds, keys)
        fps = args.fps or ds.fps
        title = f"{args.root.resolve().name}  episode {args.episode}"
        out = args.out or pathlib.Path(f"{args.root.resolve().name}_episode_{args.episode}.{fmt}")
        common = dict(title=title, height=args.height, fps=fps)
        if fmt == "mp4":
            count = write_video(ds, out, cameras, values, tasks, stamps, chart_h=args.chart_height, **common)
        else:
            count = write_html(ds, out, cameras, values, tasks, stamps, **common)
    except LeRobotFormatError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        ds.close()
    print(f"wrote {out}: episode {args.episode}, {count} frames, cameras {cameras}, curves {keys}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
