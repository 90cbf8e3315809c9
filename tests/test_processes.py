"""Worker pools (cityseg.processes): no fork, a dead worker is one CitysegError line and never a
hang, and evaluate --pred-dir leaves the calling process's malloc settings alone."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import threading

import numpy as np
import pytest

from cityseg.data import prepare as prepare_module
from cityseg.data import synthetic
from cityseg.data.colour import confident_lut
from cityseg.data.palette import CITYSCAPES, palette_of
from cityseg.datasets import load_dataset
from cityseg.errors import CitysegError
from cityseg.metrics import pred_dir
from cityseg import processes
from cityseg.processes import WorkerPool, pool_context

LIMIT_S = 120  # far above what these runs take (a few seconds); a hang fails here, not in CI's limit


def die(*args) -> None:
    """A worker function that kills its process, as the kernel's OOM killer or a crash in native code
    would (module-level: workers import it from this file, as they import the function it replaces)."""
    os._exit(3)


def within_limit(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` in a daemon thread: its result or exception, or a failure after LIMIT_S."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(LIMIT_S)
    assert not thread.is_alive(), f"{fn.__name__} still running after {LIMIT_S} s: a dead worker hangs the pool"
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_the_start_method_is_never_fork():
    method = pool_context().get_start_method()
    assert method == ("forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn")


def test_worker_pool_keeps_order_and_raises_worker_errors():
    with WorkerPool(2, "squares") as pool:
        assert list(pool.map(abs, range(-7, 0), chunksize=3)) == [7, 6, 5, 4, 3, 2, 1]
        assert sorted(pool.map(abs, range(-5, 0), ordered=False)) == [1, 2, 3, 4, 5]
    with pytest.raises(CitysegError, match="bad frame"), WorkerPool(2, "errors") as pool:
        list(pool.map(_raise_cityseg_error, ["bad frame"]))


def _raise_cityseg_error(message: str) -> None:
    raise CitysegError(message)


def test_a_dead_worker_is_an_error_not_a_hang():
    def run():
        with WorkerPool(2, "numbers 1-4") as pool:
            return list(pool.map(die, [1, 2, 3, 4]))

    with pytest.raises(CitysegError) as info:
        within_limit(run)
    message = str(info.value)
    assert "\n" not in message and message.startswith("numbers 1-4: a worker process ended abruptly")


def test_evaluate_with_a_dead_worker_names_the_folders(synth_root, tmp_path, monkeypatch):
    gt_dir, preds = _predictions(synth_root, tmp_path)
    monkeypatch.setattr(pred_dir, "score_frame", die)
    with pytest.raises(CitysegError) as info:
        within_limit(pred_dir.evaluate_pred_dir, preds, gt_dir, None, 2)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"evaluate --pred-dir {preds} --gt-dir {gt_dir}: a worker")
    assert "_gtFine_labelIds.png" in message  # names a frame left unscored


def test_prepare_with_a_dead_worker_names_the_source(synth_root, tmp_path, monkeypatch):
    monkeypatch.setattr(prepare_module, "_run_job_star", die)
    with pytest.raises(CitysegError, match=rf"^prepare {synth_root}: a worker process ended abruptly"):
        within_limit(prepare_module.prepare, synth_root, tmp_path / "out", workers=2, progress=False)


def test_synthetic_data_with_a_dead_worker_names_the_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, "_write_task", die)
    out = tmp_path / "synth"
    with pytest.raises(CitysegError, match=rf"^synthetic data {out}: a worker process ended abruptly"):
        within_limit(synthetic.generate, out, train=4, val=2, size=(32, 16), workers=2, progress=False)
    assert synthetic.read_marker(out) is None  # not marked complete


@pytest.mark.parametrize("workers", [1, 2])
def test_evaluate_leaves_the_callers_malloc_settings_alone(synth_root, tmp_path, monkeypatch, workers):
    # keep_freed_memory (mallopt) lasts for the life of a process and glibc cannot read it back: it
    # may only run in the workers, never in the process that asks for the evaluation.
    gt_dir, preds = _predictions(synth_root, tmp_path)
    calls = []
    real_cdll = ctypes.CDLL

    class LibC:
        def mallopt(self, *args):
            calls.append(args)
            return 1

    monkeypatch.setattr(ctypes, "CDLL", lambda name, *a, **k: LibC() if "libc" in str(name) else real_cdll(name, *a, **k))
    counts, _, frames = pred_dir.evaluate_pred_dir(preds, gt_dir, None, workers)
    assert frames == 4 and calls == []
    processes.keep_freed_memory()  # the spy does see a call made here
    assert len(calls) == 2


def test_prepare_workers_adopt_the_parents_colour_tables(monkeypatch):
    # Workers share no memory with the parent: _init_worker installs the tables the parent built.
    spec = load_dataset("camvid")
    own = palette_of(spec)
    assert own is not CITYSCAPES
    city_lut, own_lut = confident_lut().copy(), np.zeros(1 << 24, np.uint8)
    monkeypatch.setitem(vars(CITYSCAPES), "lut", confident_lut())  # undone after the test
    monkeypatch.setitem(vars(own), "lut", None)
    prepare_module._init_worker(spec, [city_lut, own_lut])
    assert confident_lut() is city_lut and confident_lut(own) is own_lut


def test_prepare_workers_recover_pairs_colours_as_one_process_does(tmp_path):
    # Pairs masks (JPEG among them) go through the colour table that the workers adopt.
    from test_prepare import _pairs_source, _snapshot

    _pairs_source(tmp_path / "src")
    for workers in (1, 2):
        prepare_module.prepare(tmp_path / "src", tmp_path / f"out{workers}", fmt="pairs", workers=workers,
                               progress=False)
    one, two = _snapshot(tmp_path / "out1"), _snapshot(tmp_path / "out2")
    assert len(one) > 3 and {k: v[0] for k, v in one.items()} == {k: v[0] for k, v in two.items()}


def _predictions(synth_root, tmp_path):
    """(gt_dir, pred_dir) of the synthetic val split, the ground truth itself as predictions."""
    gt_dir, preds = synth_root / "gtFine" / "val", tmp_path / "pred"
    preds.mkdir()
    for gt in sorted(gt_dir.rglob("*_gtFine_labelIds.png")):
        (preds / gt.name.replace("_gtFine_labelIds.png", "_leftImg8bit.png")).symlink_to(gt)
    return gt_dir, preds
