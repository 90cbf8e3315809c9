"""Shared test fixtures: real frames (skipped when absent) and an isolated default-data folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """../shared/fixtures (real Cityscapes and KITTI frames); the test skips when it is absent."""
    if not (FIXTURES / "cityscapes").is_dir():
        pytest.skip("real-frame fixtures (../shared/fixtures) are not present")
    return FIXTURES


@pytest.fixture(autouse=True)
def _isolated_data_home(tmp_path_factory, monkeypatch):
    """Keep the synthetic default data of tests out of the user's ~/.cache."""
    monkeypatch.setenv("CITYSEG_DATA_HOME", str(tmp_path_factory.getbasetemp() / "data_home"))


@pytest.fixture(autouse=True, scope="module")
def _torch_settings_restored_per_module():
    """Every test module starts with the torch settings of the session. A module-scoped fixture that
    trains once for a module's tests (train() sets the thread count and deterministic algorithms for
    the process) runs before the per-test fixture below records its baseline, so that fixture alone
    would carry the change into every later module: it did, from test_own_dataset.py to
    test_transforms.py, whose resample test then ran under deterministic algorithms (NaN-filled
    uninitialised memory) and one thread. This fixture is set up before the module's other fixtures
    and torn down after them."""
    import torch

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


@pytest.fixture(autouse=True)
def _torch_settings_restored():
    """Every test starts with the torch settings of the session: a test (or the train() it calls)
    that changes the thread count, the deterministic-algorithms mode or its NaN fill must not change what later
    tests compute or how fast, whatever order they run in. (Module fixtures such as one_thread_torch
    are set up first: their settings are what each of their tests returns to.)"""
    import torch

    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    grad, dtype, autocast = torch.is_grad_enabled(), torch.get_default_dtype(), torch.is_autocast_enabled("cpu")
    fill = torch.utils.deterministic.fill_uninitialized_memory  # train() turns it off
    yield
    torch.utils.deterministic.fill_uninitialized_memory = fill
    torch.set_grad_enabled(grad)
    torch.set_default_dtype(dtype)
    torch.set_autocast_enabled("cpu", autocast)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    if (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()) != (
            deterministic, warn_only):
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


@pytest.fixture(scope="module")
def one_thread_torch():
    """One intra-op thread (stable timings on a shared 2-core machine); undo train()'s global settings
    (thread count, deterministic algorithms) afterwards. Training test modules use it for all their tests."""
    import torch

    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


@pytest.fixture
def one_thread_own_cache(one_thread_torch, tmp_path, monkeypatch):
    """:func:`one_thread_torch`, and the user cache (where int8 models are kept) in ``tmp_path``, never ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """8 train + 4 val synthetic frames of 64x32 in the official layout (drawn once per session)."""
    from cityseg.data.synthetic import generate

    root = tmp_path_factory.mktemp("synth")
    generate(root, train=8, val=4, size=(64, 32), seed=0, workers=1, progress=False)
    return root


@pytest.fixture
def hf_cache_with(monkeypatch, tmp_path):
    """``hf_cache_with(state_dict)``: make huggingface_hub's download answer every request from the Hugging
    Face cache with a safetensors file of ``state_dict``; returns the list of (repo, filename,
    local_files_only) asked for."""
    import huggingface_hub
    from safetensors.torch import save_file

    asked: list[tuple[str, str, bool]] = []

    def install(state_dict) -> list[tuple[str, str, bool]]:
        path = tmp_path / "hf-cached-model.safetensors"
        save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))

        def cached(repo, filename, local_files_only=False, **kwargs):
            asked.append((repo, filename, local_files_only))
            return str(path)

        monkeypatch.setattr(huggingface_hub, "hf_hub_download", cached)
        return asked

    return install


def _miou_by_hand(pairs) -> float:
    """Cityscapes mIoU of ``(predicted trainIds, ground-truth labelIds)`` pairs, written out from the
    definition (a reference for the scores of ``cityseg evaluate``, independent of cityseg.metrics):
    the ground truth's void pixels are skipped; per class, IoU = tp / (tp + fp + fn), where fn counts
    every other prediction on the class's ground truth and fp the class's predictions on other
    scored ground truth; classes with tp + fp + fn = 0 are left out of the mean."""
    from cityseg.labels import LABELS, NUM_CLASSES

    to_train = {lb.id: lb.train_id for lb in LABELS if lb.id >= 0 and 0 <= lb.train_id < NUM_CLASSES}
    tp, fp, fn = [0] * NUM_CLASSES, [0] * NUM_CLASSES, [0] * NUM_CLASSES
    for pred, gt_ids in pairs:
        pred, gt_ids = np.asarray(pred), np.asarray(gt_ids)
        assert pred.shape == gt_ids.shape, (pred.shape, gt_ids.shape)
        gt = np.full(gt_ids.shape, -1)
        for raw, c in to_train.items():
            gt[gt_ids == raw] = c
        for c in range(NUM_CLASSES):
            tp[c] += int(((gt == c) & (pred == c)).sum())
            fn[c] += int(((gt == c) & (pred != c)).sum())
            fp[c] += int(((gt >= 0) & (gt != c) & (pred == c)).sum())
    ious = [t / (t + p + n) for t, p, n in zip(tp, fp, fn) if t + p + n]
    return sum(ious) / len(ious)


@pytest.fixture
def miou_by_hand():
    """``miou_by_hand([(pred_train_ids, gt_label_ids), ...])`` -> the mIoU, from the definition."""
    return _miou_by_hand
