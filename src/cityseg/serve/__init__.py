"""``cityseg serve``: a model behind HTTP.

- :mod:`~cityseg.serve.service`: the loaded Predictor, what it says about itself, its warm-up
  (:class:`Service`, :class:`Settings`);
- :mod:`~cityseg.serve.pool`: the bounded pool of inference threads and waiting requests (503 beyond);
- :mod:`~cityseg.serve.images`: checking, decoding and answering uploads (:class:`Limits`), no framework;
- :mod:`~cityseg.serve.app`: the FastAPI routes (:func:`create_app`);
- :mod:`~cityseg.serve.page`: the page at ``/`` (``page.html``);
- :mod:`~cityseg.serve.server`: uvicorn (:func:`run_server`).

FastAPI and uvicorn (``pip install 'cityseg[serve]'``) are imported by ``app`` and ``server`` only,
when they are used.
"""

from __future__ import annotations

from typing import Any

from cityseg.serve.images import Limits, RequestError
from cityseg.serve.pool import Busy, InferencePool
from cityseg.serve.server import is_loopback
from cityseg.serve.server import run as run_server
from cityseg.serve.service import Service, Settings, default_workers

__all__ = ["Busy", "InferencePool", "Limits", "RequestError", "Service", "Settings", "create_app", "default_workers",
           "is_loopback", "run_server"]


def __getattr__(name: str) -> Any:
    if name == "create_app":  # imports fastapi
        from cityseg.serve.app import create_app

        return create_app
    raise AttributeError(f"module 'cityseg.serve' has no attribute {name!r}")
