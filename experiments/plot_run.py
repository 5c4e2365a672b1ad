"""Plot a run's training curves: read its tensorboard event files and write a PNG of the chosen scalars.

    python -m experiments.plot_run RUN_DIR [--out RUN_DIR/curves.png] [--tags loss,lr] [--smoothing 0.6] [--list]

Event files (`*tfevents*`, as tensorboardX writes them) are found under RUN_DIR recursively; scalars in a
subdirectory are named `<subdir>/<tag>` (what tensorboard shows as a separate run). Records are checked like
tensorboard's reader (TFRecord length and data CRC-32C). A run that restarted from a checkpoint logs some steps
again: as tensorboard does, a step that goes backwards discards the older points from that step on.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import pathlib
import struct
import sys
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw

from experiments import charts

_HEADER = struct.Struct("<Q")
_CRC = struct.Struct("<I")
_DT_FLOAT, _DT_DOUBLE, _DT_HALF, _DT_BFLOAT16 = 1, 2, 19, 14


class EventFileError(ValueError):
    """A damaged event file; the message names the file and the byte offset of the bad record."""


@dataclasses.dataclass
class Scalars:
    steps: np.ndarray  # int64, increasing
    values: np.ndarray  # float64
    wall_times: np.ndarray  # float64, seconds since the epoch


def _masked_crc(data: bytes) -> int:
    from tensorboardX.record_writer import masked_crc32c  # TFRecord's masked CRC-32C

    return masked_crc32c(data)


def read_records(path: pathlib.Path) -> Iterator[tuple[int, bytes]]:
    """(offset, payload) of each TFRecord; a damaged record raises, a cut-off last record warns and stops."""
    data = path.read_bytes()
    offset = 0
    while offset < len(data):
        if offset + 12 > len(data):
            warnings.warn(f"{path}: truncated record header at byte {offset} (is the run still writing?)", stacklevel=2)
            return
        header = data[offset : offset + 8]
        (length,) = _HEADER.unpack(header)
        (header_crc,) = _CRC.unpack_from(data, offset + 8)
        if _masked_crc(header) != header_crc:
            raise EventFileError(f"{path}: record at byte {offset}: length checksum mismatch (damaged file)")
        end = offset + 12 + length + 4
        if end > len(data):
            warnings.warn(
                f"{path}: record at byte {offset} is cut off ({len(data) - offset} of {end - offset} bytes; "
                "is the run still writing?)",
                stacklevel=2,
            )
            return
        payload = data[offset + 12 : offset + 12 + length]
        (data_crc,) = _CRC.unpack_from(data, offset + 12 + length)
        if _masked_crc(payload) != data_crc:
            raise EventFileError(f"{path}: record at byte {offset}: data checksum mismatch (damaged file)")
        yield offset, payload
        offset = end


def _tensor_scalar(tensor) -> float | None:
    """The value of a one-element float tensor summary (tensorboard's new-style scalars), else None."""
    if tensor.dtype not in (_DT_FLOAT, _DT_DOUBLE, _DT_HALF, _DT_BFLOAT16):
        return None
    for field in (tensor.float_val, tensor.double_val):
        if len(field) == 1:
            return float(field[0])
    if len(tensor.half_val) == 1:
        raw = np.array([tensor.half_val[0]], np.uint16)
        if tensor.dtype == _DT_HALF:
            return float(raw.view(np.float16)[0])
        return float((raw.astype(np.uint32) << 16).view(np.float32)[0])
    content = tensor.tensor_content
    width = {_DT_FLOAT: "<f4", _DT_DOUBLE: "<f8", _DT_HALF: "<f2"}.get(tensor.dtype)
    if width is not None and len(content) == np.dtype(width).itemsize:
        return float(np.frombuffer(content, width)[0])
    return None


def read_event_scalars(path: pathlib.Path) -> Iterator[tuple[str, int, float, float]]:
    """(tag, step, value, wall_time) of every scalar summary in one event file, in file order."""
    from google.protobuf.message import DecodeError
    from tensorboardX.proto.event_pb2 import Event

    for offset, payload in read_records(path):
        try:
            event = Event.FromString(payload)
        except DecodeError as err:
            raise EventFileError(f"{path}: record at byte {offset} is not a tensorboard Event ({err})") from err
        if not event.HasField("summary"):
            continue
        for value in event.summary.value:
            kind = value.WhichOneof("value")
            if kind == "simple_value":
                scalar = float(value.simple_value)
            elif kind == "tensor" and value.metadata.plugin_data.plugin_name in ("scalars", ""):
                scalar = _tensor_scalar(value.tensor)
                if scalar is None:
                    continue
            else:
                continue
            yield value.tag, int(event.step), scalar, float(event.wall_time)


def event_files(run_dir: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in run_dir.rglob("*tfevents*") if p.is_file())


def read_scalars(run_dir: str | pathlib.Path) -> dict[str, Scalars]:
    """Every scalar series under `run_dir`, keyed `tag` (or `<subdir>/tag`), restarts resolved like tensorboard."""
    run_dir = pathlib.Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} is not a directory")
    files = event_files(run_dir)
    if not files:
        raise FileNotFoundError(f"no tensorboard event files (*tfevents*) under {run_dir}")
    per_file = [(path, list(read_event_scalars(path))) for path in files]
    # Write order across files (a resumed run opens a new file, possibly within the same second as the old one,
    # so names alone do not order them): by each file's first scalar's wall time.
    per_file.sort(key=lambda item: (item[1][0][3] if item[1] else 0.0, item[0].name))
    points: dict[str, list[tuple[int, float, float]]] = {}
    for path, records in per_file:
        prefix = path.parent.relative_to(run_dir).as_posix()
        for tag, step, value, wall in records:
            name = tag if prefix == "." else f"{prefix}/{tag}"
            series = points.setdefault(name, [])
            if series and step <= series[-1][0]:
                # tensorboard's orphan purge: a restarted run rewrites steps; drop what it supersedes.
                series[:] = [p for p in series if p[0] < step]
            series.append((step, value, wall))
    return {
        name: Scalars(
            steps=np.array([p[0] for p in series], np.int64),
            values=np.array([p[1] for p in series], np.float64),
            wall_times=np.array([p[2] for p in series], np.float64),
        )
        for name, series in sorted(points.items())
    }


