"""Worker processes of the data commands (``evaluate --pred-dir``, ``prepare``, the synthetic data).

One start method for all of them (:func:`pool_context`) and one pool (:class:`WorkerPool`):

* **No fork.** A forked child inherits a copy of every lock of the parent as it was at that
  instant, held ones included, but only the thread that forked. Once torch (or OpenMP, or any
  library with a thread pool) has started threads, a child can block for ever on a lock that a
  thread which no longer exists was holding. Workers are therefore started by the fork server
  (one clean single-threaded process, started once, which imports the workers' module once and
  forks each worker from itself), or spawned where there is no fork server. Workers inherit
  nothing but what they are sent: the task, and the ``initializer`` and ``initargs`` of the pool.
* **A dead worker is an error.** ``multiprocessing.Pool`` waits for ever for the result of a
  worker killed by a signal (out of memory, a crash in a C library, ``os._exit``);
  :class:`concurrent.futures.ProcessPoolExecutor` notices and fails every pending task with
  ``BrokenProcessPool``, which :class:`WorkerPool` turns into one :class:`CitysegError` line that
  names what was being processed.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.context import BaseContext
from typing import Any, Callable, Iterable, Iterator, Sequence

from cityseg.errors import CitysegError


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity; the machine's count where that is unknown):
    the default number of worker processes, inference threads and the benchmark's core count."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # no sched_getaffinity off Linux
        return os.cpu_count() or 1


MAX_POOL_WORKERS = 8


def default_pool_workers() -> int:
    """Worker processes a pool starts by default (``prepare``, the synthetic data): one per usable
    core, at most :data:`MAX_POOL_WORKERS`."""
    return max(1, min(usable_cores(), MAX_POOL_WORKERS))


def pool_context(preload: Sequence[str] = ()) -> BaseContext:
    """The multiprocessing context of every worker pool: ``forkserver`` where the platform has it
    (Linux, macOS), else ``spawn`` (Windows); never ``fork`` (see the module docstring).

    ``preload``: modules the fork server imports before it forks the first worker, so that every
    worker has them already (else each imports NumPy and cityseg again: 0.2 s of CPU). They must
    not start threads (torch does not belong there). Only the first pool of a process starts the
    fork server: the modules of later pools are imported by their workers.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["__main__", *preload])  # __main__: the fork server's own default
        return ctx
    return multiprocessing.get_context("spawn")


def keep_freed_memory() -> None:
    """Ask glibc to keep freed memory in the process instead of handing it back to the kernel.

    Every frame allocates the same multi-megabyte arrays again (decoded maps, photos, keys, masks).
    By default glibc returns such blocks to the kernel when they are freed, and the next frame pays
    a page fault (and a page of zeros from the kernel) for every 4 KiB again: 15-25% of the run
    time of ``evaluate --pred-dir`` went to system time that way. Forked workers used to inherit a
    parent's malloc state already grown by its large tables; workers of :func:`pool_context` start
    fresh, and without this ``prepare`` ran 24% slower with 2 workers (28.7 against 37.5 frames/s,
    400 pairs, 2-core Xeon, 2026-12-07; 37.9 with it: BENCHMARKS.md, "A suite that cannot hang").
    No-op where the C library is not glibc.

    The setting lasts as long as the process (glibc has no call that reads it back, so it cannot be
    undone): it is for the ``initializer`` of worker processes, never for the process that asks for
    the work.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    mallopt(m_mmap_threshold, 32 << 20)  # blocks up to 32 MiB (glibc's maximum) come from the heap...
    mallopt(m_trim_threshold, 1 << 30)  # ...which is not trimmed below 1 GiB of free space


def _apply_chunk(fn: Callable[[Any], Any], chunk: Sequence[Any]) -> list[Any]:
    return [fn(item) for item in chunk]


class WorkerPool:
    """``workers`` processes of :func:`pool_context`; a context manager.

    Args:
        workers: number of processes (started as tasks arrive).
        what: what the pool works on, for the error of a dead worker ("evaluate --pred-dir P").
        preload: the module of the worker function, and any other it needs (:func:`pool_context`).
        initializer, initargs: run in each worker before its first task (module-level function
            and picklable arguments: workers share no memory with this process).

    Leaving the ``with`` block (or :meth:`close`) on an exception (a bad file, Ctrl-C) cancels the
    tasks not yet started and waits only for those running.
    """

    def __init__(self, workers: int, what: str, preload: Sequence[str] = (),
                 initializer: Callable[..., None] | None = None, initargs: tuple = ()) -> None:
        self.what = what
        self._executor = ProcessPoolExecutor(workers, mp_context=pool_context(preload), initializer=initializer,
                                             initargs=initargs)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers: tasks not yet started are cancelled (after an error; when every result
        has been read there are none), those running are waited for."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], ordered: bool = True, chunksize: int = 1,
            describe: Callable[[Any], str] = str) -> Iterator[Any]:
        """``fn(item)`` of every item, computed in the workers: in the order of ``items`` (``ordered``)
        or as they finish. ``chunksize`` items go to a worker at once (fewer round trips for small
        tasks). ``fn`` must be a module-level function; an exception it raises is raised here.

        Raises:
            CitysegError: a worker died; the message names ``what`` and, with ``describe``, an
                unfinished item.
        """
        items = list(items)
        chunks = [items[i : i + chunksize] for i in range(0, len(items), chunksize)]
        futures: dict[Future, list[Any]] = {}
        finished, waiting = 0, chunks[0] if chunks else []
        try:
            for chunk in chunks:  # the pool can break while they are handed out, too
                futures[self._executor.submit(_apply_chunk, fn, chunk)] = chunk
            for future in (futures if ordered else as_completed(futures)):
                waiting = futures[future]
                results = future.result()
                finished += len(results)
                yield from results
        except BrokenProcessPool:
            raise CitysegError(
                f"{self.what}: a worker process ended abruptly (killed by the system, out of memory, or a crash "
                f"in native code) with {len(items) - finished} of {len(items)} item(s) unfinished, e.g. "
                f"{describe(waiting[0])}; rerun with one worker to see the error in this process"
            ) from None
