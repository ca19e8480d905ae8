"""A local HTTP double of the Hugging Face hub endpoints that ``HfApi`` uses for an upload.

Just what create_repo / create_branch / upload_folder / create_tag send (found by logging
the requests huggingface_hub makes): ``POST /api/repos/create``, ``/api/validate-yaml``,
``/api/models/{repo}/branch/{b}``, ``/preupload/{rev}`` (every file "regular", so the
contents travel inline in the commit), ``/commit/{rev}`` (ndjson) and ``/tag/{rev}``.
Anything else answers 404 and is logged in ``unknown``.  Failures can be injected per
endpoint: a status for the next N calls, or a delay (a request that times out).

Point huggingface_hub at it with ``HF_ENDPOINT=double.url`` (read at import: set it in the
environment of the process that uploads).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


@dataclass
class Fault:
    endpoint: str  # create | branch | preupload | commit | tag | validate
    status: int = 500
    times: int = 1
    delay_s: float = 0.0  # > the client's timeout: the request times out


@dataclass
class Repo:
    private: bool
    branches: dict[str, list[dict]] = field(default_factory=lambda: {"main": []})
    files: dict[str, dict[str, bytes]] = field(default_factory=lambda: {"main": {}})
    tags: dict[str, str] = field(default_factory=dict)


_ROUTE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/(?P<what>branch|preupload|commit|tag)/(?P<rev>.+)$")


class HubDouble:
    def __init__(self, token: str = "hf_test_token") -> None:
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status), once answered
        self.arrived: list[tuple[str, str]] = []  # (method, path), as they come in
        self.unknown: list[str] = []
        self.faults: list[Fault] = []
        self.auth_headers: list[str] = []
        self.lock = threading.Lock()
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                double._handle(self, "GET")

            def do_POST(self) -> None:
                double._handle(self, "POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> HubDouble:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def inject(self, endpoint: str, status: int = 500, times: int = 1, delay_s: float = 0.0) -> None:
        with self.lock:
            self.faults.append(Fault(endpoint, status, times, delay_s))

    def commits(self, repo: str, branch: str) -> list[dict]:
        with self.lock:
            r = self.repos.get(repo)
            return list(r.branches.get(branch, [])) if r else []

    def count(self, endpoint: str) -> int:
        with self.lock:
            return sum(1 for _, path in self.arrived if _endpoint(path) == endpoint)

    # -- serving ------------------------------------------------------------------------------
    def _fault(self, endpoint: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.endpoint == endpoint and fault.times > 0:
                    fault.times -= 1
                    return fault
        return None

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        path = unquote(urlparse(h.path).path)
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        endpoint = _endpoint(path)
        auth = h.headers.get("Authorization", "")
        with self.lock:
            self.auth_headers.append(auth)
            self.arrived.append((method, path))
        fault = self._fault(endpoint)
        if fault is not None:
            if fault.delay_s:
                time.sleep(fault.delay_s)
            status, payload = fault.status, {"error": f"injected failure on {endpoint}"}
        elif auth != f"Bearer {self.token}":
            status, payload = 401, {"error": "Invalid credentials in Authorization header"}
        else:
            try:
                status, payload = self._route(method, path, body)
            except Exception as error:  # a bug in the double: make it loud
                status, payload = 599, {"error": f"double crashed: {error!r}"}
        with self.lock:
            self.requests.append((method, path, status))
        data = json.dumps(payload).encode()
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
            pass

    def _route(self, method: str, path: str, body: bytes) -> tuple[int, object]:
        if method == "POST" and path == "/api/validate-yaml":
            return 200, {"errors": [], "warnings": []}
        if method == "POST" and path == "/api/repos/create":
            req = json.loads(body)
            repo_id = f"{req.get('organization')}/{req['name']}"
            with self.lock:
                if repo_id in self.repos:
                    return 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}
                self.repos[repo_id] = Repo(private=req.get("visibility") == "private" or bool(req.get("private")))
            return 200, {"url": f"{self.url}/{repo_id}", "name": repo_id}
        m = _ROUTE.match(path)
        if method != "POST" or m is None:
            with self.lock:
                self.unknown.append(f"{method} {path}")
            return 404, {"error": f"double: no route for {method} {path}"}
        repo_id, what, rev = m["repo"], m["what"], m["rev"]
        with self.lock:
            repo = self.repos.get(repo_id)
            if repo is None:
                return 404, {"error": "Repository not found"}
            if what == "branch":
                if rev in repo.branches:
                    return 409, {"error": f"Reference already exists: refs/heads/{rev}"}
                start = json.loads(body or b"{}").get("startingPoint") or "main"
                repo.branches[rev] = list(repo.branches.get(start, []))
                repo.files[rev] = dict(repo.files.get(start, {}))
                return 200, {}
            if what == "preupload":
                files = json.loads(body)["files"]
                return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
            if what == "commit":
                if rev not in repo.branches:
                    return 404, {"error": f"Invalid rev id: {rev}"}
                lines = [json.loads(line) for line in body.splitlines() if line.strip()]
                header = next(line["value"] for line in lines if line["key"] == "header")
                added = {}
                for line in lines:
                    if line["key"] == "file":
                        value = line["value"]
                        added[value["path"]] = base64.b64decode(value["content"])
                oid = hashlib.sha1(body + str(len(repo.branches[rev])).encode()).hexdigest()
                repo.branches[rev].append({"oid": oid, "summary": header.get("summary", ""), "files": sorted(added)})
                repo.files[rev].update(added)
                return 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None}
            if what == "tag":
                tag = json.loads(body)["tag"]
                if tag in repo.tags:
                    return 409, {"error": f"Tag {tag} already exists"}
                repo.tags[tag] = rev
                return 200, {}
        return 404, {}


def _endpoint(path: str) -> str:
    if path == "/api/repos/create":
        return "create"
    if path == "/api/validate-yaml":
        return "validate"
    m = _ROUTE.match(path)
    return m["what"] if m else "other"
