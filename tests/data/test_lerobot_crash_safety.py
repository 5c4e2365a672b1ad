"""The writer survives a SIGKILL at every step of saving and committing, and a failed save can be retried.

A child process appends episodes with HIORS_LEROBOT_CRASH_AT naming one step, and is killed there for real
(SIGKILL). Right after the kill the dataset at `root` must open and hold the old or the new episodes (never a
mixture, never nothing); then the next writer, or `recover()`, completes or rolls back by itself and every
episode whose save_episode had returned is there exactly once.
"""

from __future__ import annotations

import errno
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from hiors_jax.data import lerobot_write
from hiors_jax.data.lerobot import LeRobotDataset, LeRobotDatasetWriter
from hiors_jax.data.lerobot_commit import COMMIT_STEPS, CRASH_ENV, SAVE_STEPS

PROJECT = pathlib.Path(__file__).resolve().parents[2]
FEATURES = {
    "action": {"dtype": "float32", "shape": [2], "names": None},
    "state_chunk": {"dtype": "float32", "shape": [4, 2], "names": None},
    "cam": {"dtype": "video", "shape": [16, 16, 3], "names": ["height", "width", "channels"]},
}
LENGTH = 3  # frames per episode
BASE_EPISODES = 2


def frame(episode: int, index: int) -> dict:
    value = 100 * episode + index
    return {
        "action": np.full(2, value, np.float32),
        "state_chunk": np.full((4, 2), -value, np.float32),
        "cam": np.full((16, 16, 3), (40 * episode + 10 * index) % 256, np.uint8),
    }


def record(writer: LeRobotDatasetWriter, episodes) -> None:
    for e in episodes:
        for f in range(LENGTH):
            writer.add_frame(frame(e, f), task=f"task {e}")
        writer.save_episode()
        print(f"saved {e}", flush=True)


CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
from hiors_jax.data import lerobot_commit
from tests.data.test_lerobot_crash_safety import FEATURES, record
from hiors_jax.data.lerobot import LeRobotDatasetWriter
if sys.argv[4] == "no-exchange":  # a filesystem without RENAME_EXCHANGE
    lerobot_commit._exchange = lambda a, b: False
