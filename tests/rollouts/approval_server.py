"""A real HTTP approval endpoint on a free local port for the tests: it records each
POST and answers as told (allow, deny, hang past the time-out, garbage, ...)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Approver:
    url: str
    mode: str = "allow"
    reason: str = "change board ok"
    posts: list[dict[str, Any]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)


def _handler(state: Approver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n)
            try:
                state.posts.append(json.loads(raw))
            except ValueError:
                state.posts.append({"unparsed": raw.decode("utf-8", "replace")})
            mode = state.mode
            if mode in ("allow", "deny"):
                body = json.dumps({"decision": mode, "reason": state.reason}).encode()
                self._send(200, body, {"Content-Type": "application/json"})
            elif mode == "hang":
                state.release.wait(30)
                self._send(200, b'{"decision": "allow"}')
            elif mode == "drip":  # headers at once, then the body a byte at a time
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                for _ in range(1000):
                    if state.release.wait(0.05):
                        return
                    self.wfile.write(b" ")
                    self.wfile.flush()
            elif mode == "garbage":
                self._send(200, b"\xff\xfe<html>not json")
            elif mode == "not-an-object":
                self._send(200, b'["allow"]')
            elif mode == "huge":
                pad = "x" * (200 * 1024)
                self._send(200, json.dumps({"decision": "allow", "reason": pad}).encode())
            elif mode == "redirect":
                self._send(302, b"", {"Location": "http://127.0.0.1:9/allow"})
            elif mode == "bad-status":  # not HTTP at all
                self.wfile.write(b"NOT HTTP AT ALL\r\n\r\n")
                self.close_connection = True
            elif mode == "headers":  # one header line longer than any client reads
                self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Pad: " + b"x" * 100_000 + b"\r\n\r\n")
                self.close_connection = True
            elif mode == "error":
                self._send(500, b"boom")
            else:
                raise AssertionError(mode)

    return Handler


@contextmanager
def approval_server(mode: str = "allow") -> Iterator[Approver]:
    state = Approver(url="", mode=mode)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}/approve"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()
        thread.join(10)
