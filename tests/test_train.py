"""The training engine on tiny synthetic data: steps per model and loss, the run folder, resume
equivalence (in-process and with a real SIGKILL), DDP on two CPU processes, faults."""

from __future__ import annotations

import contextlib
import io
import logging
import json
import os
import signal
import time
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader

import cityseg.engine.build as B
from cityseg import device
import cityseg.engine.train as T
from cityseg.cli import main
from cityseg.config import Config, config_from_dict, load_config
from cityseg.checkpoint import load_checkpoint, save_checkpoint
from cityseg.engine.resume import RunState
from cityseg.engine.runlog import Progress, RunLog, lock_run_dir, unlock_run_dir
from cityseg.engine.schedule import Budget, build_schedule
from cityseg.errors import CitysegError
from cityseg.labels import NUM_CLASSES

REPO = Path(__file__).resolve().parents[1]

#: A run small enough for a test: 64x32 frames, 4-image batches, 2 epochs, no worker processes.
TINY = [
    "model.name=cityseg_tiny",
    "model.freeze=[]",
    "data.crop_size=64x32",
    "data.scale_range=[0.75,1.25]",
    "data.workers=0",
    "train.batch_size=4",
    "train.val_batch_size=2",
    "train.epochs=2",
    "train.panels=2",
    "train.log_every=1",
    "sched.name=constant",
    "sched.warmup_iters=2",
    "optim.lr=0.005",
]


pytestmark = pytest.mark.usefixtures("one_thread_torch")


def tiny_cfg(root: Path, *extra: str) -> Config:
    cfg = load_config(None, [*TINY, *extra])
    cfg.data.root = str(root)
    return cfg


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def tiny_args(root: Path, out: Path, *extra: str) -> list[str]:
    sets = [item for s in TINY for item in ("--set", s)]
    return ["train", "--data", str(root), "--out", str(out), "--device", "cpu", *sets, *extra]


# --- steps per model and per loss ------------------------------------------------------------


def _loader(root: Path, cfg: Config) -> DataLoader:
    from cityseg.data.dataset import CityscapesDataset
    from cityseg.data.transforms import build_transforms

    ds = CityscapesDataset(root, "train", transform=build_transforms(cfg.data, train=True))
    return DataLoader(ds, batch_size=cfg.train.batch_size, shuffle=False, drop_last=True)


def _steps(cfg: Config, root: Path, steps: int) -> tuple[nn.Module, dict, list[float]]:
    """Run ``steps`` optimiser steps through the engine; return the model, its initial weights, losses."""
    B.seed_everything(0)
    model, bare_model = B.build_train_model(cfg, cfg.spec(), torch.device("cpu"))
    before = {k: v.clone() for k, v in bare_model.state_dict().items()}
    optimizer = B.build_optimizer(cfg, bare_model)
    step_settings = B.build_step_settings(cfg, torch.device("cpu"), micro_batch=cfg.train.batch_size)  # no accumulation
    schedule = build_schedule(optimizer, cfg.sched, total_steps=steps)
    loop = T.Loop(RunState(), RunLog(Path("."), cfg, enabled=False), Budget(steps), steps=1)
    losses = []
    loader = _loader(root, cfg)
    batch = next(iter(loader))
    for _ in range(steps):  # the same batch again and again: the loss must fall
        losses.append(T.train_one_epoch(model, B.build_criterion(cfg, cfg.spec()), optimizer, schedule, [batch],
                                        step_settings, Progress("t", 1, enabled=False), loop))
    return bare_model, before, losses


@pytest.mark.parametrize(
    "name, freeze",
    [
        ("cityseg_tiny", ["stem"]),
        ("lraspp_mobilenet_v3_large", ["stem", "layer1"]),
        ("deeplabv3_mobilenet_v3_large", ["stem", "layer1"]),
        ("deeplabv3_resnet50", ["stem", "layer1"]),
    ],
)
def test_a_few_steps_per_model_learn_and_keep_frozen_stages(synth_root, name, freeze):
    extra = [f"model.name={name}", f"model.freeze={freeze}", "train.channels_last=true"]
    if name == "deeplabv3_resnet50":
        extra.append("model.output_stride=16")  # same code path, a quarter of the compute
    cfg = tiny_cfg(synth_root, *extra)
    bare_model, before, losses = _steps(cfg, synth_root, steps=4)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    after = bare_model.state_dict()
    frozen = [n for n, p in bare_model.named_parameters() if not p.requires_grad]
    assert frozen, "the freeze list froze nothing"
    for key in frozen:
        assert torch.equal(after[key], before[key]), key
    # BatchNorm of frozen stages keeps its running statistics (set_frozen_bn_eval after train())
    frozen_bn = [k for k in after if k.endswith("running_mean") and k.replace("running_mean", "weight") in frozen]
    assert frozen_bn and all(torch.equal(after[k], before[k]) for k in frozen_bn)
    trainable = [n for n, p in bare_model.named_parameters() if p.requires_grad]
    assert any(not torch.equal(after[k], before[k]) for k in trainable)


