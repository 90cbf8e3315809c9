"""Load check of ``cityseg serve`` (issue 25): concurrent clients for a while; errors, latency,
throughput and the server's memory over time.

    PYTHONPATH=src python benchmarks/bench_serve.py [--checkpoint CKPT] [--clients 24] [--duration 120]
    PYTHONPATH=src python benchmarks/bench_serve.py --compare [--compare-duration 30]

Starts ``python -m cityseg serve --port 0`` on ``--checkpoint`` (default: a freshly initialised
model of the default config, ``lraspp_mobilenet_v3_large`` with random weights, saved to a temporary
checkpoint), waits for its "ready at" line, then runs ``--clients`` threads, each with its own
keep-alive connection (``http.client``), POSTing ``--image`` (default: a 2048x1024 Cityscapes photo
of ../shared/fixtures, or a random one) to ``/v1/segment?output=OUTPUT`` back to back for
``--duration`` seconds. A 503 (the full queue, deliberate) makes the client wait its Retry-After and
is counted apart; anything else that is not a 200 (another status, a refused or dropped connection,
a timeout) is an error. Every second the server's resident memory (VmRSS of /proc/PID/status) is
sampled; the summary compares the mean of the first and the last 30 s.

``--compare`` runs the short configurations behind the server's defaults instead: 1 worker x 2 torch
threads, 2 workers x 1 thread, 2 x 2 (oversubscribed), and batching (``--batch-size 4``, requests
waiting together in one forward pass) against none, each ``--compare-duration`` seconds with
``--compare-clients`` clients, ``--rounds`` times interleaved (every other round in reverse order). Prints one JSON line per run on stdout
(then, with ``--compare``, the throughputs and median latencies of each configuration).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO.parent / "shared" / "fixtures" / "images_only" / "frankfurt_000000_002196_leftImg8bit.png"
COMPARE = [  # (label, extra serve flags)
    ("1 worker x 2 threads", ["--workers", "1", "--threads", "2"]),
    ("2 workers x 1 thread", ["--workers", "2", "--threads", "1"]),
    ("2 workers x 2 threads", ["--workers", "2", "--threads", "2"]),
    ("1 worker x 2 threads, batch 4", ["--workers", "1", "--threads", "2", "--batch-size", "4"]),
    ("2 workers x 1 thread, batch 4", ["--workers", "2", "--threads", "1", "--batch-size", "4"]),
]


def default_checkpoint(folder: Path) -> Path:
    """A checkpoint of the default config's model with random weights (seed 0)."""
    import torch

    from cityseg.checkpoint import save_checkpoint
    from cityseg.config import Config
    from cityseg.models import build_model

    cfg = Config()
    cfg.model.pretrained = "none"
    torch.manual_seed(0)
    model = build_model(cfg.model.name, freeze=[], pretrained="none").eval()
    path = folder / "default-random.pt"
    save_checkpoint(path, {"config": cfg.to_dict(), "model": model.state_dict(), "epoch": 0, "step": 0})
    return path


def photo_bytes(path: str | None, folder: Path) -> tuple[bytes, str]:
    if path is None and PHOTO.is_file():
        path = str(PHOTO)
    if path is None:
        import numpy as np
        from PIL import Image

        path = str(folder / "random.png")
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (1024, 2048, 3), dtype=np.uint8)).save(path)
    data = Path(path).read_bytes()
    return data, "image/jpeg" if path.lower().endswith((".jpg", ".jpeg")) else "image/png"


def start_server(checkpoint: Path, flags: list[str]) -> tuple[subprocess.Popen, str, int]:
    cmd = [sys.executable, "-m", "cityseg", "serve", "--checkpoint", str(checkpoint), "--port", "0", *flags]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=sys.stderr, text=True, env=env)
    for line in server.stdout:
        print(line.rstrip(), file=sys.stderr)
        if m := re.search(r"ready at http://([\d.]+):(\d+)/", line):
            threading.Thread(target=lambda: [None for _ in server.stdout], daemon=True).start()  # drain
            return server, m.group(1), int(m.group(2))
    raise SystemExit(f"the server did not start: {' '.join(cmd)}")


