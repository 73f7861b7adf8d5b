"""How an HTTP/1.x message body is delimited (RFC 9112 6.3): the :class:`Framing` of a request
or response head, which every body mover (net/httpio.py) and the C response reader
(_speedups.c ``response_head``) speak. Pure: a parsed head in, a Framing out."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, NamedTuple, Optional

from ..errors import ProtocolError

if TYPE_CHECKING:
    from .http1 import Head

FramingKind = Literal["none", "length", "chunked", "close"]


class Framing(NamedTuple):
    """A body's framing: ``kind`` "none" (no body), "length" (``length`` bytes, > 0),
    "chunked" or "close" (until the sender closes); ``length`` is 0 but for "length".

    A tuple, so the hot paths unpack it (``kind, length = framing``) and compare it with the
    constants below at tuple speed; the C reader builds its instances directly."""

    kind: FramingKind
    length: int = 0


NO_BODY = Framing("none")
CHUNKED = Framing("chunked")
UNTIL_CLOSE = Framing("close")


def of_length(n: int) -> Framing:
    """The framing of a body of Content-Length ``n``."""
    return Framing("length", n) if n else NO_BODY


def _content_length(head: Head) -> Optional[int]:
    values = head.index.get(b"content-length")
    if not values:
        return None
    if len(values) == 1 and values[0].isdigit() and len(values[0]) <= 18:
        return int(values[0])
    numbers = {v.strip() for v in b",".join(values).split(b",")}
    if len(numbers) != 1:
        raise ProtocolError("conflicting Content-Length values")
    (n,) = numbers
    if not n.isdigit() or len(n) > 18:
        raise ProtocolError(f"invalid Content-Length {n[:20]!r}")
    return int(n)


def _is_chunked(head: Head) -> bool:
    te = head.get_all(b"transfer-encoding")
    if not te:
        return False
    return b",".join(te).split(b",")[-1].strip().lower() == b"chunked"


def request_framing(head: Head) -> Framing:
    """How the request body is delimited (RFC 9112 6.3): none, a length or chunked."""
    index = head.index
    if b"transfer-encoding" not in index and b"content-length" not in index:
        return NO_BODY  # the usual GET
    if head.get(b"transfer-encoding") is not None:
        if not _is_chunked(head):
            raise ProtocolError("request Transfer-Encoding must end in chunked", 400)
        if head.get(b"content-length") is not None:
            raise ProtocolError("request has both Transfer-Encoding and Content-Length", 400)
        return CHUNKED
    return of_length(_content_length(head) or 0)


def response_framing(request_method: str, head: Head) -> Framing:
    """How the response body is delimited: none, a length, chunked, or until close."""
    if request_method == "HEAD" or head.status in (204, 304) or 100 <= head.status < 200:
        return NO_BODY
    if head.get(b"transfer-encoding") is not None:
        return CHUNKED if _is_chunked(head) else UNTIL_CLOSE
    n = _content_length(head)
    if n is None:
        return UNTIL_CLOSE
    return of_length(n)
