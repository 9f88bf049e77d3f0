"""Who is calling: bearer tokens from AUTH_TOKENS_FILE, re-read when the file changes.

File format, one principal per line: `<name> <role> <token>`, role `client` or `admin`, token either the
secret itself or `sha256:<hex>` of it (so the Secret need not hold plaintext). Blank lines and `#`
comments are allowed. Presented tokens are hashed and compared with every entry in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import HTTPConnection

from api.errors import HTTPProblem
from jobqueue.protocol import ANONYMOUS

log = logging.getLogger("asyncinfer.api")
ROLES = ("client", "admin")
RELOAD_CHECK_S = 1.0  # how often the file's mtime is looked at
PRINCIPAL_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
BEARER = "bearer "


@dataclass(frozen=True)
class Principal:
    name: str
    role: str

    @property
    def admin(self) -> bool:
        return self.role == "admin"


# Authentication off: every caller is one anonymous admin (the local stack's default).
OPEN_ACCESS = Principal(ANONYMOUS, "admin")


class TokensFileError(ValueError):
    """A line of AUTH_TOKENS_FILE is malformed; the message names the line."""


def parse_tokens(text: str) -> list[tuple[bytes, Principal]]:
    """(sha256 digest of the token, principal) per line."""
    entries: list[tuple[bytes, Principal]] = []
    names: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 3:
            raise TokensFileError(f"line {number}: expected '<name> <role> <token>'")
        name, role, token = parts
        if not PRINCIPAL_NAME.match(name) or name == ANONYMOUS:
            raise TokensFileError(f"line {number}: bad principal name {name!r}")
        if role not in ROLES:
            raise TokensFileError(f"line {number}: role must be one of {ROLES}, got {role!r}")
        if name in names:
            raise TokensFileError(f"line {number}: principal {name!r} appears twice")
        names.add(name)
        if token.startswith("sha256:"):
            try:
                digest = bytes.fromhex(token[len("sha256:") :])
            except ValueError:
                raise TokensFileError(f"line {number}: sha256: must be followed by 64 hex digits") from None
            if len(digest) != 32:
                raise TokensFileError(f"line {number}: sha256: must be followed by 64 hex digits")
        else:
            if len(token) < 16:
                raise TokensFileError(f"line {number}: tokens must be at least 16 characters")
            digest = hashlib.sha256(token.encode()).digest()
        entries.append((digest, Principal(name, role)))
    return entries


class TokenFile:
    """The principals of AUTH_TOKENS_FILE; a changed file takes effect within RELOAD_CHECK_S.
    A file that became unreadable or malformed keeps the last good set (and logs why)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._entries: list[tuple[bytes, Principal]] = []
        self._stamp: tuple[float, int, int] | None = None
        self._checked = 0.0
        self._reload(force=True)
        if not self._entries:
            log.warning("AUTH_TOKENS_FILE %s lists no principals: every request will be refused", path)

    def _reload(self, force: bool = False) -> None:
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime, st.st_size, st.st_ino)
            if stamp == self._stamp and not force:
                return
            entries = parse_tokens(self.path.read_text())
        except (OSError, TokensFileError) as exc:
            if force:
                raise
            log.error("AUTH_TOKENS_FILE %s not reloaded (%s); keeping the previous tokens", self.path, exc)
            return
        self._entries, self._stamp = entries, stamp
        log.info("loaded %d principal(s) from AUTH_TOKENS_FILE", len(entries))

    def lookup(self, token: str) -> Principal | None:
        now = time.monotonic()
        if now - self._checked >= RELOAD_CHECK_S:
            self._checked = now
            self._reload()
        digest = hashlib.sha256(token.encode()).digest()
        found = None
        for known, principal in self._entries:  # no early exit: the same work for every token
            if hmac.compare_digest(known, digest):
                found = principal
        return found


def unauthorized(message: str) -> HTTPProblem:
    return HTTPProblem(401, message, {"WWW-Authenticate": 'Bearer realm="asyncinfer"'})


def authenticate(tokens: TokenFile | None, authorization: str | None) -> Principal:
    """The caller for an Authorization header value; 401 when missing or unknown."""
    if tokens is None:
        return OPEN_ACCESS
    if not authorization or not authorization[: len(BEARER)].lower() == BEARER:
        raise unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    principal = tokens.lookup(authorization[len(BEARER) :].strip())
    if principal is None:
        raise unauthorized("invalid bearer token")
    return principal


async def principal(connection: HTTPConnection) -> Principal:
    """FastAPI dependency: the authenticated caller (HTTP or WebSocket)."""
    state = connection.app.state.asyncinfer
    return authenticate(state.tokens, connection.headers.get("authorization"))


async def admin(connection: HTTPConnection) -> Principal:
    """FastAPI dependency: the caller, who must be an admin (403 otherwise)."""
    caller = await principal(connection)
    if not caller.admin:
        raise HTTPProblem(403, "this operation needs an admin token")
    return caller
