"""The error hierarchy. Every error wmproxy raises on purpose is a ProxyError.

Errors carry what the caller needs to answer the peer: a ProtocolError knows the HTTP
status and the SOCKS5 reply code that describe it, so a handler never guesses.
"""


class ProxyError(Exception):
    """Base of every error wmproxy raises on purpose."""


class ConfigError(ProxyError):
    """A configuration value is wrong.

    The message names where (file, or 'command line' / 'environment'), the key path
    (``proxy.allow[2]``) and what is accepted.
    """

    def __init__(self, source: str, path: str, message: str):
        self.source = source
        self.path = path
        self.message = message
        where = f"{source}: " if source else ""
        key = f"{path}: " if path else ""
        super().__init__(f"{where}{key}{message}")


class ProtocolError(ProxyError):
    """A peer sent bytes that break its protocol.

    ``http_status`` is the status to answer an HTTP client with (400, 431, ...);
    ``socks5_reply`` the RFC 1928 REP code for a SOCKS5 client.
    """

    def __init__(self, message: str, http_status: int = 400, socks5_reply: int = 0x01):
        self.http_status = http_status
        self.socks5_reply = socks5_reply
        super().__init__(message)


class PhaseTimeout(TimeoutError):
    """A phase a peer controls (a request head, a SOCKS or center link handshake, a request
    body) did not end by its deadline. A TimeoutError (socket.timeout), so every handler that
    gives up on a slow peer gives up on this one too; its message names the phase."""


class ClientGone(ProxyError):
    """An HTTP client closed (or reset) its connection while its request's answer was awaited
    or on its way: the exchange ends, the server's connection is closed, nothing is answered
    (logged as 499, nginx's "client closed request")."""


class NeedMore(ProxyError):
    """Raised by a pure parser when its buffer holds only part of a message."""


class UpstreamError(ProxyError):
    """Opening or using the connection to the target failed.

    Carries the answer for each protocol: ``http_status`` (502 or 504) and
    ``socks5_reply`` (an RFC 1928 REP code).
    """

    def __init__(self, message: str, http_status: int = 502, socks5_reply: int = 0x01):  # general failure
        self.http_status = http_status
        self.socks5_reply = socks5_reply
        super().__init__(message)


class DnsError(UpstreamError):
    """A host name did not resolve."""

    def __init__(self, message: str):
        super().__init__(message, 502, 0x04)  # SOCKS5 host unreachable
