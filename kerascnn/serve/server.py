"""`kerascnn serve`: REST (uvicorn) and optionally gRPC over one ModelStore, until SIGTERM or Ctrl-C.

uvicorn handles SIGINT/SIGTERM: it stops accepting connections, lets requests in flight finish
(at most `DRAIN_SECONDS`), then the gRPC server is stopped with the same grace and the store
finishes its batchers, so the process exits within seconds.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
from pathlib import Path

from kerascnn.serve.models import ModelStore, ServeOptions, ServeSetupError, serving_root
from kerascnn.serve.rest import create_app

DRAIN_SECONDS = 5
LOOPBACK = ("127.0.0.1", "localhost", "::1")
log = logging.getLogger(__name__)


def check_port(host: str, port: int, flag: str) -> None:
    """ServeSetupError unless host:port can be bound now (uvicorn would only log and exit 1)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ServeSetupError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another {flag}") from None


def serve(path: str | Path, model_name: str | None = None, host: str = "127.0.0.1", port: int = 8501,
          grpc_port: int | None = None, options: ServeOptions | None = None, access_log: bool = False) -> None:
    """Serve the SavedModel versions under `path` (run directory or serving root) until stopped.

    Args:
        path: run directory or serving root.
        model_name: name in URLs and gRPC ModelSpec (default: the folder's name).
        host: interface to bind (default loopback); a notice is printed for any other.
        port: REST port (default 8501, TF Serving's).
        grpc_port: gRPC port (default None: no gRPC; TF Serving uses 8500).
        options: batching, limits and watching.
        access_log: log every HTTP request (default False).
    """
    import uvicorn

    options = options or ServeOptions()
    root, default_name = serving_root(path)
    store = ModelStore(root, model_name or default_name, options)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr)
    if host not in LOOPBACK:
        print(f"notice: listening on {host}, reachable from other machines; the server has no authentication "
              f"(the default, 127.0.0.1, is reachable from this machine only)", file=sys.stderr)
    check_port(host, port, "--port")
    store.start()
    grpc_server = None
    try:
        if grpc_port is not None:
            from kerascnn.serve.grpc_service import start_grpc

            try:
                grpc_server = start_grpc(store, host, grpc_port)
            except (OSError, RuntimeError) as exc:
                raise ServeSetupError(f"cannot listen for gRPC on {host}:{grpc_port} ({exc}); choose another "
                                      f"--grpc-port") from None
        print(f"serving model {store.name!r} versions {store.versions()} from {root}: REST http://{host}:{port}/v1/"
              f"models/{store.name}" + (f", gRPC {host}:{grpc_port}" if grpc_port is not None else ""),
              file=sys.stderr, flush=True)
        config = uvicorn.Config(create_app(store=store), host=host, port=port, log_level="warning",
                                access_log=access_log, timeout_graceful_shutdown=DRAIN_SECONDS,
                                lifespan="on")
        server = uvicorn.Server(config)
        # uvicorn drains on SIGINT/SIGTERM, then re-raises the signal to the handler that was there
        # before; this one only notes it, so the gRPC server and the batchers are stopped below too.
        for stop_signal in (signal.SIGINT, signal.SIGTERM):
            signal.signal(stop_signal, lambda number, frame: log.info("stopping on %s", signal.Signals(number).name))
        server.run()
    finally:
        if grpc_server is not None:
            grpc_server.stop(DRAIN_SECONDS).wait()
        store.close()
        print("server stopped", file=sys.stderr, flush=True)
