"""Fault injectors made of real sockets: a closed port, and a tiny stdlib HTTP server that answers 503,
hangs past the client's timeout, or fails a few times and then answers.

They stand in for a vendor, a DVC remote or an MLflow server that is down; the client code under test
is the real one (label-studio-sdk / httpx, DVC / aiohttp, MLflow / requests).
"""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


def closed_port() -> int:
    """A port nothing listens on: bound once to get a free number, then closed (connect → refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class FaultServer:
    url: str
    requests: list[str] = field(default_factory=list)  # "METHOD /path" of every request received


@contextmanager
def fault_server(mode: str, *, failures: int = 0, status: int = 503, body: bytes = b"",
                 content_type: str = "application/json") -> Iterator[FaultServer]:
    """`mode`: "error" (every request answered with `status`, 503 by default), "hang" (never answers
    until the server stops), or "flaky" (`failures` answers of 503, then 200 with `body`)."""
    stop = threading.Event()
    seen: list[str] = []
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            self._drain_body()
            with lock:
                seen.append(f"{self.command} {self.path}")
                number = len(seen)
            if mode == "hang":
                stop.wait(60)  # longer than any client timeout used in the tests; ends when the server stops
                return
            if mode == "error":
                self._answer(status, b'{"detail": "injected fault"}', "application/json")
                return
            if mode == "flaky" and number <= failures:
                self._answer(503, b'{"detail": "service unavailable (injected)"}', "application/json")
                return
            self._answer(200, body, content_type)

        def _drain_body(self) -> None:
            """Read the request body (sized or chunked), so the client sees our answer, not a broken pipe."""
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    self.rfile.read(size + 2)  # the chunk and its CRLF
                    if size == 0:
                        return
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)

        def _answer(self, status: int, payload: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_HEAD = do_PATCH = do_DELETE = _serve

        def log_message(self, format: str, *args: object) -> None:  # keep test output clean
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield FaultServer(f"http://127.0.0.1:{server.server_address[1]}", seen)
    finally:
        stop.set()
        server.shutdown()
        server.server_close()



@contextmanager
def lossy_proxy(upstream: str, lose: Callable[[str, str], bool]) -> Iterator[FaultServer]:
    """A forwarding proxy to `upstream` that, for a request where `lose(method, path)` is true (once),
    forwards it — the server does the work — and then answers 503 instead of the real answer: the
    client cannot tell whether its write happened, the worst case for a retry."""
    import http.client
    from urllib.parse import urlparse

    target = urlparse(upstream)
    seen: list[str] = []
    lost: list[str] = []
    lock = threading.Lock()
    hop_by_hop = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection", "upgrade"}

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in hop_by_hop | {"host"}}
            upstream_conn = http.client.HTTPConnection(target.hostname, target.port, timeout=120)
            try:
                upstream_conn.request(self.command, self.path, body=body, headers=headers)
                response = upstream_conn.getresponse()
                payload = response.read()
            finally:
                upstream_conn.close()
            with lock:
                seen.append(f"{self.command} {self.path}")
                drop = not lost and lose(self.command, self.path)
                if drop:
                    lost.append(f"{self.command} {self.path}")
            if drop:
                payload, status, kept = b'{"detail": "injected: answer lost after the work was done"}', 503, []
            else:
                status = response.status
                kept = [(k, v) for k, v in response.getheaders() if k.lower() not in hop_by_hop]
            self.send_response(status)
            for key, value in kept:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield FaultServer(f"http://127.0.0.1:{server.server_address[1]}", seen)
    finally:
        server.shutdown()
        server.server_close()
