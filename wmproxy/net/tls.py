"""TLS contexts for the center link, with errors that say which file is wrong.

Server: its certificate and key, and with ``client_ca`` required client certificates (mutual
TLS). Client: verifies the server against ``ca`` (or the system store) and a server name;
with ``cert``/``key`` it presents its own certificate.
"""

from __future__ import annotations

import os
import ssl
from typing import Callable

from ..errors import ConfigError


def _load_chain(ctx: ssl.SSLContext, cert: str, key: str, what: str, key_what: str = "") -> None:
    """Load ``cert`` and ``key`` (config keys ``what`` and ``key_what``: the error names the
    file that is missing and its key, which ssl's own error does not)."""
    try:
        ctx.load_cert_chain(cert, key)
    except FileNotFoundError:
        if os.path.exists(cert) and key:
            raise ConfigError("", key_what or what, f"cannot read {key}: no such file") from None
        raise ConfigError("", what, f"cannot read {cert}: no such file") from None
    except (ssl.SSLError, OSError) as e:
        raise ConfigError("", what, f"cannot load certificate {cert} with key {key}: {e}") from None


def _load_ca(ctx: ssl.SSLContext, ca: str, what: str) -> None:
    try:
        ctx.load_verify_locations(cafile=ca)
    except FileNotFoundError:
        raise ConfigError("", what, f"cannot read {ca}: no such file") from None
    except (ssl.SSLError, OSError) as e:
        raise ConfigError("", what, f"cannot load CA file {ca}: {e}") from None


def server_context(cert: str, key: str, client_ca: str = "") -> ssl.SSLContext:
    """Raises ConfigError naming center.cert / center.client_ca."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(ctx, cert, key, "center.cert", "center.key")
    if client_ca:
        _load_ca(ctx, client_ca, "center.client_ca")
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(ca: str = "", cert: str = "", key: str = "", ca_key: str = "center.ca") -> ssl.SSLContext:
    """Verifying client context (hostname checked by the caller's server_hostname).
    Raises ConfigError naming ``ca_key`` (the config key of ``ca``) or center.cert."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca:
        _load_ca(ctx, ca, ca_key)
    else:
        ctx.load_default_certs()
    if cert:
        _load_chain(ctx, cert, key, "center.cert", "center.key")
    return ctx


def sni_server_context(pairs: list[tuple[str, str]], keys: list[tuple[str, str]] | None = None,
                       alpn: tuple[str, ...] = (),
                       dynamic: Callable[[str], ssl.SSLContext | None] | None = None) -> ssl.SSLContext:
    """A server context over several certificates: the client's SNI picks the one whose names
    match (exact, then '*.' wildcard), else the first; ``alpn``: the protocols offered, in
    order of preference ("h2", "http/1.1"). ``dynamic(name)``: a context for a name the files
    do not cover, asked at each handshake (ACME's certificates, '' for a client that names
    none): it may change between handshakes. Raises ConfigError naming the config keys of the
    file at fault: ``keys`` (cert key, key key) per pair, else center.map_cert[i] and
    center.map_key[i]."""
    contexts = []
    for i, (cert, key) in enumerate(pairs):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if alpn:  # (on every context: the one SNI picks answers ALPN)
            ctx.set_alpn_protocols(list(alpn))
        what, key_what = keys[i] if keys else (f"center.map_cert[{i}]", f"center.map_key[{i}]")
        _load_chain(ctx, cert, key, what, key_what)
        contexts.append((_cert_names(cert), ctx))
    if contexts:
        first = contexts[0][1]
    else:  # (certificates come from ``dynamic`` alone: a handshake it has none for fails)
        first = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        first.minimum_version = ssl.TLSVersion.TLSv1_2
        if alpn:
            first.set_alpn_protocols(list(alpn))

    def pick(sslobj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        name = (server_name or "").lower()
        if name:
            for names, ctx in contexts:
                if name in names:
                    sslobj.context = ctx
                    return
        if dynamic is not None:
            found = dynamic(name)
            if found is not None:
                sslobj.context = found
                return
        if name:
            for names, ctx in contexts:
                if any(n.startswith("*.") and name.endswith(n[1:]) and name.count(".") == n.count(".") for n in names):
                    sslobj.context = ctx
                    return

    if len(contexts) > 1 or dynamic is not None:
        first.sni_callback = pick
    return first


def _cert_names(path: str) -> set[str]:
    """DNS names of a PEM certificate (subjectAltName, else the common name)."""
    try:
        info = ssl._ssl._test_decode_cert(path)  # type: ignore[attr-defined]  # the stdlib's own PEM decoder
    except (ssl.SSLError, OSError, AttributeError):
        return set()
    names = {value.lower() for kind, value in info.get("subjectAltName", ()) if kind == "DNS"}
    if not names:
        names = {value.lower() for rdn in info.get("subject", ()) for key, value in rdn if key == "commonName"}
    return names
