"""Certificates obtained by ACME, and the answers to its challenges, on disk in ``acme_dir``.

The directory is the one truth every process reads (a master's workers too: the one that runs
the ACME client writes, every listener reads), so a certificate renewed, or a challenge to
answer, reaches whichever process a connection lands on::

    acme_dir/                                 (0700)
      accounts/<sha256 of the directory URL>/key.pem, account.json
      certs/<name>/fullchain.pem, key.pem     (the key 0600), state.json (failures, backoff)
      challenges/http-01/<token>              the key authorization, for GET
                                              /.well-known/acme-challenge/<token>
      challenges/tls-alpn-01/<name>.pem       certificate and key answered to a ClientHello
                                              for <name> that offers only ALPN acme-tls/1

Readers take a certificate's SSLContext once and look at the file's time again at most every
REFRESH seconds: a renewal takes effect for new handshakes, live connections keep theirs.
"""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import tempfile
import time
from typing import Any, Optional

from ..errors import ProtocolError
from ..prot.tls import client_hello
from .reader import peek_message
from .writer import close_quietly

REFRESH = 1.0  # seconds between two looks at a certificate file's time
ACME_TLS_ALPN = "acme-tls/1"  # RFC 8737
CHALLENGE_PATH = "/.well-known/acme-challenge/"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,256}$")  # base64url, as RFC 8555 makes them
_NAME = re.compile(r"^[a-z0-9_]([a-z0-9_.-]{0,251}[a-z0-9_])?$")


def safe_name(name: str) -> bool:
    """Whether ``name`` is a host name fit for a file name here (no wildcard, no '/', no '..')."""
    return bool(_NAME.match(name)) and ".." not in name


