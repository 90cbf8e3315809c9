"""``cityseg serve``: an HTTP server segmenting the images posted to it (FastAPI and uvicorn).

The model is loaded as ``predict`` loads it (any --checkpoint form, --onnx, the inference flags) and
warmed up before the port opens; see :mod:`cityseg.serve` for the routes and README ("Serve a model").
"""

from __future__ import annotations

import argparse
import logging
import os

from cityseg.commands.shared_options import add_inference_arguments, add_model_arguments, check_batch_size, load_predictor

HELP = "serve a model over HTTP: POST /v1/segment, GET /v1/model, /healthz, and a page to try it at /"
TOKEN_ENV = "CITYSEG_SERVE_TOKEN"
MISSING = "cityseg serve needs fastapi and uvicorn: pip install 'cityseg[serve]'"
log = logging.getLogger("cityseg")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000, help="default 8000; 0: any free port (printed)")
    parser.add_argument("--token", help=f"require 'Authorization: Bearer TOKEN' on /v1/* (default: ${TOKEN_ENV} if set)")
    parser.add_argument("--max-pixels", type=int, default=50_000_000, metavar="N",
                        help="largest image, width x height (default 50,000,000); larger ones are refused undecoded")
    parser.add_argument("--max-bytes", type=int, default=32 * 1024 * 1024, metavar="N",
                        help="largest request body in bytes (default 33554432, 32 MiB)")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="inference threads (default: one per core, at most 2)")
    parser.add_argument("--queue", type=int, default=16, metavar="N",
                        help="requests that may wait for a worker (default 16); beyond them: 503 with Retry-After")
    parser.add_argument("--threads", type=int, metavar="N", help="torch threads per worker (default: cores / workers)")
    add_inference_arguments(parser)
    parser.add_argument("--crf", action="store_true", help="refine with a dense CRF (needs cityseg[crf])")
    parser.add_argument("--set", metavar="SECTION.KEY=VALUE", action="append", default=[],
                        help="override a config value, e.g. eval.scales=[1.0] (repeatable)")


def run(args: argparse.Namespace) -> int:
    import importlib.util

    from cityseg.errors import CitysegError

    if any(importlib.util.find_spec(m) is None for m in ("fastapi", "uvicorn", "multipart")):
        raise CitysegError(MISSING)
    check_batch_size(args)
    for flag, value, low in [("--max-pixels", args.max_pixels, 1), ("--max-bytes", args.max_bytes, 1),
                             ("--workers", args.workers or 1, 1), ("--queue", args.queue, 0),
                             ("--threads", args.threads or 1, 1), ("--port", args.port, 0)]:
        if value < low:
            raise CitysegError(f"{flag} {value}: must be >= {low}")

    from cityseg.serve import Limits, Service, Settings, default_workers, is_loopback, run_server

    token = args.token or os.environ.get(TOKEN_ENV) or None
    if not is_loopback(args.host) and token is None:
        log.warning(f"cityseg serve: warning: listening on {args.host} without a token: anyone who reaches "
                    f"this machine can use the model (--token or ${TOKEN_ENV})")
    predictor = load_predictor(args, None)  # the sizes to come are unknown: eager unless --runtime compile
    settings = Settings(Limits(args.max_bytes, args.max_pixels), token, args.workers or default_workers(),
                        args.queue, args.batch_size, args.threads)
    service = Service(predictor, settings, source=args.checkpoint or args.onnx)
    log.info(f"cityseg serve: {service.name}, {predictor.describe_inference()}; {predictor.describe()}; "
             f"{settings.workers} worker(s) x {service.threads} thread(s), queue {settings.queue}; warming up")
    service.warm_up()
    run_server(service, args.host, args.port)
    return 0
