"""int8 on the CPU (issue 15 item 2): onnxruntime static QDQ quantisation against eager fp32 / bf16.

Which toolchain: torch 2.14 no longer ships ``torch.ao.quantization.quantize_pt2e`` (PT2E moved to
torchao, which is not installed here), so the maintained path available is onnxruntime's
``quantize_static`` (QDQ, per-channel int8 weights, uint8 activations, MinMax calibration) on the
TorchScript ONNX export (uint8 ``image`` input, normalisation inside the graph).

Two measurements:

* speed: DeepLabV3-ResNet50, ``torch.manual_seed(0)`` random weights (no download), one real
  photo resized to ``--size``; eager fp32 NCHW (the baseline), eager bf16 autocast channels_last,
  onnxruntime fp32 and onnxruntime int8, interleaved round by round; argmax agreement with
  the baseline on that frame. Random weights make the agreement figure a weak signal (near-tied
  logits flip easily): it is pessimistic for a trained model's confident pixels.
* accuracy: a trained checkpoint (``--checkpoint``, e.g. the pairs recipe's ``cityseg_small``), calibrated on
  ``--calib`` train frames, measured on ``--frames`` val frames at their size: argmax agreement
  with eager fp32 and the val mIoU of each.

Usage::

    PYTHONPATH=src python benchmarks/bench_int8.py --size 1024x512 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cityseg.imaging import normalize

DATA = Path("data/pairs")  # --data: a prepared pairs folder (cityseg prepare ... --format pairs)
CKPT = Path("runs/pairs192/checkpoints/best.pt")  # --checkpoint: a model trained on DATA


def frames(split: str, n: int) -> list[torch.Tensor]:
    """The first ``n`` photos of ``split`` as (1, 3, H, W) uint8."""
    from cityseg.utils import read_image

    paths = sorted((DATA / "leftImg8bit" / split).rglob("*.png"))[:n]
    return [torch.from_numpy(np.array(read_image(p, "RGB"))).permute(2, 0, 1)[None].contiguous() for p in paths]


def quantize(model: torch.nn.Module, calib: list[torch.Tensor], out_dir: Path,
             args: argparse.Namespace) -> tuple[bytes, bytes, float]:
    """(fp32 onnx bytes, int8 QDQ onnx bytes, seconds) for ``model`` calibrated on ``calib`` uint8 frames,
    quantised as ``--quantise-ends`` and ``--all-ops`` say (printing the operators quantised)."""
    from cityseg.inference.int8 import OP_TYPES, quantize_onnx
    from cityseg.inference.onnx import onnx_bytes

    start = time.perf_counter()
    data, _ = onnx_bytes(model, exporter="torchscript")
    qdata = quantize_onnx(data, calib, out_dir, keep_ends=not args.quantise_ends,
                          op_types=None if args.all_ops else OP_TYPES)
    seconds = time.perf_counter() - start
    print("quantised operators: " + ", ".join(f"{op} {n}" for op, n in quantised_ops(qdata).items()), flush=True)
    return data, qdata, seconds


def quantised_ops(qdata: bytes) -> dict[str, int]:
    """How many nodes of each operator type in the QDQ model read a DequantizeLinear output (run on int8)."""
    import onnx

    graph = onnx.load_from_string(qdata).graph
    dequantised = {out for node in graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    counts: dict[str, int] = {}
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") and dequantised & set(node.input):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def timed(fn) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn()
    return (time.perf_counter() - start) * 1000, out


def speed(args) -> dict:
    from cityseg.inference.onnx import OrtRunner, ort_session
    from cityseg.inference.runtime import TorchRunner
    from cityseg.models import build_model

    torch.manual_seed(0)
    model = build_model("deeplabv3_resnet50", pretrained="none", freeze=[]).eval()
    w, h = (int(v) for v in args.size.split("x"))
    calib = [torch.nn.functional.interpolate(f.float(), size=(h // 2, w // 2), mode="bilinear").round().clamp(0, 255)
             .to(torch.uint8) for f in frames("train", args.calib)]
    photo = frames("val", 1)[0]
    x = torch.nn.functional.interpolate(photo.float(), size=(h, w), mode="bilinear").round().clamp(0, 255).to(torch.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        data, qdata, qs = quantize(model, calib, Path(tmp), args)
    print(f"export + calibrate + quantise: {qs:.1f} s", flush=True)
    import copy

    runners = {
        "eager_fp32": (TorchRunner(copy.deepcopy(model), torch.device("cpu"), "fp32", channels_last=False), normalize(x)),
        "eager_bf16": (TorchRunner(copy.deepcopy(model), torch.device("cpu"), "bf16", channels_last=True), normalize(x)),
        "ort_fp32": (OrtRunner(ort_session(data)), x),
        "ort_int8": (OrtRunner(ort_session(qdata)), x),
    }
    outs, times = {}, {n: [] for n in runners}
    for name, (run, inp) in runners.items():
        outs[name] = run(inp)  # warm-up
    for r in range(args.repeats):
        for name, (run, inp) in runners.items():
            ms, _ = timed(lambda: run(inp))
            times[name].append(ms)
        print(f"round {r + 1}: " + ", ".join(f"{n} {times[n][-1]:.0f} ms" for n in runners), flush=True)
    base = outs["eager_fp32"].argmax(1)
    results = {}
    for name in runners:
        ratios = [b / t for b, t in zip(times["eager_fp32"], times[name], strict=True)]
        results[name] = {"ms": statistics.median(times[name]), "speedup": statistics.median(ratios),
                         "agreement": float((outs[name].argmax(1) == base).double().mean()), "times_ms": times[name]}
    return results


def accuracy(args) -> dict:
    from cityseg.checkpoint import load_model
    from cityseg.data.dataset import CityscapesDataset
    from cityseg.inference.onnx import OrtRunner, ort_session
    from cityseg.inference.runtime import TorchRunner
    from cityseg.metrics import confusion

    model, _ = load_model(CKPT, "cpu")
    calib = frames("train", args.calib)
    with tempfile.TemporaryDirectory() as tmp:
        data, qdata, qs = quantize(model, calib, Path(tmp), args)
    import copy

    runners = {
        "eager_fp32": TorchRunner(copy.deepcopy(model), torch.device("cpu"), "fp32", channels_last=False),
        "eager_bf16": TorchRunner(copy.deepcopy(model), torch.device("cpu"), "bf16", channels_last=True),
        "ort_fp32": OrtRunner(ort_session(data)),
        "ort_int8": OrtRunner(ort_session(qdata)),
    }
    ds = CityscapesDataset(DATA, "val")
    n = min(args.frames, len(ds))
    agree = {k: [0, 0] for k in runners}
    conf = {k: 0 for k in runners}
    for i in range(n):
        item = ds.load(i)
        img = torch.as_tensor(item["image"])[None]
        gt = np.asarray(item["mask"])
        preds = {}
        for name, run in runners.items():
            inp = img if getattr(run, "input_space", None) == "pixels" or isinstance(run, OrtRunner) else normalize(img)
            preds[name] = run(inp).argmax(1)[0]
        for name, p in preds.items():
            agree[name][0] += int((p == preds["eager_fp32"]).sum())
            agree[name][1] += p.numel()
            conf[name] = conf[name] + confusion(p.numpy().astype(np.uint8), gt)

    def miou(c: np.ndarray) -> float:
        inter = np.diag(c)
        union = c.sum(0) + c.sum(1) - inter
        valid = union > 0
        return float((inter[valid] / union[valid]).mean())

    base = miou(conf["eager_fp32"])
    return {name: {"agreement": agree[name][0] / agree[name][1], "miou": miou(conf[name]),
                   "miou_delta": miou(conf[name]) - base} for name in runners} | {"frames": n, "quantise_s": qs}


def main(argv: list[str] | None = None) -> int:
    global DATA, CKPT
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1024x512")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--calib", type=int, default=16, help="calibration frames (default 16)")
    parser.add_argument("--frames", type=int, default=50, help="val frames for the accuracy part (default 50)")
    parser.add_argument("--skip", choices=["speed", "accuracy"], action="append", default=[])
    parser.add_argument("--data", type=Path, default=DATA, help=f"prepared pairs folder (default {DATA})")
    parser.add_argument("--checkpoint", type=Path, default=CKPT, help=f"trained model for the accuracy part (default {CKPT})")
    parser.add_argument("--json")
    parser.add_argument("--quantise-ends", action="store_true", help="quantise the first and last convolutions too")
    parser.add_argument("--all-ops", action="store_true", help="quantise onnxruntime's default operator set")
    args = parser.parse_args(argv)
    DATA, CKPT = args.data, args.checkpoint
    out = {"size": args.size, "threads": torch.get_num_threads(), "all_ops": args.all_ops,
           "quantise_ends": args.quantise_ends}
    if "accuracy" not in args.skip:
        out["accuracy"] = accuracy(args)
        print(json.dumps(out["accuracy"], indent=1), flush=True)
    if "speed" not in args.skip:
        out["speed"] = speed(args)
        for name, r in out["speed"].items():
            print(f"{name:12s} {r['ms']:8.0f} ms {r['speedup']:6.2f}x agreement {r['agreement']:.4%}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
