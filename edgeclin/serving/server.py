"""``serve()``: verify and load every bundle, bind the port, run uvicorn until SIGTERM or SIGINT.

Order matters: the bundles are verified and loaded (a changed one stops the start with the
same one-line error as ``edgeclin predict``) before the socket is bound, and the socket is
bound here rather than by uvicorn so that the one "listening on" line can name the actual
port, also for ``--port 0``. On SIGTERM or SIGINT uvicorn stops accepting connections, every
request already received is answered (the batchers keep running until then), and ``serve``
returns normally.
"""

from __future__ import annotations

import signal
import socket

import uvicorn

from edgeclin.errors import EdgeclinError
from edgeclin.logs import get_logger
from edgeclin.serving.app import ServingState, create_app
from edgeclin.serving.config import ServeConfig, bundle_specs, is_loopback
from edgeclin.serving.registry import load_models

log = get_logger(__name__)
CONNECTIONS_OVER_QUEUE = 256  # open connections allowed beyond --max-queue before uvicorn itself answers 503


def serve(bundles: list[str], config: ServeConfig) -> None:
    """Serve the bundles (paths or NAME=PATH) until SIGTERM/SIGINT; refuses a bad start with an EdgeclinError."""
    specs = bundle_specs(bundles)
    models = load_models(specs, threads=config.threads, backend=config.backend, max_batch=config.max_batch)
    state = ServingState(models, config)
    sock = _bind(config.host, config.port)
    url = _url(config, sock)
    server = _Server(uvicorn.Config(
        create_app(state), host=config.host, port=config.port, log_config=None, access_log=False,
        lifespan="on", ssl_certfile=config.ssl_certfile, ssl_keyfile=config.ssl_keyfile,
        # bounded memory: connections beyond this get uvicorn's own 503 before their body is read
        limit_concurrency=config.max_queue + CONNECTIONS_OVER_QUEUE, timeout_keep_alive=15),
        state, url)
    if not is_loopback(config.host) and not config.tls:
        log.warning(f"listening on {config.host} without TLS: keys and notes cross the network in clear text; "
                    "use --ssl-certfile/--ssl-keyfile or a TLS proxy in front")
    previous = {sig: signal.signal(sig, _ignore) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:  # uvicorn re-raises the signal it caught once it has drained; _ignore makes that a normal return
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    if not server.started:
        raise EdgeclinError(f"the server on {url} did not start (see the messages above)")
    log.info("stopped: every request received was answered")


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one), refused with one line if it cannot be had."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise EdgeclinError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def _url(config: ServeConfig, sock: socket.socket) -> str:
    host = f"[{config.host.strip('[]')}]" if ":" in config.host else config.host
    return f"{'https' if config.tls else 'http'}://{host}:{sock.getsockname()[1]}"


def _ignore(signum, frame) -> None:
    pass


class _Server(uvicorn.Server):
    """uvicorn's server, printing the listening line once started and marking the state as draining on a signal."""

    def __init__(self, config: uvicorn.Config, state: ServingState, url: str) -> None:
        super().__init__(config)
        self.serving, self.url = state, url

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            names = ", ".join(self.serving.models)
            print(f"edgeclin serve: listening on {self.url} (models: {names}; docs: {self.url}/docs)", flush=True)

    def handle_exit(self, sig: int, frame) -> None:
        if not self.serving.draining:
            self.serving.draining = True
            log.info(f"{signal.Signals(sig).name}: no new connections; answering every request received")
        super().handle_exit(sig, frame)
