"""A stand-in for the Hugging Face Hub's HTTP API on 127.0.0.1, for offline tests of push/pull.

`StandinHub` is a `http.server` in a daemon thread (ephemeral port, loopback only, HTTP/1.0: one
request per connection) that answers the requests huggingface_hub's real client makes for the calls
glmbot uses. State lives in memory: repos of model type, each with commits (full file snapshots),
branches and tags; `requests` logs every (method, path).

Implemented (paths as huggingface_hub 2.x builds them; revisions URL-quoted):

    POST /api/repos/create                          create_repo (409 with the url if it exists; a new repo
                                                    gets an initial commit holding .gitattributes, as on the Hub)
    POST /api/validate-yaml                         the card check create_commit runs on README.md
    POST /api/models/{repo}/preupload/{rev}         answers uploadMode "regular" for every file, with the
                                                    git blob oid of the file at {rev} (so unchanged files
                                                    are skipped, as on the Hub)
    POST /api/models/{repo}/commit/{rev}            the NDJSON commit: "header", "file" (base64),
                                                    "deletedFile"; "lfsFile" is refused (400)
    POST /api/models/{repo}/branch/{branch}         create_branch (409 if it exists)
    POST /api/models/{repo}/tag/{rev}               create_tag (409 if it exists)
    GET  /api/models/{repo}[/revision/{rev}]        model_info / repo_info: id, sha, siblings, private, gated
    GET  /api/models/{repo}/tree/{rev}[/{path}]     list_repo_tree, one page, files only
    HEAD|GET /{repo}/resolve/{rev}/{path}           file download with ETag (git blob sha1), X-Repo-Commit,
                                                    Content-Length
    GET  /api/agent-harnesses                       an empty registry (the client fetches it once per process
                                                    to name AI agents in its user agent)

Auth works like the Hub's: `Authorization: Bearer <token>`; an unknown token gets 401 "Invalid
credentials in Authorization header" (optionally echoing the header, as a careless proxy might,
so tests can check that glmbot never repeats it); writing needs a token whose namespaces include
the repo's (else 403); a private repo is 404 RepoNotFound to anyone else; a gated repo is
403 GatedRepo to tokens not in its `approved` set. Missing repos: 404 X-Error-Code RepoNotFound;
missing revisions: 404 RevisionNotFound; missing files: 404 EntryNotFound (with X-Repo-Commit).

Not implemented (the client never needs them here, since every file goes as "regular"): the LFS
batch API, Xet storage and its token routes, pull requests, datasets/spaces, pagination, refs
listing, whoami, repo deletion, `expand`/`blobs` details, redirects. Any other request gets 404
and is kept in `unhandled` so a test can assert it never happened.

Why hf_xet stays out: the client uploads through Xet (or LFS) only the files that preupload marks
"lfs", and downloads through Xet only when the HEAD answer carries X-Xet-Hash; this server does
neither, so every byte goes through the plain HTTP routes above.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob: what the Hub reports as a regular file's oid and ETag."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    oid: str
    parent: str | None
    files: dict[str, bytes]
    message: str


@dataclass
class Repo:
    repo_id: str
    private: bool = False
    gated: bool = False
    approved: set[str] = field(default_factory=set)  # tokens granted access to a gated repo
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit oid
    tags: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        oid = self.branches.get(revision) or self.tags.get(revision)
        if oid is None and revision in self.commits:
            oid = revision
        return self.commits.get(oid) if oid else None


class HubError(Exception):
    """An error answer: status, X-Error-Code, message."""

    def __init__(self, status: int, code: str | None, message: str, commit: str | None = None, **body):
        super().__init__(message)
        self.status, self.code, self.message, self.commit, self.body = status, code, message, commit, body


class StandinHub:
    """The in-memory Hub; `start()` serves it on 127.0.0.1, `url` is what HF_ENDPOINT should be."""

    def __init__(self, tokens: dict[str, set[str]] | None = None, echo_auth_in_errors: bool = False):
        self.tokens = dict(tokens or {})  # token -> namespaces it may write to
        self.echo_auth_in_errors = echo_auth_in_errors
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request
        self.unhandled: list[tuple[str, str]] = []
        self.commit_keys: list[str] = []  # the "key" of every NDJSON line committed
        self._lock = threading.Lock()
        self._counter = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> StandinHub:
        hub = self

        class Handler(_Handler):
            standin = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="standin-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=10)
            self._server = None

    # ---- direct state access for tests ----------------------------------------------------------

    def seed(self, repo_id: str, files: dict[str, bytes], *, private: bool = False, gated: bool = False,
             message: str = "seed") -> str:
        """Create `repo_id` holding `files` on main; returns the commit oid."""
        with self._lock:
            repo = self._create(repo_id, private)
            repo.gated = gated
            return self._commit(repo, "main", {**repo.resolve("main").files, **files}, message).oid

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        return dict(self.repos[repo_id].resolve(revision).files)

    def tamper(self, repo_id: str, path: str, data: bytes, revision: str = "main") -> None:
        """Change a stored file in place (a damaged copy on the server), keeping the commit oid."""
        self.repos[repo_id].resolve(revision).files[path] = data

    # ---- the model behind the routes ------------------------------------------------------------

    def _new_oid(self, *parts: str) -> str:
        self._counter += 1
        return hashlib.sha1("\0".join((str(self._counter), *parts)).encode()).hexdigest()

    def _create(self, repo_id: str, private: bool) -> Repo:
        repo = Repo(repo_id, private=private)
        first = Commit(self._new_oid(repo_id, "initial"), None, {".gitattributes": b"*.safetensors filter=lfs\n"},
                       "initial commit")
        repo.commits[first.oid], repo.branches["main"] = first, first.oid
        self.repos[repo_id] = repo
        return repo

    def _commit(self, repo: Repo, branch: str, files: dict[str, bytes], message: str) -> Commit:
        parent = repo.branches[branch]
        commit = Commit(self._new_oid(parent, message, *sorted(files)), parent, files, message)
        repo.commits[commit.oid], repo.branches[branch] = commit, commit.oid
        return commit

    def _token(self, headers) -> str | None:  # noqa: ANN001 - http.client.HTTPMessage
        auth = headers.get("Authorization")
        if not auth:
            return None
        token = auth.removeprefix("Bearer ").strip()
        if token not in self.tokens:
            echo = f" (got Authorization: {auth})" if self.echo_auth_in_errors else ""
            raise HubError(401, None, "Invalid credentials in Authorization header" + echo)
        return token

    def _readable(self, repo_id: str, token: str | None) -> Repo:
        repo = self.repos.get(repo_id)
        namespace = repo_id.split("/")[0]
        if repo is None or (repo.private and (token is None or namespace not in self.tokens[token])):
            raise HubError(404, "RepoNotFound", f"Repository not found: {repo_id}")
        if repo.gated and token not in repo.approved and (token is None or namespace not in self.tokens[token]):
            raise HubError(403, "GatedRepo", f"Access to model {repo_id} is restricted and you are not in the "
                                             "authorized list.")
        return repo

    def _writable(self, repo_id: str, token: str | None) -> Repo:
        if token is None:
            raise HubError(401, None, "You must be authenticated to write to a repo")
        repo = self._readable(repo_id, token)
        if repo_id.split("/")[0] not in self.tokens[token]:
            raise HubError(403, None, f"You don't have the rights to write to {repo_id}")
        return repo

    def _revision(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return commit


class _Handler(BaseHTTPRequestHandler):
    standin: StandinHub
    server_version = "standin-hub/1"

    def log_message(self, format, *args) -> None:  # noqa: A002 - quiet test output
        pass

    # ---- plumbing -------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        hub = self.standin
        split = urlsplit(self.path)
        parts = [unquote(p) for p in split.path.split("/")[1:]]
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else b""
        with hub._lock:
            hub.requests.append((method, split.path))
            try:
                token = hub._token(self.headers)
                answer = self._route(method, parts, parse_qs(split.query), body, token)
            except HubError as err:
                return self._error(err, head=method == "HEAD")
        if answer is None:
            hub.unhandled.append((method, split.path))
            return self._error(HubError(404, None, f"stand-in Hub does not implement {method} {split.path}"),
                               head=method == "HEAD")
        status, payload, headers = answer
        self._send(status, payload, headers, head=method == "HEAD")

    def _send(self, status: int, payload: object, headers: dict | None = None, head: bool = False) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream" if isinstance(payload, bytes)
                         else "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def _error(self, err: HubError, head: bool = False) -> None:
        headers = {"X-Error-Message": err.message}
        if err.code:
            headers["X-Error-Code"] = err.code
        if err.commit:
            headers["X-Repo-Commit"] = err.commit
        self._send(err.status, {"error": err.message, **err.body}, headers, head=head)

    # ---- routes ---------------------------------------------------------------------------------

    def _route(self, method: str, parts: list[str], query: dict, body: bytes, token: str | None):
        if parts[:1] == ["api"]:
            if method == "POST" and parts[1:] == ["repos", "create"]:
                return self._create_repo(json.loads(body), token)
            if method == "POST" and parts[1:] == ["validate-yaml"]:
                return self._validate_yaml(json.loads(body))
            if method == "GET" and parts[1:] == ["agent-harnesses"]:
                return 200, {"standardEnvVars": [], "harnesses": {}}, {}  # user-agent detection: nothing to detect
            if len(parts) >= 4 and parts[1] == "models":
                return self._model_api(method, "/".join(parts[2:4]), parts[4:], body, token)
            return None
        if method in ("GET", "HEAD") and len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve("/".join(parts[:2]), parts[3], "/".join(parts[4:]), token)
        return None

    def _model_api(self, method: str, repo_id: str, rest: list[str], body: bytes, token: str | None):
        hub = self.standin
        if method == "GET" and (not rest or rest[0] == "revision"):
            repo = hub._readable(repo_id, token)
            commit = hub._revision(repo, rest[1] if len(rest) > 1 else "main")
            return 200, {"id": repo_id, "sha": commit.oid, "private": repo.private, "gated": repo.gated,
                         "siblings": [{"rfilename": name} for name in sorted(commit.files)]}, {}
        if method == "GET" and rest[:1] == ["tree"] and len(rest) >= 2:
            commit = hub._revision(hub._readable(repo_id, token), rest[1])
            under = "/".join(rest[2:])
            return 200, [{"type": "file", "path": name, "size": len(data), "oid": git_blob_sha1(data)}
                         for name, data in sorted(commit.files.items())
                         if not under or name.startswith(under + "/")], {}
        if method != "POST" or len(rest) != 2:
            return None
        action, revision = rest
        repo = hub._writable(repo_id, token)
        request = body if action == "commit" else json.loads(body or b"{}")
        if action == "preupload":
            files = hub._revision(repo, revision).files
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                                    "oid": git_blob_sha1(files[f["path"]]) if f["path"] in files else None}
                                   for f in request["files"]]}, {}
        if action == "commit":
            return self._commit(repo, revision, request)
        if action == "branch":
            if revision in repo.branches:
                raise HubError(409, None, f"Branch {revision} already exists")
            repo.branches[revision] = hub._revision(repo, request.get("startingPoint") or "main").oid
            return 200, {}, {}
        if action == "tag":
            if request["tag"] in repo.tags:
                raise HubError(409, None, f"Tag {request['tag']} already exists")
            repo.tags[request["tag"]] = hub._revision(repo, revision).oid
            return 200, {}, {}
        return None

    def _create_repo(self, request: dict, token: str | None):
        hub = self.standin
        repo_id = f"{request['organization']}/{request['name']}"
        if token is None:
            raise HubError(401, None, "You must be authenticated to create a repo")
        if request["organization"] not in hub.tokens[token]:
            raise HubError(403, None, f"You don't have the rights to create a model under the namespace "
                                      f"\"{request['organization']}\"")
        if repo_id in hub.repos:  # the Hub's 409 carries the url too (create_repo(exist_ok=True) reads it)
            raise HubError(409, None, "You already created this model repo", url=f"{hub.url}/{repo_id}")
        hub._create(repo_id, request.get("visibility") == "private")
        return 200, {"url": f"{hub.url}/{repo_id}", "name": repo_id}, {}

    def _validate_yaml(self, request: dict):
        content = request["content"]
        if content.startswith("---"):
            try:
                yaml.safe_load(content.split("---")[1])
            except yaml.YAMLError as exc:
                return 400, {"errors": [{"message": str(exc)}], "warnings": []}, {}
        return 200, {"errors": [], "warnings": []}, {}

    def _commit(self, repo: Repo, branch: str, body: bytes):
        hub = self.standin
        if branch not in repo.branches:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {branch}")
        files, message = dict(repo.resolve(branch).files), ""
        for line in body.splitlines():
            item = json.loads(line)
            hub.commit_keys.append(item["key"])
            value = item["value"]
            if item["key"] == "header":
                message = value["summary"]
            elif item["key"] == "file" and value.get("encoding") == "base64":
                files[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "deletedFile":
                files.pop(value["path"], None)
            else:
                raise HubError(400, None, f"stand-in Hub accepts only regular (base64) files, got {item['key']!r}")
        commit = hub._commit(repo, branch, files, message)
        return 200, {"commitUrl": f"{hub.url}/{repo.repo_id}/commit/{commit.oid}", "commitOid": commit.oid,
                     "pullRequestUrl": None}, {}

    def _resolve(self, repo_id: str, revision: str, path: str, token: str | None):
        hub = self.standin
        commit = hub._revision(hub._readable(repo_id, token), revision)
        if path not in commit.files:
            raise HubError(404, "EntryNotFound", f"{path} does not exist on {revision}", commit=commit.oid)
        data = commit.files[path]
        return 200, data, {"ETag": f'"{git_blob_sha1(data)}"', "X-Repo-Commit": commit.oid}