def rss_mb(pid: int) -> float | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    m = re.search(r"VmRSS:\s+(\d+) kB", text)
    return int(m.group(1)) / 1024 if m else None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` (all its threads) so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def client(host: str, port: int, body: bytes, kind: str, output: str, until: float, results: list) -> None:
    conn = None
    while time.time() < until:
        start = time.perf_counter()
        try:
            if conn is None:
                conn = http.client.HTTPConnection(host, port, timeout=120)
            conn.request("POST", f"/v1/segment?output={output}", body=body, headers={"Content-Type": kind})
            response = conn.getresponse()
            response.read()
            status, retry = response.status, response.getheader("Retry-After")
        except (OSError, http.client.HTTPException) as exc:
            results.append(("error", time.perf_counter() - start, type(exc).__name__))
            conn = None
            continue
        elapsed = time.perf_counter() - start
        if status == 200:
            results.append(("ok", elapsed, start))
        elif status == 503 and retry:
            results.append(("busy", elapsed, retry))
            time.sleep(min(float(retry), max(0.0, until - time.time())))
        else:
            results.append(("error", elapsed, status))
    if conn is not None:
        conn.close()


def load(checkpoint: Path, flags: list[str], body: bytes, kind: str, clients: int, duration: float,
         output: str, label: str) -> dict:
    load_before = [round(x, 2) for x in os.getloadavg()]
    server, host, port = start_server(checkpoint, flags)
    results: list = []
    memory: list[float] = []
    try:
        base, cpu_before = rss_mb(server.pid), cpu_seconds(server.pid)
        began = time.time()
        until = began + duration
        threads = [threading.Thread(target=client, args=(host, port, body, kind, output, until, results))
                   for _ in range(clients)]
        for t in threads:
            t.start()
        while time.time() < until:
            time.sleep(1.0)
            if (mb := rss_mb(server.pid)) is not None:
                memory.append(mb)
        for t in threads:
            t.join(180)
        wall = time.time() - began
        alive = server.poll() is None
        cpu = cpu_seconds(server.pid) - cpu_before if alive and cpu_before is not None else None
    finally:
        server.terminate()
        server.wait(30)
    ok = sorted(r[1] for r in results if r[0] == "ok")
    errors = [r[2] for r in results if r[0] == "error"]
    window = min(30, len(memory) // 2) or 1

    def pct(q: float) -> float | None:
        return round(ok[min(len(ok) - 1, int(q * len(ok)))], 3) if ok else None

    return {
        "run": label, "flags": flags, "load_average_before": load_before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()], "clients": clients, "duration_s": duration, "wall_s": round(wall, 1),
        "ok": len(ok), "busy_503": sum(r[0] == "busy" for r in results), "errors": len(errors),
        "error_kinds": sorted({str(e) for e in errors}), "server_alive": alive,
        "throughput_per_s": round(len(ok) / wall, 3),  # the requests in flight at the end finish after duration
        # the server's CPU time per answer: what a request costs, less disturbed by other jobs than wall time
        "cpu_s_per_ok": round(cpu / len(ok), 3) if cpu is not None and ok else None,
        "latency_s": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": round(ok[-1], 3) if ok else None,
                      "mean": round(statistics.fmean(ok), 3) if ok else None},
        "rss_mb": {"after_warm_up": base and round(base), "first_30s_mean": round(statistics.fmean(memory[:window])),
                   "last_30s_mean": round(statistics.fmean(memory[-window:])), "max": round(max(memory)),
                   "samples": len(memory)} if memory else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="default: the default config's model, random weights")
    parser.add_argument("--image", help="the photo every client sends (default: a 2048x1024 fixture photo)")
    parser.add_argument("--clients", type=int, default=24, help="concurrent clients (default 24: above the "
                        "2 workers + 16 waiting the server takes, so some 503s are expected)")
    parser.add_argument("--duration", type=float, default=120.0)
    parser.add_argument("--output", default="json", choices=["json", "labels", "color", "overlay"])
    parser.add_argument("--compare", action="store_true", help="the worker/thread/batching configurations instead")
    parser.add_argument("--compare-duration", type=float, default=30.0)
    parser.add_argument("--compare-clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1, help="--compare: run the configurations this many times, "
                        "interleaved (the other jobs of a shared machine disturb each about alike)")
    parser.add_argument("serve_flags", nargs=argparse.REMAINDER, help="after --: more `cityseg serve` flags")
    args = parser.parse_args()
    extra = [f for f in args.serve_flags if f != "--"]
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        checkpoint = Path(args.checkpoint) if args.checkpoint else default_checkpoint(Path(tmp))
        body, kind = photo_bytes(args.image, Path(tmp))
        if args.compare:
            runs = [load(checkpoint, flags + extra, body, kind, args.compare_clients, args.compare_duration,
                         args.output, label)
                    for r in range(args.rounds) for label, flags in (COMPARE if r % 2 == 0 else COMPARE[::-1])]
        else:
            runs = [load(checkpoint, extra, body, kind, args.clients, args.duration, args.output, "load")]
        for run in runs:
            print(json.dumps(run), flush=True)
        if args.compare:
            summary = {label: {"throughput_per_s": [r["throughput_per_s"] for r in runs if r["run"] == label],
                               "p50_s": [r["latency_s"]["p50"] for r in runs if r["run"] == label],
                               "cpu_s_per_ok": [r["cpu_s_per_ok"] for r in runs if r["run"] == label]}
                       for label, _ in COMPARE}
            print(json.dumps({"summary": summary}), flush=True)
    return 0 if all(r["errors"] == 0 and r["server_alive"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
