"""Random batches of LeRobot items as numpy: worker processes with prefetch, and a pre-decoded uint8 frame cache.

`BatchLoader(dataset, batch_size, num_workers=N)` keeps `N * prefetch` batches in flight. Each worker re-opens
the dataset (its own parquet columns, open mp4 containers and decoders) and writes whole batches straight into
shared memory, so nothing image-sized is pickled. `FrameCache` decodes every camera frame once into memmap
files; with it attached, a batch is a gather from the page cache (for datasets that fit on disk).
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
import pathlib
import queue
import time
import traceback
from collections.abc import Iterable, Iterator, Sequence
from multiprocessing import shared_memory
from typing import Any

import numpy as np

from hiors_jax.data.lerobot_meta import image_hwc_shape
from hiors_jax.data.lerobot_read import LeRobotDataset, MultiLeRobotDataset

_CACHE_VERSION = 1


# --------------------------------------------------------------------------------------------- frame cache
def _fingerprint(dataset: LeRobotDataset) -> dict[str, Any]:
    """Identifies the dataset files a cache was built from (paths, sizes, mtimes)."""
    files = sorted(p for p in dataset.root.rglob("*") if p.is_file() and p.suffix in (".parquet", ".mp4", ".json"))
    return {
        "version": _CACHE_VERSION,
        "root": str(dataset.root.resolve()),
        "frames": len(dataset),
        "episodes": dataset.episodes,
        "files": {str(p.relative_to(dataset.root)): [p.stat().st_size, p.stat().st_mtime_ns] for p in files},
    }


class FrameCache:
    """uint8 (N, H, W, 3) memmaps, one per camera key, indexed by dataset row."""

    def __init__(self, directory: pathlib.Path, arrays: dict[str, np.ndarray]):
        self.directory = directory
        self.arrays = arrays

    @staticmethod
    def _file(directory: pathlib.Path, key: str) -> pathlib.Path:
        return directory / f"{key}.u8"

    @classmethod
    def open(cls, dataset: LeRobotDataset, directory: str | pathlib.Path) -> FrameCache:
        """Open a cache built for exactly this dataset; raises ValueError when missing or stale."""
        directory = pathlib.Path(directory)
        manifest_path = directory / "manifest.json"
        if not manifest_path.is_file():
            raise ValueError(f"{directory}: no frame cache here (manifest.json missing)")
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("fingerprint") != _fingerprint(dataset):
            raise ValueError(f"{directory}: frame cache was built from different files than {dataset.root}; rebuild it")
        arrays = {}
        for key, shape in manifest["shapes"].items():
            arrays[key] = np.memmap(cls._file(directory, key), np.uint8, "r", shape=tuple(shape))
        return cls(directory, arrays)

    @classmethod
    def build(cls, dataset: LeRobotDataset, directory: str | pathlib.Path) -> FrameCache:
        """Decode every camera frame of `dataset` once (sequentially per episode) into memmap files."""
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "manifest.json").unlink(missing_ok=True)  # invalid until fully rebuilt
        # Same rows, no delta windows, no cache.
        plain = LeRobotDataset(dataset.root, tolerance_s=dataset.tolerance_s, episodes=dataset.episodes)
        shapes, arrays = {}, {}
        for key in plain.meta.camera_keys:
            shapes[key] = [len(plain), *image_hwc_shape(plain.features[key])]
            arrays[key] = np.memmap(directory / f"{key}.u8.tmp", np.uint8, "w+", shape=tuple(shapes[key]))
        for pos in plain.episode_positions.tolist():  # episode by episode: each mp4 decodes forward in one run
            start, stop = plain.episode_bounds(pos)
            plain.decode_cameras(np.arange(start, stop), {k: a[start:stop] for k, a in arrays.items()})
        for key, array in arrays.items():
            array.flush()
            os.replace(directory / f"{key}.u8.tmp", cls._file(directory, key))
        del arrays
        plain.close()
        manifest = {"fingerprint": _fingerprint(dataset), "shapes": shapes}
        tmp = directory / "manifest.json.tmp"
        tmp.write_text(json.dumps(manifest))
        os.replace(tmp, directory / "manifest.json")
        return cls.open(dataset, directory)

    @classmethod
    def open_or_build(cls, dataset: LeRobotDataset, directory: str | pathlib.Path) -> FrameCache:
        try:
            return cls.open(dataset, directory)
        except (ValueError, OSError):
            return cls.build(dataset, directory)

    def frames(self, key: str, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        # mode="clip" keeps np.take unbuffered when writing into `out` (rows were range-checked already)
        return np.take(self.arrays[key], rows, axis=0, out=out, mode="clip")

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())


def attach_frame_cache(dataset, cache_dir: str | pathlib.Path, build: bool = True) -> None:
    """Make `dataset` (single or multi) read camera frames from a cache under `cache_dir`."""
    parts = dataset.datasets if isinstance(dataset, MultiLeRobotDataset) else [dataset]
    for i, part in enumerate(parts):
        directory = pathlib.Path(cache_dir) / (str(i) if len(parts) > 1 else "")
        part.frame_source = FrameCache.open_or_build(part, directory) if build else FrameCache.open(part, directory)


# --------------------------------------------------------------------------------------------- batch layout
@dataclasses.dataclass(frozen=True)
class BatchLayout:
    """Where each array of one batch lives inside a shared-memory slot."""

    batch_size: int
    fields: dict[str, tuple[tuple[int, ...], str, int]]  # key -> (shape incl. batch, dtype str, byte offset)
    nbytes: int

    @classmethod
    def from_spec(cls, spec: dict[str, tuple[tuple[int, ...], np.dtype]], batch_size: int) -> BatchLayout:
        fields, offset = {}, 0
        for key, (shape, dtype) in spec.items():
            full = (batch_size, *shape)
            fields[key] = (full, np.dtype(dtype).str, offset)
            offset += int(np.prod(full)) * np.dtype(dtype).itemsize
            offset = (offset + 63) // 64 * 64
        return cls(batch_size, fields, max(offset, 64))

    def views(self, buffer) -> dict[str, np.ndarray]:
        return {
            key: np.ndarray(shape, dtype=np.dtype(dtype), buffer=buffer, offset=offset)
            for key, (shape, dtype, offset) in self.fields.items()
        }


def _worker_main(dataset, cache_dir, shm_names, layout: BatchLayout, tasks, results, decode_threads: int) -> None:
    slots = [shared_memory.SharedMemory(name=name) for name in shm_names]
    try:
        for part in dataset.datasets if isinstance(dataset, MultiLeRobotDataset) else [dataset]:
            part.decode_threads = decode_threads
        if cache_dir is not None:
            attach_frame_cache(dataset, cache_dir, build=False)
        views = [layout.views(s.buf) for s in slots]
        while True:
            task = tasks.get()
            if task is None:
                break
            seq, slot, indices = task
            try:
                out = dict(views[slot])
                batch = dataset.get_batch(indices, out=out)
                results.put((seq, slot, batch["task"], None))
            except Exception:
                results.put((seq, slot, None, traceback.format_exc()))
    finally:
        del views
        for s in slots:
            s.close()


# --------------------------------------------------------------------------------------------- loader
class BatchLoader:
    """Iterator of batches (dicts of numpy arrays plus a `task` list) from a LeRobot dataset.

    Batches are uniform random samples of `batch_size` rows (seeded), or the given `index_batches`.
    `num_workers=0` decodes in this process (with the dataset's decode threads); otherwise worker processes
    (`worker_decode_threads` each) decode with `prefetch` batches each in flight. `cache_dir` builds (once)
    and uses a pre-decoded uint8 frame cache. With `reuse_buffers=True` the returned arrays live in buffers
    that the next `next()` call overwrites (no copy and no fresh pages per batch: use it when each batch is
    consumed, e.g. put on device, before asking for the next one).

    Workers are started with the "spawn" method (safe next to JAX threads and open decoders), so a script that
    creates a loader with workers needs the usual `if __name__ == "__main__":` guard. Call `close()` (or use
    `with`) to stop the workers and free the shared memory.
    """

    def __init__(
        self,
        dataset: LeRobotDataset | MultiLeRobotDataset,
        batch_size: int,
        *,
        num_workers: int = 0,
        prefetch: int = 2,
        seed: int = 0,
        cache_dir: str | pathlib.Path | None = None,
        index_batches: Iterable[Sequence[int]] | None = None,
        timeout_s: float = 120.0,
        reuse_buffers: bool = False,
        worker_decode_threads: int = 1,
    ):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if num_workers < 0 or prefetch < 1:
            raise ValueError(f"num_workers must be >= 0 and prefetch >= 1, got {num_workers}, {prefetch}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.timeout_s = timeout_s
        self.reuse_buffers = reuse_buffers
        self.worker_decode_threads = worker_decode_threads
        self._held_slot: int | None = None
        self._out: dict[str, np.ndarray] | None = None
        self._rng = np.random.default_rng(seed)
        self._index_batches = iter(index_batches) if index_batches is not None else None
        self.cache_dir = cache_dir
        if cache_dir is not None:
            attach_frame_cache(dataset, cache_dir)
        self._closed = False
        self._workers: list[Any] = []
        self._slots: list[shared_memory.SharedMemory] = []
        if num_workers:
            self._start_workers(prefetch)

    def _next_indices(self) -> np.ndarray | None:
        if self._index_batches is None:
            return self._rng.integers(0, len(self.dataset), self.batch_size)
        try:
            return np.asarray(next(self._index_batches), dtype=np.int64)
        except StopIteration:
            return None

    def _start_workers(self, prefetch: int) -> None:
        self._layout = BatchLayout.from_spec(self.dataset.output_spec(), self.batch_size)
        n_slots = self.num_workers * prefetch
        self._slots = [shared_memory.SharedMemory(create=True, size=self._layout.nbytes) for _ in range(n_slots)]
        self._views = [self._layout.views(s.buf) for s in self._slots]
        ctx = mp.get_context("spawn")  # fork is unsafe with JAX / open decoders in the parent
        self._tasks, self._results = ctx.Queue(), ctx.Queue()
        names = [s.name for s in self._slots]
        for _ in range(self.num_workers):
            args = (
                self.dataset,
                self.cache_dir,
                names,
                self._layout,
                self._tasks,
                self._results,
                self.worker_decode_threads,
            )
            worker = ctx.Process(target=_worker_main, args=args, daemon=True)
            worker.start()
            self._workers.append(worker)
        self._submitted = self._delivered = 0
        self._ready: dict[int, tuple[int, list[str]]] = {}
        self._sizes: dict[int, int] = {}
        self._exhausted = False
        for slot in range(n_slots):
            self._submit(slot)

    def _submit(self, slot: int) -> None:
        indices = None if self._exhausted else self._next_indices()
        if indices is None:
            self._exhausted = True
            return
        if len(indices) != self.batch_size:
            raise ValueError(f"index batch has {len(indices)} indices; this loader's batch_size is {self.batch_size}")
        self._tasks.put((self._submitted, slot, indices))
        self._submitted += 1

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._closed:
            raise StopIteration
        if not self.num_workers:
            indices = self._next_indices()
            if indices is None:
                raise StopIteration
            if not self.reuse_buffers:
                return self.dataset.get_batch(indices)
            if self._out is None or len(indices) != self.batch_size:
                spec = self.dataset.output_spec()
                self._out = {k: np.empty((len(indices), *shape), dtype) for k, (shape, dtype) in spec.items()}
            return self.dataset.get_batch(indices, out=dict(self._out))
        if self._held_slot is not None:  # the caller is done with the previous batch's buffers
            self._submit(self._held_slot)
            self._held_slot = None
        if self._delivered == self._submitted:
            raise StopIteration
        seq = self._delivered
        deadline = time.monotonic() + self.timeout_s
        while seq not in self._ready:
            try:
                got_seq, slot, tasks, error = self._results.get(timeout=1.0)
            except queue.Empty:
                dead = [w.pid for w in self._workers if not w.is_alive()]
                if dead:
                    self.close()
                    raise RuntimeError(f"batch worker process(es) {dead} died") from None
                if time.monotonic() > deadline:
                    self.close()
                    raise TimeoutError(f"no batch from workers within {self.timeout_s}s") from None
                continue
            if error is not None:
                self.close()
                raise RuntimeError(f"batch worker failed on batch {got_seq}:\n{error}")
            self._ready[got_seq] = (slot, tasks)
        slot, tasks = self._ready.pop(seq)
        self._delivered += 1
        if self.reuse_buffers:
            batch: dict[str, Any] = dict(self._views[slot])
            self._held_slot = slot
        else:
            batch = {k: v.copy() for k, v in self._views[slot].items()}
            self._submit(slot)
        batch["task"] = tasks
        return batch

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._workers:
            for _ in self._workers:
                self._tasks.put(None)
            for worker in self._workers:
                worker.join(timeout=5)
                if worker.is_alive():
                    worker.terminate()
                    worker.join(timeout=5)
            self._tasks.close()
            self._results.close()
        self._views = []
        for s in self._slots:
            s.close()
            s.unlink()
        self._slots = []

    def __enter__(self) -> BatchLoader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