@pytest.mark.parametrize(
    "weights", [["loss.ce=1", "loss.focal=0", "loss.dice=0"], ["loss.focal=1", "loss.dice=0"],
                ["loss.focal=0", "loss.dice=1"], ["loss.focal=1.5", "loss.dice=1"]],
    ids=["ce", "focal", "dice", "focal+dice"],
)
def test_a_few_steps_per_loss(synth_root, weights):
    _, _, losses = _steps(tiny_cfg(synth_root, *weights), synth_root, steps=4)
    assert losses[-1] < losses[0]


def test_gradient_accumulation_equals_one_big_batch():
    """2 micro-batches of 2 with accumulation give the gradient of one batch of 4 (no BN, CE, no ignore)."""
    torch.manual_seed(0)
    images, targets = torch.randn(4, 3, 8, 8), torch.randint(0, NUM_CLASSES, (4, 8, 8))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, NUM_CLASSES, 3, padding=1)

        def forward(self, x):
            return {"out": self.conv(x)}

    def run(micro: int) -> torch.Tensor:
        torch.manual_seed(1)
        net = Net()
        cfg = Config()
        cfg.loss.ce, cfg.loss.focal, cfg.loss.dice = 1.0, 0.0, 0.0
        cfg.train.batch_size, cfg.train.micro_batch_size, cfg.optim.name, cfg.optim.weight_decay = 4, micro, "sgd", 0.0
        opt = B.build_optimizer(cfg, net)
        step_settings = B.build_step_settings(cfg, torch.device("cpu"), micro_batch=micro)
        batches = [{"image": images[i : i + micro], "mask": targets[i : i + micro]} for i in range(0, 4, micro)]
        sched = build_schedule(opt, cfg.sched, 1)
        loop = T.Loop(RunState(), RunLog(Path("."), cfg, enabled=False), Budget(sched.total_steps), steps=1)
        T.train_one_epoch(net, B.build_criterion(cfg, cfg.spec()), opt, sched, batches, step_settings,
                          Progress("t", 1, enabled=False), loop)
        return net.conv.weight.detach().clone()

    assert torch.allclose(run(2), run(4), atol=1e-6)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_step_runs_and_auto_is_float32_on_cpu(synth_root, amp):
    cfg = tiny_cfg(synth_root, f"train.amp={amp}")
    step_settings = B.build_step_settings(cfg, torch.device("cpu"), micro_batch=2)
    assert step_settings.amp_dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    assert (step_settings.scaler is not None) == (amp == "fp16")
    _, _, losses = _steps(cfg, synth_root, steps=2)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert B.build_step_settings(tiny_cfg(synth_root), torch.device("cpu"), 2).amp_dtype is None  # auto: fp32 on CPU


@pytest.mark.parametrize("native", [True, False], ids=["avx512-bf16", "avx2"])
def test_bf16_native_trains_in_bf16_only_where_the_cpu_computes_it(synth_root, monkeypatch, caplog, native):
    """The CPU recipes' ``bf16-native``: bf16 on CPUs with AVX512-BF16/AMX, float32 elsewhere (where
    emulated bf16 steps take ~8x as long); plain ``bf16`` is kept as asked, with a warning there."""
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    with caplog.at_level(logging.INFO, logger=B.__name__):
        resolved = B.build_step_settings(tiny_cfg(synth_root, "train.amp=bf16-native"), cpu, 2)
        asked = B.build_step_settings(tiny_cfg(synth_root, "train.amp=bf16"), cpu, 2)
    assert resolved.amp_dtype == (torch.bfloat16 if native else None)
    assert resolved.amp_name == ("bf16" if native else "none")  # what the run's starting line says
    assert asked.amp_dtype == torch.bfloat16
    messages = {r.levelno: r.getMessage() for r in caplog.records}
    if native:
        assert not messages
    else:
        assert messages[logging.INFO] == (
            "train.amp bf16-native: this CPU has no AVX512-BF16 or AMX, so training runs in float32")
        assert messages[logging.WARNING].startswith("train.amp bf16: this CPU has no AVX512-BF16 or AMX")
        assert "train.amp=bf16-native or none" in messages[logging.WARNING]


