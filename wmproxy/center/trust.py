"""Certificates without a CA for the center link: a pair generated per install, and the peer's
certificate pinned on first use (SSH's known_hosts way).

The Rust wmproxy embeds one certificate pair, private key included, and uses it wherever TLS is
on without certificate files. Shipping a key would let anyone impersonate any install; instead:

- ``cert = "auto"`` / ``key = "auto"`` (what its ``ts``/``tc``/``two_way_tls`` become without
  files): the pair in ``state_dir`` (``identity.pem``, ``identity.key``: made on first start,
  EC P-256, the key 0600, the directory 0700).
- a client with ``ca = "pin"`` takes the server's certificate on first use and pins its SHA-256
  in ``state_dir/known_servers`` (one line per server address); a later different one is
  refused with an error naming that file and line.
- a server with ``client_ca = "pin"`` asks every client for a certificate: a client it has not
  pinned yet enrolls once (its certificate sent in TOKEN, bound to its password proof), is
  pinned in ``state_dir/known_clients`` per account (and client id), and links again presenting
  it; a client without a certificate, or with another one, is refused.

Weaker than a CA: whoever answers first is believed. docs/MIGRATING.md says how to set up a CA.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import logging
import os
import socket
import ssl
import threading
from typing import TYPE_CHECKING, Optional

from ..net.certstore import write_private

if TYPE_CHECKING:
    from ..config import CenterConfig

log = logging.getLogger("wmproxy")

IDENTITY_CERT = "identity.pem"
IDENTITY_KEY = "identity.key"
KNOWN_SERVERS = "known_servers"
KNOWN_CLIENTS = "known_clients"
MAX_PINS = 10000  # clients a server pins (client_ca = "pin")
WEAKER = ("trust on first use is weaker than a CA: to verify with one, give [center] ca (client) and client_ca "
          "(server) a CA file, and cert/key a pair it signed")

_lock = threading.Lock()  # (a master and its workers share no memory: files are written whole, then renamed)


SYSTEM_STATE_DIR = "/var/lib/wmproxy"


def default_state_dir() -> str:
    """systemd's $STATE_DIRECTORY, else /var/lib/wmproxy for root or a user who may write there
    (`make install` makes it the service user's), else $XDG_STATE_HOME/wmproxy
    (~/.local/state/wmproxy)."""
    given = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if given:
        return given
    if os.geteuid() == 0 or os.access(SYSTEM_STATE_DIR, os.W_OK | os.X_OK):
        return SYSTEM_STATE_DIR
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "wmproxy")


def fingerprint(der: bytes) -> str:
    return "sha256:" + hashlib.sha256(der).hexdigest()


def identity(state_dir: str) -> tuple[str, str]:
    """The paths of this install's certificate and key, made on first use. Raises OSError."""
    cert, key = os.path.join(state_dir, IDENTITY_CERT), os.path.join(state_dir, IDENTITY_KEY)
    with _lock:
        if os.path.exists(cert) and os.path.exists(key):
            return cert, key
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        cert_pem, key_pem = _generate(socket.gethostname() or "wmproxy")
        write_private(key, key_pem, 0o600)  # (each a new file of a random name, renamed: never through a
        write_private(cert, cert_pem, 0o644)  # link someone put in the folder)
    log.warning("center: made this install's certificate %s (key %s, mode 0600), %s; %s", cert, key,
                fingerprint(_der(cert_pem)), WEAKER)
    return cert, key


def _generate(name: str) -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"wmproxy {name}"[:64])])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            # a CA of itself, so that OpenSSL takes it as the trust anchor of a peer that pinned it
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def _der(pem: bytes) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem.decode("ascii"))


def identity_der(state_dir: str) -> bytes:
    with open(identity(state_dir)[0], "rb") as f:
        return _der(f.read())


class PinMismatch(Exception):
    """A peer presented another certificate than the one pinned for it."""


class KnownPeers:
    """A pin file: lines ``NAME sha256:HEX [base64 DER]`` (the certificate itself where the
    server needs it as a trust anchor); ``#`` comments. Read again whenever it changed (its
    mtime and size): an operator's edit (a line deleted after a planned change) takes effect at
    once, and a handshake costs a stat, not a read of up to MAX_PINS lines."""

    def __init__(self, path: str, what: str) -> None:
        self.path = path
        self.what = what  # "center server" / "center client"
        self._seen: Optional[tuple[int, int]] = None  # (mtime_ns, size) of the file last read
        self._entries: dict[str, tuple[str, Optional[bytes]]] = {}

    def entries(self) -> dict[str, tuple[str, Optional[bytes]]]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._seen, self._entries = None, {}
            return self._entries
        if self._seen == (st.st_mtime_ns, st.st_size):
            return self._entries
        out: dict[str, tuple[str, Optional[bytes]]] = {}
        try:
            with open(self.path, encoding="ascii", errors="replace") as f:
                for line in f:
                    words = line.split()
                    if len(words) >= 2 and not words[0].startswith("#") and words[1].startswith("sha256:"):
                        der = None
                        if len(words) >= 3:
                            try:
                                der = base64.b64decode(words[2], validate=True)
                            except ValueError:
                                der = None
                        out[words[0]] = (words[1], der)
        except FileNotFoundError:
            out = {}
        self._seen, self._entries = (st.st_mtime_ns, st.st_size), out
        return out

    def pinned(self, name: str) -> Optional[str]:
        got = self.entries().get(name)
        return got[0] if got else None

    def check(self, name: str, der: bytes, keep_der: bool = False) -> bool:
        """Pin ``der`` for ``name`` if none is; True when it was pinned just now. Raises
        PinMismatch naming the file when another certificate is pinned for ``name``."""
        seen = fingerprint(der)
        with _lock:
            pinned = self.pinned(name)
            if pinned == seen:
                return False
            if pinned is not None:
                raise PinMismatch(f"the {self.what} {name} presented the certificate {seen}, but {self.path} pins "
                                  f"{pinned} for it: if its certificate changed on purpose, delete the line "
                                  f"'{name} ...' from {self.path}; else someone else is answering in its place")
            os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
            line = f"{name} {seen}" + (f" {base64.b64encode(der).decode()}" if keep_der else "") + "\n"
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, line.encode("ascii"))
            finally:
                os.close(fd)
        log.warning("center: pinned the certificate of %s %s on first use: %s, in %s (%s)", self.what, name, seen,
                    self.path, WEAKER)
        return True

    def anchors(self) -> list[bytes]:
        """The pinned certificates kept whole (a server's trust anchors for its clients)."""
        return [der for _, der in self.entries().values() if der]


