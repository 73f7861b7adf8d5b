"""What the rest of wmproxy names of an ACME order without importing the ``acme`` library (it and
``requests`` under it add a third of a second to every start; wmproxy.acme.client imports them
when the first order is placed)."""

from __future__ import annotations

from dataclasses import dataclass, field


class AcmeFailure(Exception):
    """An order that did not give a certificate. ``refused``: the directory will not issue this
    name as asked (a wildcard, a refused identifier, CAA): trying again soon cannot help.
    ``retry_after``: seconds the directory asked us to wait (rate limited), else 0."""

    def __init__(self, message: str, refused: bool = False, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.refused = refused
        self.retry_after = retry_after


@dataclass(frozen=True)
class Directory:
    """Where and as whom certificates are asked for."""

    url: str
    email: str
    ca: str  # a CA file to verify the directory's TLS with ('' = the system store)
    eab_kid: str = ""  # External Account Binding (RFC 8555 7.3.4: ZeroSSL, Google, private CAs)
    eab_hmac_key: str = field(default="", repr=False)  # its MAC key, base64url (a secret: never shown)


@dataclass(frozen=True)
class Issued:
    fullchain: bytes
    key: bytes