@pytest.mark.parametrize("recipe", ["pairs", "pairs_imagenet"])
def test_cpu_recipes_ask_for_bf16_only_where_native(recipe):
    assert load_config(recipe).train.amp == "bf16-native"


# --- the whole run ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(synth_root, tmp_path_factory) -> tuple[Path, str]:
    """``cityseg train`` without --out, run in a fresh folder: the run lands in runs/demo."""
    cwd = tmp_path_factory.mktemp("cwd")
    sets = [item for s in TINY for item in ("--set", s)]
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            assert main(["train", "--data", str(synth_root), "--device", "cpu", *sets]) == 0
    finally:
        os.chdir(old)
    return cwd / "runs" / "demo", printed.getvalue()


def test_run_folder_holds_everything(finished_run):
    out, printed = finished_run
    records = read_metrics(out)
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert {"epoch", "train_loss", "val_loss", "val_miou", "val_dice", "lr", "time", "iou", "step"} <= set(r)
        assert len(r["iou"]) == NUM_CLASSES
        # the logged mIoU is the mean of the per-class IoUs logged beside it (classes absent from val: NaN)
        assert r["val_miou"] == pytest.approx(float(np.nanmean([float(v) for v in r["iou"].values()])), abs=1e-12)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert config_from_dict(saved) == config_from_dict(load_checkpoint(out / "checkpoints" / "last.pt")["config"])
    last, best = load_checkpoint(out / "checkpoints" / "last.pt"), load_checkpoint(out / "checkpoints" / "best.pt")
    assert last["epoch"] == 2 and last["step"] == records[-1]["step"] == 4
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "best_miou", "metrics"} <= set(last)
    best_record = max(records, key=lambda r: r["val_miou"])
    assert best["epoch"] == best_record["epoch"] and best["best_miou"] == pytest.approx(best_record["val_miou"])
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert (out / "curves.png").stat().st_size > 1000 and (out / "panels.png").stat().st_size > 1000
    # the closing lines say where everything is and the best mIoU
    assert f"best val mIoU {best_record['val_miou']:.4f}" in printed
    for name in ("runs/demo", "runs/demo/curves.png", "runs/demo/panels.png"):
        assert name in printed
    # not a terminal: plain progress lines, no bar control characters
    assert "epoch 2/2 2/2 loss" in printed and "\r" not in printed