def write_private(path: str, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` whole or not at all (a temporary file renamed), with ``mode``."""
    folder = os.path.dirname(path)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class CertStore:
    """The files of one ``acme_dir``. Reading never raises: a missing or broken file is None."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._contexts: dict[tuple[str, tuple[str, ...]], tuple[float, int, Optional[ssl.SSLContext]]] = {}
        self._alpn_seen = (0.0, False)  # (looked at, whether challenges/tls-alpn-01 had a file)

    # -- paths --------------------------------------------------------------------------------
    def cert_paths(self, name: str) -> tuple[str, str]:
        folder = os.path.join(self.root, "certs", name)
        return os.path.join(folder, "fullchain.pem"), os.path.join(folder, "key.pem")

    def state_path(self, name: str) -> str:
        return os.path.join(self.root, "certs", name, "state.json")

    def _http_path(self, token: str) -> str:
        return os.path.join(self.root, "challenges", "http-01", token)

    def _alpn_dir(self) -> str:
        return os.path.join(self.root, "challenges", "tls-alpn-01")

    # -- serving (any process) -----------------------------------------------------------------
    def context_for(self, name: str, alpn: tuple[str, ...] = ()) -> Optional[ssl.SSLContext]:
        """The server context of ``name``'s certificate (ALPN ``alpn`` offered), or None while
        it has none. Loaded again when the file changed (looked at every REFRESH seconds)."""
        key = (name, alpn)
        now = time.monotonic()
        known = self._contexts.get(key)
        if known is not None and now - known[0] < REFRESH:
            return known[2]
        chain, private = self.cert_paths(name)
        try:
            stamp = os.stat(chain).st_mtime_ns
        except OSError:
            stamp = 0
        if known is not None and known[1] == stamp:
            self._contexts[key] = (now, stamp, known[2])
            return known[2]
        ctx = _context(chain, private, alpn) if stamp else None
        if ctx is None and stamp and known is not None:  # (caught between the key's and the chain's
            self._contexts[key] = (now, known[1], known[2])  # renaming: the old pair serves, look again)
            return known[2]
        if len(self._contexts) > 10_000:
            self._contexts.clear()
        self._contexts[key] = (now, stamp, ctx)
        return ctx

    def installed(self, name: str) -> None:
        """``name`` has a new certificate: the next handshake loads it (this process)."""
        for key in [k for k in self._contexts if k[0] == name]:
            del self._contexts[key]

    def http_answer(self, token: str) -> Optional[bytes]:
        """The key authorization to answer GET /.well-known/acme-challenge/<token> with, or None."""
        if not _TOKEN.match(token):
            return None
        try:
            with open(self._http_path(token), "rb") as f:
                return f.read(1024)
        except OSError:
            return None

    def alpn_pending(self) -> bool:
        """Whether a TLS-ALPN-01 challenge may be waiting (then ClientHellos are looked at)."""
        now = time.monotonic()
        if now - self._alpn_seen[0] >= 0.2:
            try:
                pending = bool(os.listdir(self._alpn_dir()))
            except OSError:
                pending = False
            self._alpn_seen = (now, pending)
        return self._alpn_seen[1]

    def alpn_context(self, name: str) -> Optional[ssl.SSLContext]:
        """The context answering a TLS-ALPN-01 validation of ``name`` (ALPN acme-tls/1), or None."""
        if not safe_name(name):
            return None
        path = os.path.join(self._alpn_dir(), name + ".pem")
        return _context(path, path, (ACME_TLS_ALPN,)) if os.path.exists(path) else None

    # -- the ACME client's side ------------------------------------------------------------------
    def made(self) -> "CertStore":
        """The directory made if missing (0700: the keys below are the owner's alone)."""
        if not os.path.isdir(self.root):
            os.makedirs(self.root, mode=0o700, exist_ok=True)
            os.chmod(self.root, 0o700)  # (makedirs' mode is cut by the umask)
        return self

    def put_http(self, token: str, answer: bytes) -> None:
        if not _TOKEN.match(token):
            raise ValueError(f"not an ACME token: {token!r}")
        write_private(self.made()._http_path(token), answer, 0o644)

    def drop_http(self, token: str) -> None:
        _unlink(self._http_path(token))

    def put_alpn(self, name: str, pem: bytes) -> None:
        write_private(os.path.join(self.made()._alpn_dir(), name + ".pem"), pem)

    def drop_alpn(self, name: str) -> None:
        _unlink(os.path.join(self._alpn_dir(), name + ".pem"))

    def save_cert(self, name: str, fullchain: bytes, key: bytes) -> None:
        """Install a new certificate (key first: a reader never pairs a new chain with an old key
        for long; each file is replaced whole)."""
        chain, private = self.made().cert_paths(name)
        write_private(private, key)
        write_private(chain, fullchain, 0o644)
        self.installed(name)

    def load_state(self, name: str) -> dict[str, Any]:
        try:
            with open(self.state_path(name)) as f:
                value = json.load(f)
            return value if isinstance(value, dict) else {}
        except (OSError, ValueError):
            return {}

    def forget_state(self, name: str) -> None:
        _unlink(self.state_path(name))

    def save_state(self, name: str, state: dict[str, Any]) -> None:
        write_private(self.made().state_path(name), json.dumps(state, sort_keys=True).encode())


def answer_tls_alpn(sock: socket.socket, store: CertStore, timeout: float) -> bool:
    """Peek at a new connection's ClientHello: when it offers ALPN acme-tls/1 for a name with a
    pending TLS-ALPN-01 challenge, complete that handshake with the validation certificate and
    return True (the caller closes the socket). False: an ordinary client, its bytes untouched.
    Blocks up to ``timeout``; raises PeerClosed, socket.timeout, OSError."""
    try:
        name, alpn = peek_message(sock, client_hello, timeout)
    except ProtocolError:
        return False  # (the TLS handshake says what is wrong with it)
    if ACME_TLS_ALPN not in alpn:
        return False
    ctx = store.alpn_context(name)
    if ctx is None:
        return False
    try:
        tls = ctx.wrap_socket(sock, server_side=True)
    except (ssl.SSLError, OSError):
        return True
    close_quietly(tls)
    return True


def _context(chain: str, private: str, alpn: tuple[str, ...]) -> Optional[ssl.SSLContext]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    try:
        ctx.load_cert_chain(chain, private)
    except (ssl.SSLError, OSError):
        return None  # (half written by another process: the next look loads it)
    return ctx


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