def _pair(cfg: "CenterConfig") -> tuple[str, str]:
    """cert and key, or this install's pair for "auto". Raises ConfigError naming state_dir."""
    if cfg.cert != "auto":
        return cfg.cert, cfg.key
    try:
        return identity(cfg.state_path)
    except OSError as e:
        from ..errors import ConfigError

        raise ConfigError("", "center.state_dir", f"cannot make this install's certificate in {cfg.state_path}: "
                          f"{e.strerror or e} (set state_dir to a directory this user may write)") from None


class ClientTrust:
    """A center client's TLS: its contexts (with its certificate, and without it to enroll
    with a server that pins them), and the server pins of ``ca = "pin"``."""

    def __init__(self, cfg: "CenterConfig") -> None:
        from ..net.tls import client_context

        self.pins = KnownPeers(os.path.join(cfg.state_path, KNOWN_SERVERS), "center server") \
            if cfg.ca == "pin" else None
        self.auto = cfg.cert == "auto"
        cert, key = _pair(cfg) if cfg.cert else ("", "")
        ca = "" if self.pins is not None else cfg.ca

        def make(cert: str, key: str) -> ssl.SSLContext:
            ctx = client_context(ca, cert, key)
            if self.pins is not None:  # (the pin is the check: any certificate, then its digest compared)
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            return ctx

        self.ctx = make(cert, key)
        self.bare = make("", "") if self.auto else None  # to enroll: no certificate in TLS
        self.der = identity_der(cfg.state_path) if self.auto else None  # (made by _pair above)

    def wrap(self, sock: socket.socket, server_name: str, pin_as: str, present: bool) -> ssl.SSLSocket:
        """TLS on ``sock``; with ``ca = "pin"`` the server's certificate checked against its
        pin (``pin_as``: its address). Raises ssl.SSLError, OSError, PinMismatch."""
        ctx = self.ctx if present or self.bare is None else self.bare
        tls = ctx.wrap_socket(sock, server_hostname=server_name)
        if self.pins is not None:
            der = tls.getpeercert(binary_form=True)
            if not der:
                raise PinMismatch(f"the center server {pin_as} presented no certificate")
            self.pins.check(pin_as, der)
        return tls


class ServerTrust:
    """A center server's TLS context, and the client pins of ``client_ca = "pin"``: a client
    certificate is asked for and checked against its pinned anchors (CERT_OPTIONAL: a client
    not enrolled yet links without one, to enroll)."""

    def __init__(self, cfg: "CenterConfig") -> None:
        from ..net.tls import server_context

        cert, key = _pair(cfg)
        self.pins = KnownPeers(os.path.join(cfg.state_path, KNOWN_CLIENTS), "center client") \
            if cfg.client_ca == "pin" else None
        self.ssl = server_context(cert, key, "" if self.pins is not None else cfg.client_ca)
        self._anchored: set[str] = set()
        self._seen = -1.0
        if self.pins is not None:
            self.ssl.verify_mode = ssl.CERT_OPTIONAL
            self.ssl.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
            self.refresh()

    def refresh(self) -> None:
        """Take the pins written since (by this process, another worker, or an operator's
        edit: removed pins stay trusted by TLS until a reload, but no longer match any name)."""
        if self.pins is None:
            return
        try:
            mtime = os.stat(self.pins.path).st_mtime
        except FileNotFoundError:
            return
        if mtime == self._seen:
            return
        self._seen = mtime
        for der in self.pins.anchors():
            seen = fingerprint(der)
            if seen not in self._anchored:
                try:
                    self.ssl.load_verify_locations(cadata=der)
                except ssl.SSLError as e:
                    log.warning("center: a pinned client certificate in %s cannot be used: %s", self.pins.path, e)
                self._anchored.add(seen)

    def check(self, name: str, presented: Optional[bytes], offered: Optional[bytes]) -> None:
        """The handshake's CertCheck (center.handshake). At most MAX_PINS clients are pinned
        (an account-less server lets anyone enroll: the file and the trust store stay bounded)."""
        from .handshake import AuthFailed, Enrolled

        assert self.pins is not None
        known = self.pins.entries()
        if name not in known and len(known) >= MAX_PINS:
            raise AuthFailed(f"{MAX_PINS} clients are pinned in {self.pins.path} already: remove the lines of "
                             f"clients that are gone to pin new ones")
        try:
            if presented is not None:
                self.pins.check(name, presented, keep_der=True)
                return
            if offered is None:
                raise AuthFailed("a client certificate is required here (two_way_tls): this client has none")
            self.pins.check(name, offered, keep_der=True)
        except PinMismatch as e:
            raise AuthFailed(str(e)) from None
        self.refresh()
        raise Enrolled(f"the certificate of client {name} is pinned: it links again presenting it")
