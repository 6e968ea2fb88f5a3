"""A local stand-in for the Hugging Face Hub API (127.0.0.1), for the sharing tests.

Implements exactly the endpoints huggingface_hub 2.x calls for a push and a download:
``GET /api/whoami-v2``, ``POST /api/repos/create``, ``GET /api/{models,datasets}/{id}[/revision/R]``,
``GET .../tree/R``, ``POST /api/validate-yaml``, ``POST .../preupload/R`` (every file "regular",
so contents travel base64 inside the commit), ``POST .../commit/R`` (NDJSON) and
``HEAD/GET /[datasets/]{id}/resolve/R/PATH`` with ETag, X-Repo-Commit and Content-Length.
Errors carry the Hub's X-Error-Code headers (RepoNotFound, EntryNotFound), so huggingface_hub
raises the same exception classes it raises against the real Hub.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse


def git_hash(data: bytes) -> str:
    return hashlib.sha1(b"blob " + str(len(data)).encode() + b"\0" + data).hexdigest()


@dataclass
class Token:
    user: str
    role: str = "write"              # write | read | fineGrained
    orgs: list[str] = field(default_factory=list)
    can_write: bool = True           # a fine-grained token may lack write access


@dataclass
class Repo:
    repo_id: str
    repo_type: str
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[dict] = field(default_factory=list)
    sha: str = "0" * 40


class HubState:
    def __init__(self):
        self.tokens: dict[str, Token] = {}
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[dict] = []   # method, path, authorized (never the header value)
        self.lock = threading.Lock()


_API_REPO = re.compile(r"^/api/(models|datasets)/([^/]+/[^/]+)(/.*)?$")
_RESOLVE = re.compile(r"^/(datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


class Handler(BaseHTTPRequestHandler):
    state: HubState
    server_version = "hub-standin"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # keep test output quiet
        pass

    # ---- helpers --------------------------------------------------------------------------
    def _token(self) -> Token | None:
        auth = self.headers.get("Authorization") or ""
        if auth.startswith("Bearer "):
            return self.state.tokens.get(auth[7:].strip(), Token(user="", role="invalid"))
        return None

    def _send(self, code: int, body=None, headers: dict | None = None, head: bool = False):
        data = b"" if body is None else (body if isinstance(body, bytes)
                                          else json.dumps(body).encode())
        self.send_response(code)
        ctype = "application/octet-stream" if isinstance(body, bytes) else "application/json"
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def _err(self, code: int, msg: str, error_code: str | None = None, head: bool = False):
        h = {"X-Error-Message": msg}
        if error_code:
            h["X-Error-Code"] = error_code
        self._send(code, {"error": msg}, h, head=head)

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _record(self):
        self.state.requests.append({"method": self.command, "path": self.path,
                                    "authorized": "Authorization" in self.headers})

    def _can_read(self, repo: Repo, tok: Token | None) -> bool:
        if not repo.private:
            return True
        ns = repo.repo_id.split("/")[0]
        return tok is not None and tok.role != "invalid" and (tok.user == ns or ns in tok.orgs)

    def _repo_or_error(self, rtype: str, rid: str, tok: Token | None, head=False) -> Repo | None:
        if tok is not None and tok.role == "invalid":
            self._err(401, "Invalid credentials in Authorization header", head=head)
            return None
        repo = self.state.repos.get((rtype, rid))
        if repo is None or not self._can_read(repo, tok):
            self._err(401 if tok is None else 404, "Repository not found", "RepoNotFound", head=head)
            return None
        return repo

    def _base(self) -> str:
        return f"http://{self.headers.get('Host')}"

    # ---- verbs ----------------------------------------------------------------------------
    def do_GET(self):
        self._record()
        self._dispatch(head=False)

    def do_HEAD(self):
        self._record()
        self._dispatch(head=True)

    def do_POST(self):
        self._record()
        body = self._body()
        path = urlparse(self.path).path
        tok = self._token()
        with self.state.lock:
            if path == "/api/repos/create":
                return self._create(json.loads(body or b"{}"), tok)
            if path == "/api/validate-yaml":
                return self._validate_yaml(json.loads(body or b"{}"))
            m = _API_REPO.match(path)
            if m and m.group(3):
                rtype, rid, rest = m.group(1)[:-1], unquote(m.group(2)), m.group(3)
                if rest.startswith("/preupload/"):
                    return self._preupload(rtype, rid, json.loads(body or b"{}"), tok)
                if rest.startswith("/commit/"):
                    return self._commit(rtype, rid, body, tok)
        self._err(404, f"no route {path}")

    def _dispatch(self, head: bool):
        url = urlparse(self.path)
        path = url.path
        tok = self._token()
        with self.state.lock:
            if path == "/api/whoami-v2":
                if tok is None or tok.role == "invalid":
                    return self._err(401, "Invalid credentials in Authorization header", head=head)
                return self._send(200, {"type": "user", "name": tok.user,
                                        "orgs": [{"name": o} for o in tok.orgs],
                                        "auth": {"type": "access_token",
                                                 "accessToken": {"displayName": "test",
                                                                 "role": tok.role}}}, head=head)
            m = _RESOLVE.match(path)
            if m:
                rtype = "dataset" if m.group(1) else "model"
                return self._resolve(rtype, unquote(m.group(2)), unquote(m.group(4)), tok, head)
            m = _API_REPO.match(path)
            if m:
                rtype, rid, rest = m.group(1)[:-1], unquote(m.group(2)), m.group(3) or ""
                repo = self._repo_or_error(rtype, rid, tok, head)
                if repo is None:
                    return None
                if rest.startswith("/tree/"):
                    q = parse_qs(url.query)
                    prefix = unquote(rest.split("/", 3)[3]) + "/" if rest.count("/") >= 3 else ""
                    recursive = (q.get("recursive") or ["False"])[0].lower() == "true"
                    items = [{"type": "file", "path": p, "size": len(d), "oid": git_hash(d)}
                             for p, d in sorted(repo.files.items()) if p.startswith(prefix)
                             and (recursive or "/" not in p[len(prefix):])]
                    return self._send(200, items, head=head)
                if rest == "" or rest.startswith("/revision/"):
                    return self._send(200, {
                        "id": rid, "_id": rid, "private": repo.private, "sha": repo.sha,
                        "siblings": [{"rfilename": p} for p in sorted(repo.files)],
                        "tags": [], "downloads": 0, "likes": 0}, head=head)
        self._err(404, f"no route {path}", head=head)

    # ---- endpoints ------------------------------------------------------------------------
    def _create(self, payload: dict, tok: Token | None):
        if tok is None or tok.role == "invalid":
            return self._err(401, "Invalid credentials in Authorization header")
        ns = payload.get("organization") or tok.user
        rid = f"{ns}/{payload['name']}"
        rtype = payload.get("type") or "model"
        prefix = "datasets/" if rtype == "dataset" else ""
        url = f"{self._base()}/{prefix}{rid}"
        if tok.role == "read" or not tok.can_write or (ns != tok.user and ns not in tok.orgs):
            return self._err(403, f"You don't have the rights to create a {rtype} under the "
                                  f"namespace \"{ns}\"")
        if (rtype, rid) in self.state.repos:
            return self._send(409, {"error": "You already created this repo", "url": url})
        self.state.repos[(rtype, rid)] = Repo(rid, rtype, payload.get("visibility") == "private")
        return self._send(200, {"url": url, "name": rid})

    def _validate_yaml(self, payload: dict):
        import yaml

        content = payload.get("content", "")
        m = re.match(r"\A---\s*\n(.*?)\n---", content, re.DOTALL)
        try:
            if m:
                yaml.safe_load(m.group(1))
        except yaml.YAMLError as exc:
            return self._send(400, {"errors": [{"message": str(exc)}]})
        return self._send(200, {"errors": [], "warnings": []})

    def _writable(self, rtype: str, rid: str, tok: Token | None) -> Repo | None:
        repo = self._repo_or_error(rtype, rid, tok)
        if repo is None:
            return None
        ns = rid.split("/")[0]
        if tok is None or tok.role == "read" or not tok.can_write or \
                (tok.user != ns and ns not in tok.orgs):
            self._err(403, "You don't have the rights to write to this repo")
            return None
        return repo

    def _preupload(self, rtype: str, rid: str, payload: dict, tok: Token | None):
        repo = self._writable(rtype, rid, tok)
        if repo is None:
            return None
        files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                  "oid": git_hash(repo.files[f["path"]]) if f["path"] in repo.files else None}
                 for f in payload.get("files", [])]
        return self._send(200, {"files": files, "commitOid": repo.sha})

    def _commit(self, rtype: str, rid: str, body: bytes, tok: Token | None):
        repo = self._writable(rtype, rid, tok)
        if repo is None:
            return None
        header, changes = None, {}
        for line in body.decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                if value.get("encoding") != "base64":
                    return self._err(400, "only base64 files are supported")
                changes[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                changes[value["path"]] = None
            else:
                return self._err(400, f"unsupported commit operation {key}")
        if header is None:
            return self._err(400, "missing commit header")
        for p, d in changes.items():
            if d is None:
                repo.files.pop(p, None)
            else:
                repo.files[p] = d
        repo.sha = hashlib.sha1(f"{repo.sha}{len(repo.commits)}{sorted(changes)}".encode()).hexdigest()
        repo.commits.append({"summary": header.get("summary"), "files": sorted(changes),
                             "oid": repo.sha})
        prefix = "datasets/" if rtype == "dataset" else ""
        return self._send(200, {"commitUrl": f"{self._base()}/{prefix}{rid}/commit/{repo.sha}",
                                "commitOid": repo.sha, "success": True})

    def _resolve(self, rtype: str, rid: str, fname: str, tok: Token | None, head: bool):
        repo = self._repo_or_error(rtype, rid, tok, head)
        if repo is None:
            return None
        data = repo.files.get(fname)
        if data is None:
            return self._err(404, "Entry not found", "EntryNotFound", head=head)
        headers = {"ETag": f'"{git_hash(data)}"', "X-Repo-Commit": repo.sha}
        return self._send(200, data, headers, head=head)


class HubStandIn:
    """Start with ``HubStandIn()``; ``.url`` is the endpoint; ``.stop()`` shuts it down."""

    def __init__(self):
        self.state = HubState()
        handler = type("BoundHandler", (Handler,), {"state": self.state})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def add_token(self, token: str, user: str, **kw) -> None:
        self.state.tokens[token] = Token(user=user, **kw)

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo | None:
        return self.state.repos.get((repo_type, repo_id))

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@contextmanager
def online_standin(monkeypatch, tmp_path: Path):
    """A stand-in Hub with huggingface_hub pointed at it and online, no token and no login, for
    one test (``monkeypatch`` undoes the settings)."""
    import huggingface_hub.constants as c

    server = HubStandIn()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(c, "HF_TOKEN_PATH", str(tmp_path / "no-login" / "token"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    try:
        yield server
    finally:
        server.stop()
