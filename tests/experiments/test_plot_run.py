"""Training curves: event files written by tensorboardX are read back exactly and drawn into a PNG."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image
from tensorboardX import SummaryWriter
from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboardX.proto.tensor_pb2 import TensorProto
from tensorboardX.writer import FileWriter

from experiments import charts, plot_run


def tensor_scalar(tag: str, value: float, double: bool) -> Summary:
    """A scalar the way tensorboard's own (tf.summary v2) writers store it: a one-element tensor."""
    if double:
        tensor = TensorProto(dtype=2, tensor_content=np.float64(value).tobytes())
    else:
        tensor = TensorProto(dtype=1, float_val=[value])
    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="scalars"))
    return Summary(value=[Summary.Value(tag=tag, tensor=tensor, metadata=metadata)])


def write_run(run_dir, steps=60, start=0):
    # The suffix keeps a same-second restart from reusing (and truncating) the first file's name.
    with SummaryWriter(str(run_dir), filename_suffix=f".from{start}") as writer:
        for step in range(start, start + steps):
            writer.add_scalar("loss", 5.0 / (step + 1), step)
            writer.add_scalar("lr", 1e-4 * (1 + step % 7), step)
            if step % 10 == 0:
                writer.add_scalars("eval", {"success": step / 100, "time": 3.0 + step}, step)
            writer.add_text("note", f"step {step}", step)  # non-scalar summaries are skipped


def test_values_read_back_exactly(tmp_path):
    write_run(tmp_path / "run")
    tensors = FileWriter(str(tmp_path / "run" / "v2"))
    for step in range(60):
        tensors.add_summary(tensor_scalar("new_style", float(step) ** 0.5, double=False), step)
        tensors.add_summary(tensor_scalar("double", step * 0.1, double=True), step)
    tensors.close()
    scalars = plot_run.read_scalars(tmp_path / "run")
    assert {"loss", "lr", "v2/new_style", "v2/double"} <= set(scalars)
    steps = np.arange(60)
    np.testing.assert_array_equal(scalars["loss"].steps, steps)
    np.testing.assert_array_equal(scalars["loss"].values, (5.0 / (steps + 1)).astype(np.float32))
    np.testing.assert_array_equal(scalars["lr"].values, (1e-4 * (1 + steps % 7)).astype(np.float32))
    np.testing.assert_allclose(scalars["v2/new_style"].values, np.sqrt(steps), rtol=1e-6)
    np.testing.assert_array_equal(scalars["v2/double"].values, steps * 0.1)
    evals = {k: v for k, v in scalars.items() if "success" in k}
    assert len(evals) == 1 and "/" in next(iter(evals))  # add_scalars writes subdirectories: <subdir>/<tag>
    (success,) = evals.values()
    np.testing.assert_array_equal(success.steps, np.arange(0, 60, 10))
    np.testing.assert_allclose(success.values, np.arange(0, 60, 10) / 100, rtol=1e-6)
    assert np.all(np.diff(scalars["loss"].wall_times) >= 0)


def test_restarted_run_keeps_the_rewritten_steps(tmp_path):
    run = tmp_path / "run"
    write_run(run, steps=60)
    write_run(run, steps=30, start=40)  # resumed from a step-40 checkpoint, wrote 40..69
    loss = plot_run.read_scalars(run)["loss"]
    np.testing.assert_array_equal(loss.steps, np.arange(70))
    np.testing.assert_array_equal(loss.values, (5.0 / (np.arange(70) + 1)).astype(np.float32))


def _panel_pixels(image: np.ndarray, rgb) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.nonzero(np.all(image == np.array(rgb, np.uint8), axis=-1))
    return xs, ys