writer = LeRobotDatasetWriter(sys.argv[2], 10, FEATURES, append=True)
record(writer, range(int(sys.argv[3]), int(sys.argv[3]) + 2))
writer.finalize()
print("finalized", flush=True)
"""


def run_child(root: pathlib.Path, first: int, crash_at: str | None, mode: str = "exchange"):
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    if crash_at:
        env[CRASH_ENV] = crash_at
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(PROJECT), str(root), str(first), mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def episodes_in(root: pathlib.Path) -> list[int]:
    """Episode ids found at root, after checking every row holds the values recorded for it."""
    dataset = LeRobotDataset(root)
    batch = dataset.get_batch(np.arange(len(dataset)))
    ids = sorted(set(batch["task"]))
    expected = np.concatenate([[frame(int(t.split()[1]), f)["action"] for f in range(LENGTH)] for t in ids])
    np.testing.assert_array_equal(batch["action"], expected)
    np.testing.assert_array_equal(batch["state_chunk"][:, 0, 0], -expected[:, 0])
    cams = batch["cam"].astype(int)
    want = np.concatenate([[frame(int(t.split()[1]), f)["cam"] for f in range(LENGTH)] for t in ids]).astype(int)
    assert np.abs(cams - want).max() <= 8  # lossy AV1, but clearly the right frame of the right episode
    np.testing.assert_array_equal(batch["index"], np.arange(len(dataset)))
    return [int(t.split()[1]) for t in ids]


def leftovers(root: pathlib.Path) -> list[str]:
    return sorted(p.name for p in root.parent.glob(f".{root.name}.*")) + (
        [".journal"] if (root / ".journal").exists() else []
    )


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("base") / "ds"
    with LeRobotDatasetWriter(root, 10, FEATURES) as writer:
        record(writer, range(BASE_EPISODES))
    return root


def copy_base(base: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    root = tmp_path / "ds"
    shutil.copytree(base, root)
    return root


# The second episode's save steps, then each commit step: (step, episodes in root right after the kill,
# episodes there after recovery).
OLD, BOTH = [0, 1], [0, 1, 2, 3]
CASES = [
    ("save.data_written:2", OLD, [0, 1, 2]),  # episode 3 was not accepted yet
    ("save.videos_linked:2", OLD, [0, 1, 2]),
    ("save.journaled:2", OLD, BOTH),  # on disk, though save_episode had not returned
    ("commit.assembled", OLD, BOTH),
    ("commit.meta_written", OLD, BOTH),
    ("commit.marked", OLD, BOTH),
    ("commit.swapped", BOTH, BOTH),
    ("commit.old_removed", BOTH, BOTH),
    ("commit.done", BOTH, BOTH),
]


def test_every_step_is_covered():
    named = {step.partition(":")[0] for step, _, _ in CASES} | {"commit.old_parked"}
    assert named == set(SAVE_STEPS) | set(COMMIT_STEPS)


@pytest.mark.parametrize("how", ["next_writer", "recover"])
@pytest.mark.parametrize(("step", "after_kill", "after_recovery"), CASES)
def test_sigkill_at_each_step(base, tmp_path, step, after_kill, after_recovery, how):
    root = copy_base(base, tmp_path)
    child = run_child(root, BASE_EPISODES, step)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    assert "finalized" not in child.stdout
    acknowledged = [int(line.split()[1]) for line in child.stdout.split("\n") if line.startswith("saved")]

    assert episodes_in(root) == after_kill  # opens, old or new, at once

    if how == "recover" and step == "commit.done":  # the commit had finished: nothing left to do
        with pytest.raises(FileNotFoundError, match="no interrupted writer"):
            LeRobotDatasetWriter.recover(root)
    elif how == "recover":
        assert LeRobotDatasetWriter.recover(root) == root
    else:  # the next writer tidies up by itself, then appends
        with LeRobotDatasetWriter(root, 10, FEATURES, append=True) as writer:
            record(writer, [9])
        after_recovery = [*after_recovery, 9]
    assert episodes_in(root) == after_recovery
    assert set(acknowledged) <= set(after_recovery)  # nothing accepted is lost
    assert leftovers(root) == []


def test_sigkill_between_the_two_renames_without_exchange(base, tmp_path):
    """Without RENAME_EXCHANGE, a kill between the renames leaves the new tree parked; recovery puts it in."""
    root = copy_base(base, tmp_path)
    child = run_child(root, BASE_EPISODES, "commit.old_parked", mode="no-exchange")
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    assert not root.exists()  # the documented window of the fallback
    LeRobotDatasetWriter.recover(root)
    assert episodes_in(root) == BOTH and leftovers(root) == []
    assert run_child(root, 4, None, mode="no-exchange").returncode == 0  # the fallback path itself commits
    assert episodes_in(root) == [*BOTH, 4, 5] and leftovers(root) == []


def test_second_writer_is_refused_while_one_is_active(base, tmp_path):
    root = copy_base(base, tmp_path)
    writer = LeRobotDatasetWriter(root, 10, FEATURES, append=True)
    with pytest.raises(FileExistsError, match=f"another writer is active \\(pid {os.getpid()}"):
        LeRobotDatasetWriter(root, 10, FEATURES, append=True)
    with pytest.raises(FileExistsError, match="another writer is active"):
        LeRobotDatasetWriter.recover(root)
    writer.abort()
    assert episodes_in(root) == OLD and leftovers(root) == []


def test_failed_journal_write_is_retried_without_loss(base, tmp_path, monkeypatch):
    """Disk full while the journal line is written: half a line, then ENOSPC. The retry must succeed and the
    journal must not keep the half line (a later recovery would stop there)."""
    root = copy_base(base, tmp_path)
    writer = LeRobotDatasetWriter(root, 10, FEATURES, append=True)
    record(writer, [2])
    journal = tmp_path / ".ds.writing" / ".journal" / "journal.jsonl"
    before = journal.read_bytes()
    real_write = os.write

    def disk_full_once(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}") == str(journal) and not disk_full_once.done:
            disk_full_once.done = True
            real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    disk_full_once.done = False
    monkeypatch.setattr(lerobot_write.os, "write", disk_full_once)
    for f in range(LENGTH):
        writer.add_frame(frame(3, f), task="task 3")
    with pytest.raises(OSError, match="No space left"):
        writer.save_episode()
    assert journal.read_bytes() == before and writer.total_episodes == BASE_EPISODES + 1
    assert writer.save_episode() == 3  # the same buffered episode, retried
    del writer  # then the process dies before finalize
    LeRobotDatasetWriter.recover(root)
    assert episodes_in(root) == BOTH


RLIMIT_CHILD = """
import errno, resource, signal, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from hiors_jax.data.lerobot import LeRobotDatasetWriter
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
features = {"noise": {"dtype": "uint8", "shape": [64, 64], "names": None}}
rng = np.random.default_rng(0)
writer = LeRobotDatasetWriter(sys.argv[2], 10, features)
frames = [rng.integers(0, 256, (64, 64), dtype=np.uint8) for _ in range(6)]
for f in frames:
    writer.add_frame({"noise": f}, task="t")
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (8000, hard))  # the episode's parquet will not fit
try:
    writer.save_episode()
    print("no failure")
except OSError as err:
    print("failed", errno.errorcode.get(err.errno, err.errno))
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space again
writer.save_episode()
writer.finalize()
np.save(sys.argv[3], np.stack(frames))
"""


def test_save_episode_retried_after_a_real_write_failure(tmp_path):
    """A real OS write failure (file size limit) inside save_episode; the retry stores the episode once."""
    root, expected = tmp_path / "ds", tmp_path / "frames.npy"
    child = subprocess.run(
        [sys.executable, "-c", RLIMIT_CHILD, str(PROJECT), str(root), str(expected)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    assert "failed EFBIG" in child.stdout
    batch = LeRobotDataset(root).get_batch(np.arange(6))
    np.testing.assert_array_equal(batch["noise"], np.load(expected))
    assert leftovers(root) == []


def test_new_dataset_writer_recovers_a_crashed_first_writer(tmp_path):
    """The first writer of a dataset dies before finalize: the next one finalizes its saved episode first."""
    root = tmp_path / "ds"
    writer = LeRobotDatasetWriter(root, 10, FEATURES)
    record(writer, [0])
    writer.add_frame(frame(1, 0), task="task 1")  # never saved
    del writer  # the process "died" (its lock is gone with it)
    with pytest.raises(FileExistsError, match=r"saved episodes were just recovered into it\); pass append=True"):
        LeRobotDatasetWriter(root, 10, FEATURES)
    assert episodes_in(root) == [0] and leftovers(root) == []
    with LeRobotDatasetWriter(root, 10, FEATURES, append=True) as writer:
        record(writer, [1])
    assert episodes_in(root) == [0, 1]
