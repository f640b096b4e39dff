"""Run the rating app under waitress (a production WSGI server: threaded, bounded requests).

:class:`RatingServer` binds at construction (so port 0 picks a free port and ``url`` is known
at once), serves in the foreground (`sumrl human serve`) or in a background thread (tests), and
stops cleanly: the event loop runs in short slices and checks a stop flag between them, because
waitress's own ``run()`` only returns once every keep-alive connection has gone away.
"""

from __future__ import annotations

import ipaddress
import threading
from dataclasses import dataclass
from pathlib import Path

from sumrl.config import opt
from sumrl.errors import ConfigError, SumrlError


@dataclass
class HumanServeConfig:
    """``sumrl human serve``."""

    db: str = opt("", help="study database made by `sumrl human create`")
    host: str = opt("127.0.0.1", help="address to bind; anything but loopback exposes the app to the network")
    port: int = opt(8765, help="TCP port (0 = any free port)")
    threads: int = opt(8, help="worker threads of the web server")
    public_origin: list[str] = opt(default_factory=list, help="origin(s) raters' browsers use, e.g. "
                                   "https://rate.example.org behind a TLS proxy; submissions from any other Origin "
                                   "are refused (always allowed: the study's --base-url and the address served)")

    def validate(self) -> None:
        if not self.db:
            raise ConfigError("--db is required")
        bad = [o for o in self.public_origin if not o.startswith(("http://", "https://"))]
        if bad:
            raise ConfigError(f"--public-origin must start with http:// or https://, got {bad[0]!r}")
        if not 0 <= self.port <= 65535:
            raise ConfigError("--port must be between 0 and 65535")
        if self.threads < 1:
            raise ConfigError("--threads must be >= 1")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RatingServer:
    def __init__(self, db_path: str | Path, host: str = "127.0.0.1", port: int = 8765, threads: int = 8,
                 public_origins: list[str] | tuple[str, ...] = ()):
        # Flask and waitress are imported here, not at module level: `sumrl --help` imports this
        # module for HumanServeConfig.
        from waitress import wasyncore
        from waitress.server import create_server

        from sumrl.human.app import MAX_BODY_BYTES, create_app

        self._wasyncore = wasyncore
        self._map: dict = {}
        self.app = create_app(db_path, public_origins)
        self.server = create_server(
            self.app, map=self._map, host=host, port=port, threads=threads,
            # Bounded at the server too, before Flask ever sees the body.
            max_request_body_size=MAX_BODY_BYTES * 4, max_request_header_size=64 * 1024,
            channel_timeout=60, ident="sumrl-human")
        self.host = host
        self.port = int(self.server.effective_port)
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}"
        # The address served is a public origin too (both loopback names when bound to loopback).
        from sumrl.human.app import origin_of

        origins = self.app.config["PUBLIC_ORIGINS"]
        origins.add(origin_of(self.url))
        if is_loopback(host):
            origins.update(origin_of(f"http://{h}:{self.port}") for h in ("127.0.0.1", "localhost", "[::1]"))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def serve_forever(self) -> None:
        try:
            while not self._stop.is_set():
                self._wasyncore.loop(timeout=0.1, map=self._map, count=1)
        finally:
            for ch in list(self._map.values()):
                try:
                    ch.close()
                except OSError:
                    pass
            self.server.task_dispatcher.shutdown()

    def start(self) -> "RatingServer":
        self._thread = threading.Thread(target=self.serve_forever, name="sumrl-human-server", daemon=True)
        self._thread.start()
        return self

    def request_stop(self) -> None:
        """Ask the loop to finish (safe from a signal handler: it only sets a flag)."""
        self._stop.set()

    def stop(self) -> None:
        self.request_stop()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> "RatingServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def open_server(cfg: HumanServeConfig) -> RatingServer:
    """A :class:`RatingServer` bound as ``cfg`` says; a port that cannot be bound is one SumrlError line."""
    try:
        return RatingServer(cfg.db, host=cfg.host, port=cfg.port, threads=cfg.threads,
                            public_origins=cfg.public_origin)
    except OSError as e:
        raise SumrlError(f"cannot listen on {cfg.host}:{cfg.port}: {e.strerror or e}") from None


def serve_until_signalled(server: RatingServer) -> None:
    """Serve in the foreground until Ctrl-C or SIGTERM, then close every connection and return.

    The signals only set the stop flag; the loop checks it every 0.1 s. (Relying on
    KeyboardInterrupt surfacing from inside waitress's event loop let a signal that landed at the
    wrong moment go unnoticed.)"""
    import signal

    previous = {}
    if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
        previous = {sig: signal.signal(sig, lambda *_: server.request_stop()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
