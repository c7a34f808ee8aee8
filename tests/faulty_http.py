"""A local HTTP server over a folder that misbehaves on request: the remote tests' stand-in for a real
server having a bad day (and benchmarks/hostile.py's).

    with FaultyServer(folder) as server:
        server.faults["d.zarr/steps/obs/c/0/0/0"] = "500"   # that file answers HTTP 500
        url = server.url + "/d.zarr"

Faults, by the path below the folder (a glob): ``missing`` (404), ``500``, ``cut`` (the headers promise
the whole file, half of it is sent, then the connection closes) and ``hang`` (the request is accepted and
never answered, until the server closes); ``KIND*N`` (``500*2``) misbehaves on the first N requests of a
path and then serves it. ``server.requests`` counts the requests per path.
"""

from __future__ import annotations

import fnmatch
import functools
import http.server
import threading
from collections import Counter


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _fault(self) -> str | None:
        path = self.path.split("?", 1)[0].lstrip("/")
        self.server.requests[path] += 1
        kind = next((kind for glob, kind in self.server.faults.items() if fnmatch.fnmatch(path, glob)), None)
        if kind and "*" in kind:  # the first N requests only
            kind, times = kind.split("*")
            return kind if self.server.requests[path] <= int(times) else None
        return kind

    def do_GET(self):
        fault = self._fault()
        if fault is None:
            return super().do_GET()
        if fault == "missing":
            return self.send_error(404)
        if fault == "500":
            return self.send_error(500)
        if fault == "hang":
            self.server.closing.wait(600)
            return None
        if fault == "cut":
            f = self.send_head()
            if f is not None:
                with f:
                    data = f.read()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
            self.close_connection = True
            return None
        raise ValueError(f"unknown fault {fault!r}")

    def do_HEAD(self):
        fault = self._fault()
        if fault in ("missing", "500"):
            return self.send_error(404 if fault == "missing" else 500)
        if fault == "hang":
            self.server.closing.wait(600)
            return None
        return super().do_HEAD()


class FaultyServer:
    def __init__(self, root):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
        self.httpd.daemon_threads = True
        self.httpd.faults = self.faults = {}
        self.httpd.requests = self.requests = Counter()
        self.httpd.closing = threading.Event()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> FaultyServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
