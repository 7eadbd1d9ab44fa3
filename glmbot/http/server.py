"""Running an app with uvicorn: in the foreground (`glmbot serve`) or on a background thread.

    run_server(app, "127.0.0.1", 8000)          # until Ctrl-C / SIGTERM
    with ServerThread(app) as server:           # tests, benchmarks, notebooks; port 0 = a free port
        server.url
"""

from __future__ import annotations

import errno
import socket
import threading
import time
from typing import Any

import uvicorn
from fastapi import FastAPI

from glmbot.errors import ConfigError
from glmbot.http.auth import check_bind


def check_port(host: str, port: int) -> None:
    """Refuse a port another program already listens on, before minutes of model loading (uvicorn
    would find out only after the model is loaded and its banner printed)."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot bind host {host!r}: {exc.strerror}; pass --host 127.0.0.1 or a local "
                          "address of this machine") from None
    # Every address the name gives, as asyncio's create_server (uvicorn's) binds them all: "localhost"
    # is 127.0.0.1 and ::1.
    for family, kind, proto, _, address in dict.fromkeys(infos):
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio: a closing socket does not count
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    free = port + 1 if port < 65535 else 8000
                    raise ConfigError(f"port {port} on {host} is already in use (another glmbot serve?); pass "
                                      f"--port with a free one, e.g. --port {free}, or stop the other server") from None
                raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}; pass another --host or "
                                  "--port") from None


def server_config(app: FastAPI, host: str, port: int, **kwargs: Any) -> uvicorn.Config:
    """uvicorn's config for `app`; refuses a non-loopback host when the app has no API keys."""
    check_bind(host, app.state.api_keys)
    kwargs.setdefault("log_level", "info")
    kwargs.setdefault("timeout_graceful_shutdown", 10)
    return uvicorn.Config(app, host=host, port=port, **kwargs)


def run_server(app: FastAPI, host: str, port: int, **kwargs: Any) -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM)."""
    uvicorn.Server(server_config(app, host, port, **kwargs)).run()


class ServerThread:
    """uvicorn on a background thread (tests, benchmarks, notebooks); port 0 = a free port.

        with ServerThread(app) as server:
            openai.OpenAI(base_url=server.url + "/v1", api_key="-")
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, **kwargs: Any):
        kwargs.setdefault("log_level", "warning")
        self.server = uvicorn.Server(server_config(app, host, port, **kwargs))
        self.host = host
        self._thread = threading.Thread(target=self.server.run, name="glmbot-http", daemon=True)

    @property
    def port(self) -> int:
        return self.server.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 30.0) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP server did not start on {self.host} (port taken, or see the log)")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
