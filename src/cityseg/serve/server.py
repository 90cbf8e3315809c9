"""Running a :class:`~cityseg.serve.service.Service` with uvicorn: the model is warm before the port
opens; the address is printed once it listens; Ctrl-C or SIGTERM stop cleanly (uvicorn's handlers:
requests in progress are answered, then the workers stop)."""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable

from cityseg.errors import CitysegError
from cityseg.serve.service import Service

log = logging.getLogger("cityseg")


#: Seconds an idle keep-alive connection stays open: longer than the longest Retry-After
#: (:data:`cityseg.serve.pool.MAX_RETRY_AFTER`), so that a client that waits as told after a 503 finds
#: its connection still open (uvicorn's default, 5 s, closed it under them: broken pipes in the load check).
KEEP_ALIVE_S = 65


def is_loopback(host: str) -> bool:
    """True for 127.0.0.1, ::1, localhost; False for 0.0.0.0 and any other address or name."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_of(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def listen_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host``:``port`` (0: a free port); CitysegError naming them when it cannot be."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except (OSError, OverflowError) as exc:
        sock.close()
        reason = getattr(exc, "strerror", None) or exc
        raise CitysegError(f"--host {host} --port {port}: cannot listen there ({reason})") from None
    sock.set_inheritable(True)
    return sock


def run(service: Service, host: str = "127.0.0.1", port: int = 8000,
        on_ready: Callable[[str], None] | None = None) -> None:
    """Serve ``service`` (warm it first: :meth:`Service.warm_up`) until interrupted; ``port`` 0 picks a
    free one. ``on_ready(url)`` is called once the port listens (default: print the address)."""
    import uvicorn

    from cityseg.serve.app import create_app

    sock = listen_socket(host, port)
    url = url_of(host, sock.getsockname()[1])
    # A last bound on open connections (each may hold a body of up to --max-bytes while it is read), far
    # above the pool's, which answers 503 with Retry-After first; past it uvicorn answers a plain 503.
    limit = max(128, 4 * service.pool.capacity)
    config = uvicorn.Config(create_app(service), host=host, port=sock.getsockname()[1], log_level="warning",
                            access_log=False, limit_concurrency=limit, timeout_graceful_shutdown=10,
                            server_header=False, timeout_keep_alive=KEEP_ALIVE_S)

    def ready() -> None:
        if on_ready is not None:
            on_ready(url)
            return
        token = "; /v1/* needs 'Authorization: Bearer TOKEN'" if service.settings.token else ""
        print(f"cityseg serve: ready at {url} (API docs: {url}docs{token}); Ctrl-C stops", flush=True)

    class Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=sockets)
            if self.started and not self.should_exit:
                ready()

    try:
        Server(config).run(sockets=[sock])
    finally:
        sock.close()
        service.close()