def test_force_clears_only_what_a_run_writes(tmp_path):
    from cityseg.engine.runlog import prepare_run_dir

    (tmp_path / "checkpoints").mkdir()
    for name in ("config.yaml", "metrics.jsonl", "eval_val.json", "checkpoints/last.pt", "notes.txt"):
        (tmp_path / name).write_text("x")
    with pytest.raises(CitysegError, match="already holds files"):
        prepare_run_dir(tmp_path, resume=False, force=False)
    prepare_run_dir(tmp_path, resume=False, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_validation_numbers_match_cityseg_evaluate(finished_run, synth_root, tmp_path):
    out, _ = finished_run
    scores = tmp_path / "scores.json"
    code = main(["evaluate", "--checkpoint", str(out / "checkpoints" / "last.pt"), "--data", str(synth_root),
                 "--device", "cpu", "--json", str(scores)])
    assert code == 0
    evaluated, trained = json.loads(scores.read_text()), read_metrics(out)[-1]
    assert evaluated["miou"] == pytest.approx(trained["val_miou"], abs=1e-9)
    assert evaluated["mean_dice"] == pytest.approx(trained["val_dice"], abs=1e-9)


def test_evaluate_checkpoint_scores_the_default_data_training_used(tmp_path, monkeypatch):
    """Without --data, training and ``evaluate --checkpoint`` use the same synthetic default data, whatever
    train.seed: evaluate gives the logged val mIoU and leaves the data folder as it was (it used to redraw
    the folder with train.seed, replacing the frames training saw)."""
    from cityseg.data.synthetic import default_data_dir

    monkeypatch.setenv("CITYSEG_DATA_HOME", str(tmp_path / "home"))
    sets = [*TINY, "train.epochs=1", "train.seed=7", "data.synth_train=4", "data.synth_val=2", "data.synth_size=64x32"]
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--device", "cpu", *[x for s in sets for x in ("--set", s)]]) == 0
    data = default_data_dir()
    before = {p: p.stat().st_mtime_ns for p in [data, *data.rglob("*")]}
    scores = tmp_path / "scores.json"
    assert main(["evaluate", "--checkpoint", str(out / "checkpoints" / "last.pt"), "--device", "cpu",
                 "--json", str(scores)]) == 0
    assert {p: p.stat().st_mtime_ns for p in [data, *data.rglob("*")]} == before
    logged = read_metrics(out)[-1]
    assert logged["epoch"] == 1
    assert json.loads(scores.read_text())["miou"] == pytest.approx(logged["val_miou"], abs=1e-4)


def test_existing_run_is_not_overwritten(finished_run, synth_root, capsys):
    out, _ = finished_run
    before = (out / "metrics.jsonl").read_text()
    assert main(tiny_args(synth_root, out)) == 2
    assert "already holds files; use --resume" in capsys.readouterr().err
    assert (out / "metrics.jsonl").read_text() == before


def test_early_stop_and_best_checkpoint_follow_val_miou(synth_root, tmp_path, monkeypatch):
    """Validations scoring 0.5, 0.4, 0.3: early_stop=2 ends after epoch 3; best.pt stays epoch 1."""
    real, mious = T.validate, iter([0.5, 0.4, 0.3, 0.2])

    def scripted(*args):
        scores, frames = real(*args)
        return {**scores, "val_miou": next(mious)}, frames

    monkeypatch.setattr(T, "validate", scripted)
    out = tmp_path / "run"
    summary = T.train(tiny_cfg(synth_root, "train.epochs=5", "train.early_stop=2"), out, device="cpu",
                      max_steps_per_epoch=1)
    assert [r["val_miou"] for r in read_metrics(out)] == [0.5, 0.4, 0.3]
    assert load_checkpoint(out / "checkpoints" / "best.pt")["epoch"] == 1
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 3
    assert (summary["best_miou"], summary["best_epoch"]) == (0.5, 1)


# --- resume ---------------------------------------------------------------------------------


def _interrupt_at_step(monkeypatch, n: int) -> None:
    """Make the n-th optimiser step of this process raise KeyboardInterrupt (a simulated Ctrl-C)."""
    real, calls = T.optimizer_step, {"n": 0}

    def step(*args):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        real(*args)

    monkeypatch.setattr(T, "optimizer_step", step)


def test_resume_after_interruption_matches_the_uninterrupted_run(finished_run, synth_root, tmp_path, monkeypatch):
    reference, _ = finished_run
    out = tmp_path / "run"
    _interrupt_at_step(monkeypatch, 3)  # epoch 2 has steps 3 and 4
    assert main(tiny_args(synth_root, out)) == 130  # Ctrl-C: clean exit status 130
    assert [r["epoch"] for r in read_metrics(out)] == [1]
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 1
    monkeypatch.undo()
    # a kill between the metrics line and the checkpoint leaves a line (and maybe half a line) too many
    with (out / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"epoch": 2, "val_loss": -1.0}) + "\n" + '{"epoch": 3, "val_')
    assert main(tiny_args(synth_root, out, "--resume")) == 0
    got, want = read_metrics(out), read_metrics(reference)
    assert [r["epoch"] for r in got] == [1, 2]
    for a, b in zip(got, want):
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-4)
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-4)
    resumed = load_checkpoint(out / "checkpoints" / "last.pt")["model"]
    for key, value in load_checkpoint(reference / "checkpoints" / "last.pt")["model"].items():
        assert torch.allclose(resumed[key].float(), value.float(), atol=1e-5), key