def test_png_draws_the_chosen_curves(tmp_path):
    run = tmp_path / "run"
    write_run(run)
    with SummaryWriter(str(run)) as writer:
        for step in range(60):
            writer.add_scalar("sqrt", step**0.5, step)
    out = tmp_path / "curves.png"
    assert plot_run.main([str(run), "--out", str(out), "--tags", "loss,sqrt", "--columns", "2"]) == 0
    image = np.asarray(Image.open(out).convert("RGB"))
    assert image.shape[1] == 2 * 640 and image.shape[0] > 360
    # loss (first colour, left panel) falls: its right end is lower on the image than its left end.
    xs, ys = _panel_pixels(image[:, :640], charts.colour(0))
    assert len(xs) > 100
    left, right = ys[xs < xs.min() + 5].mean(), ys[xs > xs.max() - 5].mean()
    assert right > left + 100
    # sqrt (second colour, right panel) rises.
    xs, ys = _panel_pixels(image[:, 640:], charts.colour(1))
    assert len(xs) > 100
    assert ys[xs > xs.max() - 5].mean() < ys[xs < xs.min() + 5].mean() - 100
    assert not _panel_pixels(image, charts.colour(2))[0].size  # nothing else plotted


def test_smoothing_matches_tensorboard_ema():
    values = np.array([1.0, 2.0, 3.0, math.nan, 4.0])
    out = plot_run.smooth(values, 0.5)
    # debiased EMA: 1, (0.25+1)/0.75, ...
    assert out[0] == 1.0 and math.isclose(out[1], (0.5 * 0.5 + 1.0) / 0.75)
    assert math.isnan(out[3]) and np.isfinite(out[4])
    np.testing.assert_array_equal(plot_run.smooth(values, 0.0), values)


def test_truncated_file_warns_and_keeps_what_was_written(tmp_path):
    run = tmp_path / "run"
    write_run(run, steps=20)
    (path,) = [p for p in plot_run.event_files(run) if p.parent == run]
    data = path.read_bytes()
    path.write_bytes(data[:-7])  # the writer was killed mid-record
    with pytest.warns(UserWarning, match="cut off"):
        loss = plot_run.read_scalars(run)["loss"]
    assert 18 <= len(loss.steps) <= 20


def test_damaged_record_names_file_and_offset(tmp_path, capsys):
    run = tmp_path / "run"
    write_run(run, steps=20)
    (path,) = [p for p in plot_run.event_files(run) if p.parent == run]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(plot_run.EventFileError, match=r"record at byte \d+: (data|length) checksum mismatch"):
        plot_run.read_scalars(run)
    assert plot_run.main([str(run)]) == 1
    assert str(path) in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, names",
    [
        (["{run}", "--tags", "nope"], "--tags"),
        (["{run}", "--smoothing", "1.5"], "--smoothing"),
        (["{run}", "--columns", "0"], "--columns"),
        (["{empty}"], "run_dir"),
        (["{missing}"], "run_dir"),
    ],
)
def test_bad_arguments_name_the_option(tmp_path, capsys, argv, names):
    run, empty = tmp_path / "run", tmp_path / "empty"
    write_run(run, steps=3)
    empty.mkdir()
    argv = [a.format(run=run, empty=empty, missing=tmp_path / "missing") for a in argv]
    with pytest.raises(SystemExit) as exit_:
        plot_run.main(argv)
    assert exit_.value.code == 2
    assert names in capsys.readouterr().err


def test_help_and_list(tmp_path, capsys):
    with pytest.raises(SystemExit):
        plot_run.main(["--help"])
    out = capsys.readouterr().out
    for option in ("--out", "--tags", "--smoothing", "--columns", "--list", "run_dir"):
        assert option in out
    write_run(tmp_path / "run", steps=5)
    assert plot_run.main([str(tmp_path / "run"), "--list"]) == 0
    out = capsys.readouterr().out
    assert "loss: 5 points, steps 0..4, last 1" in out
    assert not (tmp_path / "run" / "curves.png").exists()


def test_default_out_is_in_the_run(tmp_path):
    write_run(tmp_path / "run", steps=5)
    assert plot_run.main([str(tmp_path / "run"), "--smoothing", "0.6"]) == 0
    assert Image.open(tmp_path / "run" / "curves.png").size[0] == 2 * 640
