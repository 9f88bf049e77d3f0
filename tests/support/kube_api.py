"""A Kubernetes API server for tests, reduced to what a worker calls on its own pod: GET and PATCH
`/api/v1/namespaces/{namespace}/pods/{name}`. Strategic-merge patches of `metadata.annotations` are
recorded and applied; any other patch type gets 415, a wrong bearer token 401. It can answer 403 to
everything (no RBAC), or hold PATCH replies until the test releases them (a patch in flight)."""

from __future__ import annotations

import json
import re
import select
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

STRATEGIC_MERGE = "application/strategic-merge-patch+json"
POD_PATH = re.compile(r"^/api/v1/namespaces/(?P<namespace>[^/]+)/pods/(?P<name>[^/?]+)(\?.*)?$")
TOKEN = "test-service-account-token"
HOLD_LIMIT_S = 60.0  # a held reply goes out after this even if the test never released it


@dataclass(frozen=True)
class Patch:
    """One PATCH the server received: when, its body as sent, and whether the client was still there
    to read the reply (False: the worker went away with the request in flight)."""

    at: float
    pod: str
    content_type: str
    body: dict[str, Any]
    client_waited: bool


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    """A `Status` object, as the API server answers a failed call."""
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": reason, "code": code}


def write_kubeconfig(path: Path, server: str, token: str = TOKEN) -> Path:
    """A kubeconfig whose current context talks to `server` with a bearer token."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": server}}],
        "users": [{"name": "worker", "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "worker"}}],
        "current-context": "test",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def client_hung_up(sock: socket.socket) -> bool:
    """The peer closed its end (readable, and reading returns nothing) or reset it."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


class FakeKubeApi:
    """Pods by name in one namespace; `annotations(name)` is what the pod carries now."""

    def __init__(self, namespace: str, pods: dict[str, dict[str, str]], port: int = 0) -> None:
        self.namespace = namespace
        self.pods = {name: {"annotations": dict(annotations)} for name, annotations in pods.items()}
        self.patches: list[Patch] = []
        self.requests = 0
        self.forbidden = False
        self.holding = threading.Event()  # set: PATCH replies wait for `release`
        self.release = threading.Event()
        self._lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                api._answer(self, "GET")

            def do_PATCH(self) -> None:
                api._answer(self, "PATCH")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, name="fake-kube-api", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def annotations(self, name: str) -> dict[str, str]:
        with self._lock:
            return dict(self.pods[name]["annotations"])

    def _pod(self, name: str) -> dict[str, Any]:
        meta = {"name": name, "namespace": self.namespace, "annotations": dict(self.pods[name]["annotations"])}
        return {"kind": "Pod", "apiVersion": "v1", "metadata": meta}

    def _answer(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        body = handler.rfile.read(int(handler.headers.get("Content-Length", "0")))
        with self._lock:
            self.requests += 1
        match = POD_PATH.match(handler.path)
        if handler.headers.get("Authorization") != f"Bearer {TOKEN}":
            code, reply = 401, status_body(401, "Unauthorized", "Unauthorized")
        elif self.forbidden:
            code, reply = 403, status_body(403, "Forbidden", f"{handler.path}: pods is forbidden for this ServiceAccount")
        elif match is None or match["namespace"] != self.namespace or match["name"] not in self.pods:
            code, reply = 404, status_body(404, "NotFound", f"{handler.path} not found")
        elif method == "GET":
            with self._lock:
                code, reply = 200, self._pod(match["name"])
        else:
            code, reply = self._patch(handler, match["name"], body)
        payload = json.dumps(reply).encode()
        handler.send_response(code)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    def _patch(self, handler: BaseHTTPRequestHandler, name: str, body: bytes) -> tuple[int, dict[str, Any]]:
        arrived = time.monotonic()
        content_type = handler.headers.get("Content-Type", "")
        if content_type != STRATEGIC_MERGE:
            return 415, status_body(415, "UnsupportedMediaType", f"{content_type} is not what this fake applies")
        patch = json.loads(body)
        if self.holding.is_set():
            self.release.wait(HOLD_LIMIT_S)
        waited = not client_hung_up(handler.connection)
        with self._lock:
            self.patches.append(Patch(arrived, name, content_type, patch, waited))
            annotations = self.pods[name]["annotations"]
            for key, value in (patch.get("metadata", {}).get("annotations") or {}).items():
                if value is None:  # strategic merge: null deletes the key
                    annotations.pop(key, None)
                else:
                    annotations[key] = value
            return 200, self._pod(name)

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