def test_resume_refuses_a_checkpoint_of_another_model(finished_run, synth_root, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoints").mkdir()
    ckpt = load_checkpoint(finished_run[0] / "checkpoints" / "last.pt")
    ckpt["config"]["model"]["name"] = "deeplabv3_mobilenet_v3_large"
    save_checkpoint(out / "checkpoints" / "last.pt", {k: v for k, v in ckpt.items() if k not in ("format", "version")})
    assert main(tiny_args(synth_root, out, "--resume")) == 2
    err = capsys.readouterr().err
    assert "holds model 'deeplabv3_mobilenet_v3_large', but the config builds 'cityseg_tiny'" in err


def test_resume_refuses_a_checkpoint_with_non_finite_weights(finished_run, synth_root, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    ckpt = load_checkpoint(finished_run[0] / "checkpoints" / "last.pt")
    name = next(k for k, v in ckpt["model"].items() if v.is_floating_point())
    ckpt["model"][name].fill_(float("inf"))
    save_checkpoint(out / "checkpoints" / "last.pt", {k: v for k, v in ckpt.items() if k not in ("format", "version")})
    assert main(tiny_args(synth_root, out, "--resume")) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"cityseg train: error: {out / 'checkpoints' / 'last.pt'}: tensor model.{name} holds NaN or "
                   "infinite values; a usable checkpoint holds finite weights only")


# --- one writer per run folder -----------------------------------------------------------------


def test_a_second_train_into_a_running_folder_is_refused(synth_root, tmp_path, capsys):
    """While a run is between its epochs, ``train``, ``--resume`` and ``--force`` into its folder all
    exit 2 naming the folder and the running process; the run goes on with its log in order."""
    out, refusals = tmp_path / "run", []

    def meanwhile(epoch: int, record: dict) -> None:
        if epoch == 1:
            for extra in ([], ["--resume"], ["--force"]):
                refusals.append((main(tiny_args(synth_root, out, *extra)), capsys.readouterr().err.strip()))
            assert (out / "checkpoints" / "last.pt").is_file()  # --force deleted nothing

    T.train(tiny_cfg(synth_root), out, device="cpu", on_validation=meanwhile)
    message = (f"cityseg train: error: --out {out}: process {os.getpid()} is writing a run into this folder "
               f"(it holds {out / '.lock'}); wait for it to end or stop it, or give another --out")
    assert refusals == [(2, message)] * 3
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2]
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 2
    unlock_run_dir(lock_run_dir(out))  # the lock ended with the run


_HOLDER = """
import multiprocessing, sys, time
from pathlib import Path
from cityseg.engine.runlog import lock_run_dir
lock_run_dir(Path(sys.argv[1]))
worker = multiprocessing.get_context("fork").Process(target=time.sleep, args=(120,))  # like a DataLoader worker
worker.start()
print(worker.pid, flush=True)
sys.stdin.read()
"""


def test_a_killed_run_leaves_no_stale_lock_even_with_live_workers(finished_run, synth_root, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished_run[0], out)
    before = (out / "metrics.jsonl").read_text()
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    worker = int(holder.stdout.readline())
    try:
        assert main(tiny_args(synth_root, out, "--force")) == 2
        assert f"--out {out}: process {holder.pid} is writing a run into this folder" in capsys.readouterr().err
        assert (out / "metrics.jsonl").read_text() == before and (out / "checkpoints" / "last.pt").is_file()
        holder.kill()  # SIGKILL: no clean-up runs; the forked worker lives on for now
        holder.wait()
        os.kill(worker, 0)  # still alive
        unlock_run_dir(lock_run_dir(out))  # yet the lock died with the run
    finally:
        holder.kill()
        holder.wait()
        holder.stdin.close()
        holder.stdout.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker, signal.SIGKILL)
    assert (out / ".lock").read_text() == f"{os.getpid()}\n"


@pytest.mark.slow
def test_sigkill_during_second_epoch_then_resume(synth_root, tmp_path):
    """A real ``kill -9`` in epoch 2, then ``--resume``: same final val loss as never stopping."""
    extra = ["--set", "data.workers=1", "--set", "train.batch_size=2"]  # 4 steps/epoch, one worker process
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "cityseg"]
    subprocess.run([*cmd, *tiny_args(synth_root, tmp_path / "ref", *extra)], check=True, env=env, capture_output=True)
    out = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, *tiny_args(synth_root, out, *extra)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    for line in proc.stdout:  # plain progress lines, one per optimiser step
        if line.startswith("epoch 2/2 2/4"):  # two of the four steps of epoch 2 are done
            break
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert [r["epoch"] for r in read_metrics(out)] == [1]
    subprocess.run([*cmd, *tiny_args(synth_root, out, *extra, "--resume")], check=True, env=env, capture_output=True)
    got, want = read_metrics(out), read_metrics(tmp_path / "ref")
    assert [r["epoch"] for r in got] == [1, 2]
    assert got[-1]["val_loss"] == pytest.approx(want[-1]["val_loss"], abs=1e-4)


