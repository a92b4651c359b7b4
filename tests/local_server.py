"""A bounded HTTP server on 127.0.0.1 for tests: serves bytes by path, in the hub's layout when asked.

It answers HEAD and GET (with Range), can cut a response short once to test resuming, records the
requests it saw, and shuts itself down after `lifetime_s` even if a test forgets to.
"""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


@dataclass
class Served:
    """One path's bytes and the headers announcing it (hub files get X-Repo-Commit and an ETag)."""

    data: bytes
    headers: dict[str, str] = field(default_factory=dict)
    cut_once_after: int = 0  # send only this many bytes the first time (0: never cut)
    stall_s: float = 0.0  # wait this long before answering a GET
    trickle_s: float = 0.0  # send the body one byte at a time, this long apart (a server that never quite stalls)
    status: int = 200  # another status (401: a gated hub repository) answers with the headers and no body


class LocalServer:
    """`with LocalServer() as server:` serve `server.files[path] = Served(...)` at `server.url`."""

    def __init__(self, lifetime_s: float = 120.0) -> None:
        self.files: dict[str, Served] = {}
        self.requests: list[tuple[str, str, str]] = []  # method, path, Range header
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _answer(self, body: bool) -> None:
                owner.requests.append((self.command, self.path, self.headers.get("Range", "")))
                served = owner.files.get(self.path.split("?")[0])
                if served is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if served.status != 200:
                    self.send_response(served.status)
                    for key, value in served.headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data, start = served.data, 0
                ranged = self.headers.get("Range", "")
                if ranged.startswith("bytes=") and body:
                    start = int(ranged[6:].split("-")[0])
                    if start >= len(data):  # as real servers do: nothing past the end
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                self.send_response(206 if start else 200)
                for key, value in served.headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                if not body:
                    return
                if served.stall_s:
                    threading.Event().wait(served.stall_s)
                chunk = data[start:]
                if served.trickle_s:
                    for index in range(len(chunk)):
                        try:
                            self.wfile.write(chunk[index:index + 1])
                            self.wfile.flush()
                        except OSError:  # the client gave up: so do we
                            return
                        threading.Event().wait(served.trickle_s)
                    return
                if served.cut_once_after:
                    chunk, served.cut_once_after = chunk[:served.cut_once_after], 0
                    self.wfile.write(chunk)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(chunk)

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def do_GET(self) -> None:
                self._answer(body=True)

            def do_POST(self) -> None:  # an API endpoint: the request body is read and the served bytes answer it
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self._answer(body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._timer = threading.Timer(lifetime_s, self.stop)
        self._timer.daemon = True

    def serve_hub_file(self, repo: str, filename: str, data: bytes, lfs: bool, etag: str | None = None) -> None:
        """A file at /<repo>/resolve/main/<filename> with the hub's headers (LFS: sha256 ETag, else git sha1).

        `etag=""` leaves the ETag out, as a proxy that drops it would.
        """
        published = etag if etag is not None else (hashlib.sha256(data).hexdigest() if lfs else git_blob_sha1(data))
        headers = {"X-Repo-Commit": HUB_COMMIT, **({"ETag": f'"{published}"'} if published else {})}
        if lfs and published:
            headers["X-Linked-Etag"] = f'"{published}"'
            headers["X-Linked-Size"] = str(len(data))
        self.files[f"/{repo}/resolve/main/{filename}"] = Served(data, headers)

    def __enter__(self) -> "LocalServer":
        self._thread.start()
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._timer.cancel()
        self.server.shutdown()
        self.server.server_close()