def smooth(values: np.ndarray, weight: float) -> np.ndarray:
    """tensorboard's debiased exponential moving average (weight 0: the values; NaN/inf are carried through)."""
    if weight <= 0:
        return values.astype(np.float64)
    out = np.empty(len(values), np.float64)
    last, count = 0.0, 0
    for i, v in enumerate(values):
        if not math.isfinite(v):
            out[i] = v
            continue
        last = last * weight + (1 - weight) * v
        count += 1
        out[i] = last / (1 - weight**count)
    return out


def plot_scalars(
    scalars: dict[str, Scalars],
    tags: Sequence[str],
    out: pathlib.Path,
    *,
    smoothing: float = 0.0,
    columns: int = 2,
    panel_size: tuple[int, int] = (640, 360),
    title: str = "",
) -> pathlib.Path:
    """A grid of one chart per tag (x: step); the raw curve is drawn faintly under the smoothed one."""
    columns = max(1, min(columns, len(tags)))
    rows = math.ceil(len(tags) / columns)
    width, height = panel_size
    title_h = 28 if title else 0
    image = Image.new("RGB", (columns * width, rows * height + title_h), charts.BACKGROUND)
    draw = ImageDraw.Draw(image)
    if title:
        draw.text((10, 6), title, fill=charts.AXIS, font=charts.font(16))
    for i, tag in enumerate(tags):
        data = scalars[tag]
        x0, y0 = (i % columns) * width, title_h + (i // columns) * height
        main = charts.colour(i)
        series = []
        if smoothing > 0:
            faint = tuple(int(c + (255 - c) * 0.65) for c in main)
            series.append(charts.Series(data.steps, data.values, "raw", faint, width=1))
            series.append(charts.Series(data.steps, smooth(data.values, smoothing), f"smoothed {smoothing:g}", main))
        else:
            series.append(charts.Series(data.steps, data.values, tag, main))
        last = data.values[-1] if len(data.values) else float("nan")
        label = f"{tag}  (last {charts.format_tick(last)} at step {data.steps[-1] if len(data.steps) else '-'})"
        charts.draw_chart(
            draw,
            (x0 + 4, y0 + 4, x0 + width - 4, y0 + height - 4),
            series,
            title=label,
            x_label="step",
            legend=smoothing > 0,
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    return out


def _tag_list(text: str) -> list[str]:
    tags = [t.strip() for t in text.split(",") if t.strip()]
    if not tags:
        raise argparse.ArgumentTypeError("give at least one tag, comma-separated")
    return tags


def _smoothing(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not in [0, 1)")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.plot_run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", type=pathlib.Path, help="run directory holding tensorboard event files")
    parser.add_argument("--out", type=pathlib.Path, help="PNG to write (default: RUN_DIR/curves.png)")
    parser.add_argument(
        "--tags", type=_tag_list, help="comma-separated scalar tags to plot, in this order (default: all of them)"
    )
    parser.add_argument(
        "--smoothing",
        type=_smoothing,
        default=0.0,
        help="tensorboard-style exponential smoothing weight in [0, 1) (default %(default)s: none)",
    )
    parser.add_argument("--columns", type=int, default=2, help="charts per row (default %(default)s)")
    parser.add_argument(
        "--list", action="store_true", help="print every scalar tag with its points and last value; write no PNG"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.columns < 1:
        parser.error(f"--columns must be >= 1, got {args.columns}")
    try:
        scalars = read_scalars(args.run_dir)
    except FileNotFoundError as err:
        parser.error(f"run_dir: {err}")
    except EventFileError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.list:
        for tag, data in scalars.items():
            print(f"{tag}: {len(data.steps)} points, steps {data.steps[0]}..{data.steps[-1]}, last {data.values[-1]:g}")
        return 0
    if not scalars:
        parser.error(f"run_dir: the event files under {args.run_dir} hold no scalars")
    tags = args.tags or list(scalars)
    unknown = [t for t in tags if t not in scalars]
    if unknown:
        parser.error(f"--tags: {unknown} not in the run; it has {list(scalars)}")
    out = args.out or args.run_dir / "curves.png"
    plot_scalars(scalars, tags, out, smoothing=args.smoothing, columns=args.columns, title=str(args.run_dir))
    print(f"wrote {out} ({len(tags)} scalar{'s' if len(tags) != 1 else ''}: {', '.join(tags)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
