"""A local stand-in for the Hugging Face hub: the endpoints ``huggingface_hub`` calls to read a dataset
repository, found in its code (``HfApi.repo_info``, ``list_repo_tree``, ``get_paths_info``,
``hf_hub_download``'s HEAD and GET, ``HfFileSystem``'s ranged GETs), answered from repositories held in
memory, with the headers the client reads (``X-Repo-Commit``, ``ETag``, ``X-Error-Code``).

    with HubServer() as hub:
        sha = hub.commit("org/data", {"d.zarr/zarr.json": b"..."})   # a commit on main; returns its hash
        monkeypatch.setenv("HF_ENDPOINT", hub.url)

Writing, as ``HfApi.create_commit`` does it for small files: ``validate-yaml`` (a root README.md),
``preupload`` (every file answered "regular": its bytes travel in the commit), then ``commit`` (NDJSON:
a header, then files added as base64 or deleted), refused with 412 when its ``parentCommit`` is not the
branch's head any more, and with 401 when ``hub.token`` is set and the request does not carry it.

``hub.requests`` lists (method, path) of every request, so a test can see what the client asked for.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import re
import threading
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit


class _Repo:
    def __init__(self):
        self.refs: dict[str, str] = {}
        self.commits: dict[str, dict[str, bytes]] = {}

    def files_at(self, revision: str) -> dict[str, bytes] | None:
        sha = self.refs.get(revision, revision)
        return self.commits.get(sha)


def _entry(path: str, data: bytes | None) -> dict:
    if data is None:
        return {"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0, "path": path}
    return {"type": "file", "oid": hashlib.sha1(data).hexdigest(), "size": len(data), "path": path}


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # headers and body go out as two writes: on a kept-alive connection Nagle's algorithm holds the second
    # until the client's delayed ACK, 40 ms a request (the hub tests took 4x longer)
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    # ----- answers ------------------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, value, status: int = 200):
        self._send(status, json.dumps(value).encode(), {"Content-Type": "application/json"})

    def _error(self, status: int, code: str, message: str, head: bool = False):
        headers = {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"}
        self._send(status, json.dumps({"error": message}).encode(), headers, head)

    def _repo_and_files(self, repo_id: str, revision: str, head: bool = False):
        repo = self.server.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", f"Repository Not Found for url: {repo_id}", head)
            return None, None
        files = repo.files_at(revision)
        if files is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head)
            return None, None
        return repo, files

    # ----- routes -------------------------------------------------------------------------------------------
    def _route(self, method: str):
        url = urlsplit(self.path)
        self.server.requests.append((method, url.path))
        query = parse_qs(url.query)
        if m := re.fullmatch(r"/api/datasets/([^/]+/[^/]+)(?:/revision/([^/]+))?", url.path):
            return self._repo_info(m[1], unquote(m[2] or "main"))
        if m := re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", url.path):
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            return self._tree(m[1], unquote(m[2]), unquote(m[3] or "").strip("/"), recursive)
        if m := re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/paths-info/([^/]+)", url.path):
            return self._paths_info(m[1], unquote(m[2]))
        if m := re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/preupload/([^/]+)", url.path):
            return self._preupload(m[1], unquote(m[2]))
        if m := re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/commit/([^/]+)", url.path):
            return self._commit(m[1], unquote(m[2]))
        if url.path == "/api/validate-yaml":
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            return self._json({"errors": [], "warnings": []})
        if m := re.fullmatch(r"/datasets/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", url.path):
            return self._resolve(m[1], unquote(m[2]), unquote(m[3]), head=method == "HEAD")
        self._error(404, "NotFound", f"no route {url.path}", head=method == "HEAD")

    def _repo_info(self, repo_id: str, revision: str):
        repo, files = self._repo_and_files(repo_id, revision)
        if files is not None:
            sha = repo.refs.get(revision, revision)
            siblings = [{"rfilename": p} for p in sorted(files)]
            self._json({"id": repo_id, "sha": sha, "private": False, "siblings": siblings, "tags": [],
                        "lastModified": "2026-12-01T00:00:00.000Z", "downloads": 0, "likes": 0})  # fmt: skip

    def _listing(self, files: dict[str, bytes], path: str, recursive: bool) -> list[dict] | None:
        prefix = f"{path}/" if path else ""
        below = {p: d for p, d in files.items() if p.startswith(prefix)}
        if path and not below:
            return None
        entries, folders = [], set()
        for p, data in sorted(below.items()):
            rel = p[len(prefix) :].split("/")
            for depth in range(1, len(rel)):
                folder = prefix + "/".join(rel[:depth])
                if (recursive or depth == 1) and folder not in folders:
                    folders.add(folder)
                    entries.append(_entry(folder, None))
            if recursive or len(rel) == 1:
                entries.append(_entry(p, data))
        return entries

    def _tree(self, repo_id: str, revision: str, path: str, recursive: bool):
        _, files = self._repo_and_files(repo_id, revision)
        if files is not None:
            entries = self._listing(files, path, recursive)
            if entries is None:
                return self._error(404, "EntryNotFound", f"{path} does not exist on {revision}")
            self._json(entries)

    def _paths_info(self, repo_id: str, revision: str):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        try:
            paths = json.loads(body).get("paths", [])
        except ValueError:
            paths = parse_qs(body).get("paths", [])
        _, files = self._repo_and_files(repo_id, revision)
        if files is not None:
            out = []
            for p in paths:
                p = p.strip("/")
                if p in files:
                    out.append(_entry(p, files[p]))
                elif any(f.startswith(p + "/") for f in files):
                    out.append(_entry(p, None))
            self._json(out)

    def _resolve(self, repo_id: str, revision: str, path: str, head: bool):
        repo, files = self._repo_and_files(repo_id, revision, head)
        if files is None:
            return None
        sha = repo.refs.get(revision, revision)
        if path not in files:
            return self._error(404, "EntryNotFound", f"{path} does not exist on {revision}", head)
        data = files[path]
        headers = {"X-Repo-Commit": sha, "ETag": f'"{hashlib.sha1(data).hexdigest()}"', "Accept-Ranges": "bytes"}
        if self.server.faults.get(path) == "500":
            return self._send(500, b"", {"X-Error-Message": "injected"}, head)
        if (rng := self.headers.get("Range")) and (m := re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())):
            start, end = int(m[1]), int(m[2]) if m[2] else len(data) - 1
            part = data[start : end + 1]
            headers["Content-Range"] = f"bytes {start}-{start + len(part) - 1}/{len(data)}"
            return self._send(206, part, headers, head)
        return self._send(200, data, headers, head)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _authorised(self) -> bool:
        token = self.server.owner.token
        if token is None or self.headers.get("Authorization") == f"Bearer {token}":
            return True
        self._error(401, "Unauthorized", "Invalid credentials in Authorization header")
        return False

    def _preupload(self, repo_id: str, revision: str):
        files = json.loads(self._body()).get("files", [])
        if self._authorised() and self._repo_and_files(repo_id, revision)[1] is not None:
            self._json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})

    def _commit(self, repo_id: str, branch: str):
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        if not self._authorised():
            return None
        repo, files = self._repo_and_files(repo_id, branch)
        if files is None:
            return None
        header = next((x["value"] for x in lines if x["key"] == "header"), {})
        if header.get("parentCommit") not in (None, repo.refs[branch]):
            return self._error(412, "PreconditionFailed", "A commit has happened since. Please refresh and try again.")
        tree = dict(files)
        for item in lines:
            if item["key"] == "file":
                tree[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            elif item["key"] == "deletedFile":
                tree.pop(item["value"]["path"], None)
            elif item["key"] == "deletedFolder":
                folder = item["value"]["path"].rstrip("/") + "/"
                tree = {p: d for p, d in tree.items() if not p.startswith(folder)}
            elif item["key"] != "header":
                return self._error(400, "BadRequest", f"the stand-in does not take {item['key']!r} operations")
        sha = self.server.owner.commit(repo_id, tree, branch=branch, replace=True)
        self._json({"commitUrl": f"{self.server.owner.url}/datasets/{repo_id}/commit/{sha}", "commitOid": sha,
                    "pullRequestUrl": None})  # fmt: skip

    def do_GET(self):
        self._route("GET")

    def do_HEAD(self):
        self._route("HEAD")

    def do_POST(self):
        self._route("POST")


class HubServer:
    def __init__(self):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.repos = self.repos = {}
        self.httpd.requests = self.requests = []
        self.httpd.faults = self.faults = {}
        self.httpd.owner = self
        self.token: str | None = None  # set: commits must carry it
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def commit(self, repo_id: str, files: dict[str, bytes], *, branch: str = "main", replace: bool = False) -> str:
        """A new commit on ``branch`` adding (or, with ``replace``, holding only) ``files``; its hash."""
        repo = self.repos.setdefault(repo_id, _Repo())
        before = {} if replace or branch not in repo.refs else repo.commits[repo.refs[branch]]
        tree = {**before, **files}
        sha = hashlib.sha1(repr(sorted((p, hashlib.sha1(d).hexdigest()) for p, d in tree.items())).encode()
                           + str(len(repo.commits)).encode()).hexdigest()  # fmt: skip
        repo.commits[sha] = tree
        repo.refs[branch] = sha
        return sha

    @staticmethod
    def folder(folder: Path, prefix: str) -> dict[str, bytes]:
        """Every file under ``folder`` as repository paths below ``prefix``."""
        return {
            f"{prefix}/{p.relative_to(folder).as_posix()}": p.read_bytes() for p in folder.rglob("*") if p.is_file()
        }

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