# --- DDP ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_process_gloo_ddp_run(synth_root, tmp_path):
    """torchrun with 2 CPU processes: rank 0 alone writes, every val frame is scored once."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "cityseg", *tiny_args(synth_root, out, "--set", "train.val_batch_size=1")]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("done in") == 1  # only rank 0 prints
    records = read_metrics(out)
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[-1]["step"] == 4  # global batch 4 = 2 processes x 2
    # the confusion matrix summed over both processes equals one process scoring all 4 frames
    from cityseg.checkpoint import load_model

    model, cfg = load_model(out / "checkpoints" / "last.pt")
    cfg.data.root, cfg.train.val_batch_size = str(synth_root), 1
    spec = cfg.spec()
    _, val_loader, _ = B.build_loaders(cfg, spec, synth_root, torch.device("cpu"))
    step_settings = B.build_step_settings(cfg, torch.device("cpu"), micro_batch=2)
    scores, _ = T.validate(model, B.build_criterion(cfg, spec), val_loader, step_settings, cfg, spec,
                           Progress("v", 1, enabled=False))
    assert scores["val_miou"] == pytest.approx(records[-1]["val_miou"], abs=1e-9)
    assert scores["val_loss"] == pytest.approx(records[-1]["val_loss"], abs=1e-5)


# --- faults ---------------------------------------------------------------------------------


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(synth_root, tmp_path, monkeypatch, capsys):
    real, calls = T.compute_loss, {"n": 0}

    def poisoned(*args):
        calls["n"] += 1
        loss = real(*args)
        return loss * float("nan") if calls["n"] == 3 else loss  # first micro-batch of epoch 2

    monkeypatch.setattr(T, "compute_loss", poisoned)
    out = tmp_path / "run"
    assert main(tiny_args(synth_root, out)) == 2
    err = capsys.readouterr().err.strip()
    assert "loss is nan at epoch 2, step 3" in err and "last.pt (epoch 1) is intact" in err and "\n" not in err
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 1
    assert [r["epoch"] for r in read_metrics(out)] == [1]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--set", "train.batch_size=3"], "train.batch_size=3 is not a multiple of train.micro_batch_size=2"),
        (["--set", "train.amp=fp8"], "unknown train.amp 'fp8'; valid: auto, bf16-native, bf16, fp16, none"),
        (["--set", "optim.name=lion"], "config key optim.name: 'lion' is unknown; valid: adamw, sgd"),
        (["--set", "model.name=unet"], "config key model.name: 'unet' is not a model; valid: deeplabv3_resnet50"),
        (["--set", "train.batch_size=16"], "training images per process make no full batch"),
    ],
)
def test_bad_settings_give_one_line(synth_root, tmp_path, capsys, extra, message):
    if "batch_size=3" in extra[1]:
        extra = [*extra, "--set", "train.micro_batch_size=2"]
    assert main(tiny_args(synth_root, tmp_path / "run", *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_data_folder_without_the_layout(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    assert main(tiny_args(tmp_path / "photos", tmp_path / "run")) == 2
    assert "not a Cityscapes-layout folder" in capsys.readouterr().err


def test_default_data_is_generated_when_no_root(monkeypatch, tmp_path):
    """data.root null and no --data: ensure_default_data with the config's synth_* sizes."""
    calls = []

    def fake(train, val, size, seed):
        calls.append((train, val, size, seed))
        return tmp_path

    import cityseg.data.synthetic as S

    monkeypatch.setattr(S, "ensure_default_data", fake)
    cfg = load_config(None, ["data.synth_train=5", "data.synth_val=2", "data.synth_size=64x32"])
    assert B.resolve_data_root(cfg) == tmp_path and calls == [(5, 2, (64, 32), 0)]


# --- real frames ----------------------------------------------------------------------------


