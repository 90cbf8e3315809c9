"""The bounded inference pool of ``cityseg serve``: a fixed number of worker threads and a bounded
number of waiting requests, never an unbounded backlog.

A request takes a *slot* when it is submitted and gives it back when its job has finished in a
worker (not when its client goes away: a job already running still holds the cores). There are
``workers + queue`` slots; a request that finds none gets :class:`Busy` at once, which the app
answers with 503 and ``Retry-After``. The worker threads call the model (torch and onnxruntime
release the GIL while they compute); each job's ``prepare`` (decoding the upload) and ``finish``
(encoding the answer) run in the worker too, so that decoded images and answers in memory are
bounded by the workers, not by the clients.

With ``max_batch`` > 1 a worker that takes a job also takes up to ``max_batch - 1`` more that are
waiting and segments them in one ``predict_batch`` call (same-size images share forward passes).
On the 2-core CPU this did not pay (BENCHMARKS.md, "Serving"), so ``cityseg serve`` batches only
with ``--batch-size`` > 1.

Memory grows with the pixels in inference (a 48 MP photo took 9.3 GB through LR-ASPP MobileNetV3),
so with a ``pixel_budget`` the images in the model at once total at most that many pixels (one
larger image runs alone): two workers never hold two huge images together, while small ones run
side by side. Workers wait for the budget in turn, so a large image is not starved by small ones.
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue as queue_module
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

PredictBatch = Callable[[Sequence[np.ndarray]], list[np.ndarray]]
#: The longest Retry-After given (seconds).
MAX_RETRY_AFTER = 60


class Busy(Exception):
    """Every slot is taken: the caller should answer 503 with ``Retry-After: retry_after`` seconds."""

    def __init__(self, retry_after: int, waiting: int) -> None:
        super().__init__(f"busy: {waiting} requests are waiting; retry in {retry_after} s")
        self.retry_after = retry_after


@dataclass
class _Job:
    prepare: Callable[[], np.ndarray]
    finish: Callable[[np.ndarray, np.ndarray], Any]
    future: Future = field(default_factory=Future)
    image: np.ndarray | None = None


class InferencePool:
    """``workers`` threads running ``predict_batch``, at most ``queue`` jobs waiting for them.

    Args:
        predict_batch: list of (H, W, 3) uint8 RGB -> list of (H, W) uint8 trainIds
            (:meth:`cityseg.inference.predict.Predictor.predict_batch`).
        workers: inference threads (>= 1).
        queue: jobs that may wait for a free worker (>= 0) before :meth:`run` raises :class:`Busy`.
        max_batch: jobs a worker takes at once (1: no batching).
        thread_setup: called first in each worker thread (e.g. setting torch's thread count).
        pixel_budget: the most pixels in the model at once, over all workers (None: no bound).
    """

    def __init__(self, predict_batch: PredictBatch, workers: int = 1, queue: int = 16, max_batch: int = 1,
                 thread_setup: Callable[[], None] | None = None, pixel_budget: int | None = None) -> None:
        if workers < 1 or queue < 0 or max_batch < 1:
            raise ValueError(f"workers {workers} (>= 1), queue {queue} (>= 0), max_batch {max_batch} (>= 1)")
        self.predict_batch = predict_batch
        self.workers, self.queue, self.max_batch = workers, queue, max_batch
        self.capacity = workers + queue
        self._jobs: queue_module.SimpleQueue[_Job | None] = queue_module.SimpleQueue()
        self._lock = threading.Lock()
        self._taken = 0  # slots in use: jobs waiting or running
        self._seconds = 1.0  # running mean of a job's time in a worker (for Retry-After)
        self.served = self.refused = 0
        self._thread_setup = thread_setup
        self.pixel_budget = pixel_budget
        self._pixels_free = pixel_budget or 0
        self._pixels = threading.Condition()
        self._turn = threading.Lock()  # workers wait for pixels one at a time, in turn
        self._threads = [threading.Thread(target=self._work, name=f"cityseg-serve-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()

    # --- the asyncio side ---------------------------------------------------------------------

    async def run(self, prepare: Callable[[], np.ndarray], finish: Callable[[np.ndarray, np.ndarray], Any]) -> Any:
        """``finish(image, train_ids)`` of ``image = prepare()``, computed in a worker; :class:`Busy` when
        every slot is taken. An exception of ``prepare``, the model or ``finish`` is raised here."""
        return await asyncio.wrap_future(self.submit(prepare, finish))

    def submit(self, prepare: Callable[[], np.ndarray], finish: Callable[[np.ndarray, np.ndarray], Any]) -> Future:
        """Queue a job -> its Future (cancelling it before a worker takes it skips the job); :class:`Busy`
        when every slot is taken."""
        with self._lock:
            if self._taken >= self.capacity:
                self.refused += 1
                waiting = self._taken - self.workers
                raise Busy(self.retry_after(waiting), waiting)
            self._taken += 1
        job = _Job(prepare, finish)
        self._jobs.put(job)
        return job.future

    def retry_after(self, waiting: int | None = None) -> int:
        """Seconds after which a slot is likely free: the waiting jobs' time at the recent mean, 1 to
        :data:`MAX_RETRY_AFTER`."""
        waiting = max(0, self._taken - self.workers) if waiting is None else waiting
        return min(MAX_RETRY_AFTER, max(1, math.ceil(self._seconds * (waiting + 1) / self.workers)))

    @property
    def taken(self) -> int:
        """Slots in use: jobs waiting or running."""
        return self._taken

    def close(self, timeout: float = 5.0) -> None:
        """Stop the workers after the jobs already queued."""
        for _ in self._threads:
            self._jobs.put(None)
        for t in self._threads:
            t.join(timeout)

    # --- the workers ----------------------------------------------------------------------------

    def _work(self) -> None:
        if self._thread_setup is not None:
            self._thread_setup()
        while True:
            job = self._jobs.get()
            if job is None:
                return
            batch = [job]
            while len(batch) < self.max_batch:
                try:
                    more = self._jobs.get_nowait()
                except queue_module.Empty:
                    break
                if more is None:  # closing: leave the stop mark for this worker's next turn
                    self._jobs.put(None)
                    break
                batch.append(more)
            start = time.perf_counter()
            outcomes: list[tuple[Future, bool, Any]] = []
            try:
                outcomes = self._process(batch)
            finally:
                with self._lock:  # the slots are free before the answers go out
                    self._taken -= len(batch)
                    self.served += len(batch)
                    self._seconds = 0.8 * self._seconds + 0.2 * (time.perf_counter() - start)
                for future, ok, value in outcomes:
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)

    def _process(self, batch: list[_Job]) -> list[tuple[Future, bool, Any]]:
        """(future, succeeded, result or exception) of each job that was not cancelled."""
        outcomes: list[tuple[Future, bool, Any]] = []
        ready = []
        for job in batch:
            if not job.future.set_running_or_notify_cancel():
                continue  # its client went away before the job started
            try:
                job.image = job.prepare()
                ready.append(job)
            except BaseException as exc:  # noqa: BLE001 - handed to the request, which answers it
                outcomes.append((job.future, False, exc))
        if not ready:
            return outcomes
        need = self._take_pixels(sum(job.image.shape[0] * job.image.shape[1] for job in ready))
        try:
            labels = self.predict_batch([job.image for job in ready])
        except BaseException as exc:  # noqa: BLE001
            log.exception("inference failed")
            return outcomes + [(job.future, False, exc) for job in ready]
        finally:
            self._give_pixels(need)
        for job, train_ids in zip(ready, labels, strict=True):
            try:
                outcomes.append((job.future, True, job.finish(job.image, train_ids)))
            except BaseException as exc:  # noqa: BLE001
                outcomes.append((job.future, False, exc))
            job.image = None
        return outcomes

    def _take_pixels(self, pixels: int) -> int:
        """Wait until ``pixels`` (at most the whole budget) are free and take them -> the number taken."""
        if self.pixel_budget is None:
            return 0
        need = min(pixels, self.pixel_budget)
        with self._turn, self._pixels:
            while self._pixels_free < need:
                self._pixels.wait()
            self._pixels_free -= need
        return need

    def _give_pixels(self, need: int) -> None:
        if need:
            with self._pixels:
                self._pixels_free += need
                self._pixels.notify_all()
