"""Crash-safe commit of a LeRobot dataset directory: writer lock, atomic swap, roll-forward after a crash.

A writer builds the new dataset tree in `.<name>.writing/` beside `root`. Its commit is:

1. the tree is complete (data, videos, meta) and `.journal/COMMITTED` is written (fsync'ed) inside it;
2. the tree is swapped with `root` in one step (`renameat2(RENAME_EXCHANGE)`; a plain rename when `root` does
   not exist yet), so `root` always holds the old or the new dataset;
3. the old tree (now at the staging path) is deleted, then `root/.journal`.

A crash anywhere leaves a marker that says which way to go: `root/.journal/COMMITTED` (swapped, clean up) or
`.<name>.writing/.journal/COMMITTED` (complete, swap it in). `finish_commit` completes either. On filesystems
without RENAME_EXCHANGE the swap is two renames with the old tree parked at `.<name>.previous`; a crash between
them leaves `root` briefly absent, and `finish_commit` restores it.

Fault injection for tests: with HIORS_LEROBOT_CRASH_AT=<step> (or <step>:<n>, the n-th time) in the environment
the process SIGKILLs itself when it reaches that step (names in SAVE_STEPS and COMMIT_STEPS).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import json
import os
import pathlib
import shutil
import signal
from typing import Any

CRASH_ENV = "HIORS_LEROBOT_CRASH_AT"
COMMITTED = "COMMITTED"
JOURNAL = ".journal"
# Every step of save_episode and of finalize, in order (where HIORS_LEROBOT_CRASH_AT can kill the process).
SAVE_STEPS = ("save.data_written", "save.videos_linked", "save.journaled")
COMMIT_STEPS = (
    "commit.assembled",
    "commit.meta_written",
    "commit.marked",
    "commit.old_parked",  # only without RENAME_EXCHANGE: between the two renames
    "commit.swapped",
    "commit.old_removed",
    "commit.done",
)

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


_reached: dict[str, int] = {}


def crash_point(step: str) -> None:
    """SIGKILL this process when HIORS_LEROBOT_CRASH_AT names `step` (fault-injection tests only)."""
    wanted = os.environ.get(CRASH_ENV)
    if not wanted or wanted.partition(":")[0] != step:
        return
    _reached[step] = _reached.get(step, 0) + 1
    if _reached[step] == int(wanted.partition(":")[2] or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def staging_dir(root: pathlib.Path) -> pathlib.Path:
    return root.parent / f".{root.name}.writing"


def previous_dir(root: pathlib.Path) -> pathlib.Path:
    return root.parent / f".{root.name}.previous"


class WriterLock:
    """One writer per dataset: an exclusive flock on `.<name>.lock`, released when the process dies.

    The file is removed on release, so a finished writer leaves nothing beside the dataset; an acquirer checks
    that the file it locked is still the one at the path (else a releaser removed it meanwhile: try again).
    """

    def __init__(self, root: pathlib.Path):
        self.path = root.parent / f".{root.name}.lock"
        root.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = None
        while self._fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise FileExistsError(f"{root}: another writer is active (pid {holder} holds {self.path})") from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
            else:
                os.close(fd)
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, str(os.getpid()).encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)  # while still locked, so no one else holds this inode
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __del__(self) -> None:  # a writer dropped without finalize/abort frees the dataset, as a dead process
        try:
            self.release()
        except Exception:  # noqa: BLE001 (interpreter shutdown: the process exit drops the flock anyway)
            pass


def fsync_path(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: pathlib.Path, data: bytes) -> None:
    """Write via a temporary file, fsync, rename; a crash leaves the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def atomic_json(obj: Any, path: pathlib.Path) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=4).encode())


def _exchange(a: pathlib.Path, b: pathlib.Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False when the system or filesystem cannot."""
    libc_name = ctypes.util.find_library("c")
    renameat2 = getattr(ctypes.CDLL(libc_name, use_errno=True), "renameat2", None) if libc_name else None
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, f"renameat2(RENAME_EXCHANGE) {a} <-> {b}: {os.strerror(err)}")


def swap_in(staging: pathlib.Path, root: pathlib.Path) -> None:
    """Put the complete tree at `staging` at `root`; the old tree (if any) ends up at staging or previous."""
    if not root.exists():
        os.rename(staging, root)
    elif not _exchange(staging, root):
        previous = previous_dir(root)
        shutil.rmtree(previous, ignore_errors=True)
        os.rename(root, previous)
        crash_point("commit.old_parked")
        os.rename(staging, root)
    fsync_path(root.parent)


def finish_commit(root: pathlib.Path) -> bool:
    """Complete a commit that a crash interrupted after its marker was written; True if there was one.

    Call with the writer lock held.
    """
    staging, previous = staging_dir(root), previous_dir(root)
    if (staging / JOURNAL / COMMITTED).is_file():  # complete but not yet in place
        swap_in(staging, root)
    if not (root / JOURNAL / COMMITTED).is_file():
        if not root.exists() and previous.is_dir():  # parked old tree, no new one: put it back
            os.rename(previous, root)
        elif previous.is_dir():  # the swap finished before the crash; this is the replaced tree
            shutil.rmtree(previous)
        return False
    cleanup_after_swap(root)
    return True


def cleanup_after_swap(root: pathlib.Path) -> None:
    """Delete the replaced tree, then the journal (whose marker is what tells recovery to come here)."""
    for old in (staging_dir(root), previous_dir(root)):
        if old.exists():
            shutil.rmtree(old)
    crash_point("commit.old_removed")
    shutil.rmtree(root / JOURNAL)
    fsync_path(root.parent)