@pytest.mark.long
def test_demo_recipe_fits_the_real_frames(fixtures_dir, tmp_path):
    """The 8 real training frames as both splits (linked, never copied): the pipeline fits real data.

    The demo recipe for 60 epochs, adapted to 8 frames of 2048x1024: 512x256 crops from frames
    shrunk 3.3-5x (about the whole frame at the scale of the synthetic ones), batches of 2 with a
    short warmup (4 steps per epoch instead of 125), and validation on 512x256 inputs scored at
    full size every 10 epochs (the full-size loss and scores of 8 frames cost more than an epoch
    of training).
    """
    src = fixtures_dir / "cityscapes"
    for split in ("train", "val"):
        for kind, suffix in (("leftImg8bit", "_leftImg8bit.png"), ("gtFine", "_gtFine_labelIds.png")):
            folder = tmp_path / "data" / kind / split / "aachen"
            folder.mkdir(parents=True)
            for f in sorted((src / kind / "train" / "aachen").glob(f"*{suffix}")):
                (folder / f.name).symlink_to(f)
    out = tmp_path / "run"
    sets = ["train.epochs=60", "data.crop_size=512x256", "data.scale_range=[0.2,0.3]", "data.val_size=512x256",
            "train.batch_size=2",
            "sched.warmup_iters=20", "train.val_every=10", "train.log_every=1000"]
    args = ["train", "--data", str(tmp_path / "data"), "--out", str(out), "--device", "cpu"]
    assert main([*args, *[item for s in sets for item in ("--set", s)]]) == 0
    best = max(r["val_miou"] for r in read_metrics(out) if "val_miou" in r)  # validated every 10th epoch
    print(f"real frames: best val mIoU {best:.3f}")
    assert best >= 0.35


# --- budgets, SIGTERM, cached frames ---------------------------------------------------------


def test_step_budget_ends_the_run_mid_epoch_with_the_schedule_at_its_floor(synth_root, tmp_path):
    out = tmp_path / "run"  # 8 frames / batch 4 = 2 steps per epoch; 3 steps end in epoch 2
    args = tiny_args(synth_root, out, "--set", "train.epochs=50", "--set", "train.max_steps=3",
                     "--set", "sched.name=poly", "--set", "sched.warmup_iters=0")
    assert main(args) == 0
    records = read_metrics(out)
    assert [r["epoch"] for r in records] == [1, 2] and records[-1]["step"] == 3
    assert "val_miou" in records[-1]  # the last, cut-short epoch is validated
    assert records[-1]["lr"] == 0.0  # poly decayed over the 3 steps, not over 50 epochs
    assert records[0]["lr"] == pytest.approx(0.005 * (1 - 2 / 3) ** 0.9)


def test_time_budget_ends_the_run_and_counts_across_resume(synth_root, tmp_path, capsys):
    out = tmp_path / "run"
    args = tiny_args(synth_root, out, "--set", "train.epochs=50", "--set", "train.max_minutes=0.0001",
                     "--set", "sched.name=cosine")
    assert main(args) == 0  # 6 ms: used up by the first step
    records = read_metrics(out)
    assert [r["epoch"] for r in records] == [1] and records[0]["step"] == 1 and records[0]["lr"] == 0.0
    assert "budget used up in epoch 1: train.max_minutes=0.0001" in capsys.readouterr().out
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["elapsed"] > 0.006
    assert main(args + ["--resume"]) == 0  # nothing left of the budget: one more step at most
    assert [r["epoch"] for r in read_metrics(out)][-1] <= 2


def test_crop_stages_grow_the_training_crop_over_the_run(synth_root, tmp_path, capsys, monkeypatch):
    shapes = []
    compute_loss = T.compute_loss
    monkeypatch.setattr(T, "compute_loss", lambda c, o, t, w: shapes.append(tuple(t.shape[-2:])) or compute_loss(c, o, t, w))
    out = tmp_path / "run"  # 2 steps per epoch, 4 epochs: a quarter of the run each
    assert main(tiny_args(synth_root, out, "--set", "train.epochs=4", "--set", "data.crop_stages=[32x16,48x24]")) == 0
    # shares by the fraction done at an epoch's start: 0 and 0.25 -> 32x16, 0.5 -> 48x24, 0.75 -> crop_size 64x32
    assert shapes == [(16, 32)] * 4 + [(24, 48)] * 2 + [(32, 64)] * 2
    printed = capsys.readouterr().out
    assert "epoch 3: training crops now 48x24" in printed and "epoch 4: training crops now 64x32" in printed
    assert not (out / "eval_val.json").exists()  # eval is one plain pass: nothing more to score


def test_a_recipe_with_test_time_augmentation_scores_its_best_checkpoint_that_way(synth_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(tiny_args(synth_root, out, "--set", "eval.flip=true", "--set", "eval.scales=[0.75,1.0]")) == 0
    final = json.loads((out / "eval_val.json").read_text())
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("best checkpoint with its"))
    assert "eval.scales 0.75,1 + flip (whole): val mIoU" in line and f"{final['miou']:.4f}" in line
    scores = tmp_path / "scores.json"  # what cityseg evaluate gives for the best checkpoint (its eval section)
    assert main(["evaluate", "--checkpoint", str(out / "checkpoints" / "best.pt"), "--data", str(synth_root),
                 "--device", "cpu", "--json", str(scores)]) == 0
    assert json.loads(scores.read_text())["miou"] == pytest.approx(final["miou"], abs=1e-12)
    plain = max(r["val_miou"] for r in read_metrics(out))  # per-epoch validation stays one plain pass
    assert load_checkpoint(out / "checkpoints" / "best.pt")["best_miou"] == pytest.approx(plain)


@pytest.mark.slow
def test_sigterm_stops_like_ctrl_c(synth_root, tmp_path):
    """``kill`` (SIGTERM) mid-run: exit status 130, the --resume hint, a loadable last.pt."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "cityseg", *tiny_args(synth_root, out, "--set", "train.epochs=1000")],
                            env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("epoch 2/1000"):  # epoch 1 is checkpointed
            break
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, "".join(lines) + rest
    assert f"continue with --resume --out {out}" in rest and "Traceback" not in rest
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] >= 1


def test_cached_frames_are_the_frames_on_disk(synth_root):
    from cityseg.data.dataset import CityscapesDataset

    plain, cached = CityscapesDataset(synth_root, "train"), CityscapesDataset(synth_root, "train")
    cached.preload()
    for i in range(len(plain)):
        a, b = plain[i], cached[i]
        assert a["name"] == b["name"]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    cached[0]["mask"].zero_()  # an item is a copy: writing into it leaves the cache alone
    assert torch.equal(cached[0]["mask"], plain[0]["mask"])


def test_cached_run_equals_the_uncached_run(synth_root, tmp_path):
    assert main(tiny_args(synth_root, tmp_path / "a", "--set", "train.epochs=1")) == 0
    assert main(tiny_args(synth_root, tmp_path / "b", "--set", "train.epochs=1", "--set", "data.cache=true")) == 0
    a, b = read_metrics(tmp_path / "a")[0], read_metrics(tmp_path / "b")[0]
    assert a["train_loss"] == b["train_loss"] and a["val_loss"] == b["val_loss"]


def test_stop_signals_wait_for_a_step_boundary_inside_the_loop():
    """Inside the loop a first SIGTERM/SIGINT only asks for a stop (raised by ``check``); a second,
    or one before the loop, stops at once. Handlers are restored afterwards."""
    from cityseg.engine.runlog import StopSignals

    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as stop:
        with pytest.raises(KeyboardInterrupt):  # before the loop: at once
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        stop.defer()
        stop.check()  # nothing asked yet
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs; nothing is raised here
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            stop.check()
        with pytest.raises(KeyboardInterrupt):  # a second signal: at once
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
    assert signal.getsignal(signal.SIGTERM) is before


def test_quiet_prints_nothing_verbose_adds_debug_and_the_run_keeps_a_train_log(synth_root, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "-q", *tiny_args(synth_root, run)[1:], "--set", "train.epochs=1"]) == 0
    printed = capsys.readouterr()
    assert printed.out == "" and printed.err == ""  # nothing on success
    log = (run / "train.log").read_text()
    assert "epoch 1:" in log and "best val mIoU" in log  # the run's own log keeps every line, time-stamped
    assert log.splitlines()[0][:4].isdigit()
    assert main(["train", "-v", *tiny_args(synth_root, run)[1:], "--set", "train.epochs=2", "--resume"]) == 0
    printed = capsys.readouterr()
    assert "cityseg " in printed.out and "arguments [" in printed.out  # the debug line
    assert "epoch 2:" in printed.out
    log = (run / "train.log").read_text()
    assert "epoch 1:" in log and "epoch 2:" in log  # resumed: appended, not replaced
    with pytest.raises(SystemExit):
        main(["train", "-q", "-v"])  # one or the other
    assert "not allowed with argument" in capsys.readouterr().err
