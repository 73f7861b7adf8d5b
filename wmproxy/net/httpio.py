"""Moving HTTP/1.x heads and bodies between sockets, by the framing rules of prot/http1.

Shared by the forward proxy, the reverse proxy ([http]) and http mappings. Blocking-style over a Reader;
timeouts are the sockets' own.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Optional

from ..errors import ProtocolError, ProxyError, UpstreamError
from ..prot import http1
from ..prot.framing import CHUNKED, NO_BODY, UNTIL_CLOSE, Framing
from ..prot.chunked import ChunkedDecoder, encode_piece
from .reader import PeerClosed, Reader
from .conn import Conn, Data
from .relay import RelayStats, relay
from .writer import send_all

Send = Callable[[Data], None]  # sends all of its argument, or raises OSError
Interim = Callable[[http1.Head], None]  # told of each interim (1xx) response skipped
Finish = Callable[[http1.Headers], http1.Headers]  # header rules applied to the response's headers

STREAM_PIECE = 65536


def read_head(reader: Reader, limit: int, on_partial: Optional[Callable[[], None]] = None) -> bytes:
    """The next head, CRLF CRLF included. Leading empty lines are skipped (RFC 9112 2.2).
    ``on_partial()`` is called when a head has begun but is not whole yet (to start its
    deadline: the usual head comes whole in one read and costs nothing).

    Raises PeerClosed at EOF, ProtocolError(431) past ``limit``, socket.timeout.
    """
    buf = reader.buf
    if not buf:
        data = reader.receive()
        if not data:
            raise PeerClosed("peer closed after 0 bytes without a head")
        end = data.find(b"\r\n\r\n")
        if 0 < end <= limit - 4 and data[0] != 13:  # the common case: one recv, a whole head
            if end + 4 == len(data):
                return data  # and nothing else (a request without a body): no copy at all
            buf += memoryview(data)[end + 4:]  # the start of its body stays buffered
            return data[:end + 4]
        buf += data
    end = buf.find(b"\r\n\r\n")
    if 0 < end <= limit - 4 and buf[0] != 13:  # the common case: a whole head, no leading CRLF
        head = bytes(buf) if end + 4 == len(buf) else bytes(buf[:end + 4])
        del buf[:end + 4]
        return head
    if on_partial is not None:
        on_partial()
    while reader.peek(2) == b"\r\n":
        reader.read_exact(2)
    return reader.read_until(b"\r\n\r\n", limit)


JOIN_UNDER = 16384  # a body piece this big or more goes in a send of its own after its head: joining copies it


def _send_joined(send: Send, head: bytes, data: Data) -> None:
    """``head`` and a body piece in one send (one syscall, not two, for the common small
    message), or, for a piece of JOIN_UNDER or more, one after the other: joining would copy
    it, and to a client that does not read, the copy and the piece stay held together (an
    HTTP/2 stream held three copies of 64 KiB each while it waited for its window)."""
    if len(data) < JOIN_UNDER:
        send(head + data)
    else:
        send(head)
        send(data)


class _Joiner:
    """Sends ``prefix`` (a head) with the first body piece (:func:`_send_joined`)."""

    __slots__ = ("send", "prefix")

    def __init__(self, send: Send, prefix: bytes) -> None:
        self.send = send
        self.prefix = prefix

    def __call__(self, data: Data) -> None:
        if self.prefix:
            prefix, self.prefix = self.prefix, b""  # (taken before the send, as in flush)
            _send_joined(self.send, prefix, data)
        else:
            self.send(data)

    def flush(self) -> None:
        if self.prefix:
            data, self.prefix = self.prefix, b""  # (taken before the send: a send that fails did not leave it unsent)
            self.send(data)


def _copy_exact(reader: Reader, send: Send, n: int) -> None:
    while n:
        data = reader.read_some(min(n, STREAM_PIECE))
        if not data:
            raise PeerClosed(f"peer closed with {n} body bytes still due")
        send(data)
        n -= len(data)


def copy_body(reader: Reader, send: Send, framing: Framing, chunked_out: bool, prefix: bytes = b"",
              limit: int = 0) -> int:
    """Send ``prefix`` (the head), then copy one message body from ``reader`` to ``send``
    as framed by ``framing``.

    Chunked input is decoded and, with ``chunked_out``, encoded again (trailers kept);
    without it the bare data is sent (for an HTTP/1.0 receiver, who then sees EOF).
    Returns the number of body data bytes. Raises PeerClosed, ProtocolError (413 once a
    chunked body passes ``limit`` bytes: a length is checked before, by the caller), OSError;
    then ``prefix`` may not have been sent.
    """
    kind, length = framing
    if kind == "none":
        if prefix:
            send(prefix)
        return 0
    if kind == "length" and len(reader.buf) >= length:  # the common small message: all here, one send
        buf = reader.buf
        body = bytes(buf) if len(buf) == length else bytes(buf[:length])
        del buf[:length]
        if prefix:
            _send_joined(send, prefix, body)
        else:
            send(body)
        return length
    out = _Joiner(send, prefix)
    total = _copy_body(reader, out, framing, chunked_out, limit)
    out.flush()
    return total


class AnswerUnsent(UpstreamError):
    """A server's answer broke (closed, timed out, a malformed body) before a byte of it
    reached the client: the client can still be told, 502 (504 when it timed out)."""

    def __init__(self, cause: BaseException) -> None:
        self.cause = cause
        timed_out = isinstance(cause, TimeoutError)
        super().__init__(f"its answer broke before a byte of it was sent on: {cause or type(cause).__name__}",
                         504 if timed_out else 502)


def copy_answer(reader: Reader, send: Send, framing: Framing, chunked_out: bool, head: bytes) -> int:
    """:func:`copy_body` for a server's answer, its ``head`` as made for the client: sent with
    the body's first piece, but for a chunked or close-delimited body that is not here yet,
    whose head goes at once, before any wait (a client sees the head of an event stream
    without waiting for its first event).
    Returns the body's data bytes. Raises AnswerUnsent when the body broke before the head went
    out, else as copy_body (the client's connection is then cut)."""
    kind = framing[0]
    out = _Joiner(send, head)
    try:
        if (kind == "chunked" or kind == "close") and not reader.buf and reader.try_fill() is None:
            out.flush()  # (a stream: its head at once; EOF, False: the head waits, unsent. A body of a length,
                         # the usual small answer whose server wrote head and body apart, goes with its head)
        total = copy_body(reader, out, framing, chunked_out)
    except (PeerClosed, ProtocolError, TimeoutError, ConnectionError) as e:  # (a send that failed had taken the
        if out.prefix:                                                       # prefix: not "unsent")
            raise AnswerUnsent(e) from None
        raise
    out.flush()
    return total


def _copy_body(reader: Reader, sendall: Send, framing: Framing, chunked_out: bool, limit: int = 0) -> int:
    kind, length = framing
    if kind == "none":
        return 0
    if kind == "length":
        _copy_exact(reader, sendall, length)
        return length
    if kind == "close":
        total = 0
        while True:
            data = reader.read_some(STREAM_PIECE)
            if not data:
                return total
            sendall(data)
            total += len(data)
    return _copy_chunked(reader, sendall, chunked_out, limit)


def _copy_chunked(reader: Reader, sendall: Send, chunked_out: bool, limit: int = 0) -> int:
    """A chunked body through the pure decoder (prot/chunked.py), each data piece sent on as
    it comes (coded again in the same chunks when ``chunked_out``, the trailers after the
    last). The data of a large chunk that is not buffered yet is read and sent without passing
    through the reader's buffer, and without a copy."""
    decoder = ChunkedDecoder()
    buf = reader.buf
    total = 0
    while True:
        if buf:
            pieces, used = decoder.feed(buf)
            del buf[:used]
            for data, first, last in pieces:
                total += len(data)
                if limit and total > limit:
                    raise _too_large(limit)
                sendall(encode_piece(data, first, last) if chunked_out else data)
            if decoder.done:
                if chunked_out:
                    sendall(b"0\r\n" + decoder.trailers + b"\r\n")
                return total
        if decoder.data_left >= STREAM_PIECE and not buf:  # the middle of a large chunk: straight from the socket
            data = reader.read_some(min(decoder.data_left, STREAM_PIECE))
            if not data:
                raise PeerClosed(f"peer closed with {decoder.data_left} bytes of a chunk still due")
            first, last = decoder.skip(len(data))
            total += len(data)
            if limit and total > limit:
                raise _too_large(limit)
            sendall(encode_piece(data, first, last) if chunked_out else data)
        elif not reader.fill():
            raise PeerClosed(f"peer closed after {len(buf)} bytes of an incomplete chunked body")


class ClientBodyError(ProxyError):
    """The client's request body ended early, was too slow, or broke its framing: that request
    fails alone (``http_status`` to answer with, if the client is still there); the server it
    was going to is not at fault."""

    def __init__(self, cause: BaseException) -> None:
        self.cause = cause
        self.malformed = isinstance(cause, ProtocolError)  # (its client may still be sending: linger)
        if isinstance(cause, ProtocolError):
            self.http_status = cause.http_status
        elif isinstance(cause, TimeoutError):  # socket.timeout
            self.http_status = 408
        else:
            self.http_status = 400
        super().__init__(f"client request body: {cause or type(cause).__name__}")


class _UpstreamSide:
    """A send function that remembers whether it failed: what broke a body copy was then the
    receiving side, not the client's."""

    __slots__ = ("send", "failed")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.failed = False

    def __call__(self, data: Data) -> None:
        try:
            self.send(data)
        except BaseException:
            self.failed = True
            raise


def _too_large(limit: int) -> ProtocolError:
    return ProtocolError(f"request body larger than client_max_body_size ({limit} bytes)", 413)


def send_request(reader: Reader, send: Send, framing: Framing, head: bytes, limit: int = 0) -> int:
    """Send the ``head`` of a request with a body, and the body (read from the client's
    ``reader``, chunked re-encoded) with ``send``. Returns the body's data bytes. Raises
    ClientBodyError when the client's side broke (closed, timed out, malformed chunks), and
    what ``send`` raised (OSError, socket.timeout) when the server's did: the one rule every
    exchange uses to tell a client's fault from an upstream's."""
    side = _UpstreamSide(send)
    try:
        return copy_body(reader, side, framing, True, prefix=head, limit=limit)
    except (PeerClosed, ProtocolError, OSError) as e:
        if side.failed:
            raise
        raise ClientBodyError(e) from None


def exchange(client: Reader, send: Send, upstream: Reader, framing: Framing, head: bytes, method: str,
             max_head: int, interim: Optional[Interim] = None, finish: Optional[Finish] = None, whole: bool = False,
             on_sent: Optional[Callable[[], None]] = None, limit: int = 0) -> tuple[http1.Response, bytes | None]:
    """One request on an upstream connection, the exchange the forward proxy, ``[http]`` and
    http mappings share: ``head`` and the client's body (from ``client``, framed by
    ``framing``) sent with ``send``, then the final response head read from ``upstream``
    (interim 1xx heads to ``interim``, header rules ``finish`` applied). With ``whole`` (no
    ``finish``), the body too when it came whole with its head (else None: it waits in
    ``upstream``). ``on_sent()`` is called once a request body is out (the client's phase is
    over: its body deadline ends there); ``limit``: a chunked body's most bytes (see
    :func:`copy_body`). Blocks. Raises ClientBodyError for the client's side;
    for the upstream's, a STALE error (see :func:`stale_retry`) or socket.timeout. Closes
    nothing."""
    if framing == NO_BODY:  # the usual request: no body, one send (and one call less)
        send(head)
    else:
        send_request(client, send, framing, head, limit)
        if on_sent is not None:
            on_sent()
    if whole:
        return read_response_whole(upstream, max_head, method, interim)
    return read_response(upstream, max_head, method, interim, finish), None


STALE = (PeerClosed, ConnectionError, ProtocolError)  # what a kept connection the server closed looks like


def stale_retry(reused: bool, framing: Framing, error: BaseException) -> bool:
    """The one rule every exchange (forward proxy, ``[http]``, http mappings) follows when an
    upstream connection fails before the answer: try once more on a new connection when this
    one had served a request before (the server may have closed it as we sent: keep-alive
    timeouts race), the request has no body (nothing the client sent is lost or sent twice),
    and the failure is the connection's end or garbage where an answer should start (STALE),
    not a timeout (a slow server is not a stale connection)."""
    return reused and framing == NO_BODY and isinstance(error, STALE)


UNASKED_101 = "the server switched protocols though no upgrade was asked for"  # (RFC 9110 7.8: a 502)


class UnaskedSwitch(ProtocolError):
    """A 101 to a request that asked for no upgrade: a bad answer to that request (502), not a
    sign that the server is down (it is not taken out for it, nor is the request sent again)."""

    def __init__(self) -> None:
        super().__init__(UNASKED_101, 502)


class Forwarded:
    """How :func:`forward_response` ended: status, body bytes, whether the client connection
    stays open, whether the server's may be reused, and the relay's stats after an upgrade."""

    __slots__ = ("status", "size", "keep", "reusable", "upgraded")

    def __init__(self, status: int) -> None:
        self.status = status
        self.size = 0
        self.keep = False
        self.reusable = False
        self.upgraded: Optional[RelayStats] = None


def read_response(reader: Reader, limit: int, method: str, interim: Optional[Interim] = None,
                  finish: Optional[Finish] = None) -> http1.Response:
    """The server's final response to a ``method`` request, ready to pass on: its head's bytes
    passed through when they can be (:func:`http1.quick_response`; not with header rules), else
    parsed, ``finish`` (headers -> headers: the header rules) applied. Interim 1xx heads (101 is
    final here) go to ``interim`` (a Head -> None) or are skipped. Raises PeerClosed,
    ProtocolError, socket.timeout."""
    while True:
        data = read_head(reader, limit)
        if finish is None:
            response = http1.quick_response(data, method)
            if response is not None:
                return response
        rhead = http1.parse_response_head(data)
        if rhead.status >= 200 or rhead.status == 101:
            return http1.Response.of(rhead, method, finish)
        if interim is not None:
            interim(rhead)


def read_response_whole(reader: Reader, limit: int, method: str,
                        interim: Optional[Interim] = None) -> tuple[http1.Response, bytes | None]:
    """:func:`read_response` without header rules, and the body too when it came whole with
    its head in the reader's first recv, the usual small answer on a kept connection: returned
    then, not buffered (None when it is left to :func:`copy_body`). Raises as read_response."""
    if not reader.buf:
        data = reader.receive()
        if not data:
            raise PeerClosed("peer closed after 0 bytes without a head")
        end = data.find(b"\r\n\r\n")
        if 0 < end <= limit - 4 and data[0] != 13:
            response = http1.quick_response(data[:end + 4], method)
            if response is not None:
                kind, length = response.framing
                if len(data) - end - 4 == length and (kind == "length" or kind == "none"):
                    return response, data[end + 4:]
                reader.buf += memoryview(data)[end + 4:]
                return response, None
        reader.buf += data
    return read_response(reader, limit, method, interim), None


def to_client(head: http1.Head, response: http1.Response, extra: bytes = b"") -> tuple[bytes, bool, bool]:
    """How ``response`` goes to the client of request ``head``: (the head to send, ``extra``
    lines added; whether the body goes out chunked: to HTTP/1.1 clients; whether the client's
    connection stays open: not after a body ended by close, nor a chunked one sent bare to an
    HTTP/1.0 client)."""
    framing = response.framing
    kind = framing[0]
    if kind == "length" or kind == "none":  # the usual answer: the client's head alone decides
        if head.version == "1.1" and not head.connection:
            return response.encode(extra), False, True
        chunked_out = False
        keep = head.wants_keep_alive()
    else:
        chunked_out = framing == CHUNKED and head.version == "1.1"
        keep = head.wants_keep_alive() and framing != UNTIL_CLOSE and (chunked_out or framing != CHUNKED)
    if chunked_out:
        extra += b"\r\nTransfer-Encoding: chunked"
    if not keep:
        extra += b"\r\nConnection: close"
    elif head.version == "1.0":
        extra += b"\r\nConnection: keep-alive"
    return response.encode(extra), chunked_out, keep


def forward_response(client: Conn, creader: Reader, head: http1.Head, response: http1.Response, upstream: Conn,
                     ureader: Reader, finish: Optional[Finish], idle_timeout: float,
                     upgrade: bytes | None, body: bytes | None = None) -> Forwarded:
    """Send the server's ``response`` (from :func:`read_response`, and its body from
    ``ureader``, or ``body`` when it came whole with the head: :func:`exchange`'s ``whole``;
    then one send) to the client of request ``head``: chunked re-encoded for HTTP/1.1 clients,
    a 101 to an upgrade request (``finish``, the header rules, applied to its headers) followed
    by a relay of both connections until they end (it closes them). Raises AnswerUnsent (the
    client can still be answered), PeerClosed, ProtocolError, OSError as copy_answer does."""
    done = Forwarded(response.status)
    if response.status == 101 and upgrade and response.head is not None:
        headers = response.head.headers
        client.sendall(http1.encode_head(f"HTTP/1.1 101 {response.head.reason.decode('latin-1')}",
                                         finish(headers) if finish is not None else headers))
        done.upgraded = relay(client, upstream, idle_timeout, a_pending=creader.take_pending(),
                              b_pending=ureader.take_pending())
        return done
    out_head, chunked_out, keep = to_client(head, response)
    if body is not None:
        send_all(client, out_head + body)
        done.size = len(body)
    else:
        done.size = copy_answer(ureader, partial(send_all, client), response.framing, chunked_out, out_head)
    done.keep = keep
    done.reusable = reusable_after(response, ureader)
    return done


def reusable_after(response: http1.Response, ureader: Reader) -> bool:
    """Whether the server's connection may carry a next request once ``response`` was read
    whole: it said so, and nothing came past it. Bytes a server sent past its answer (a 204
    with a body, more than its Content-Length) would read as the answer to the connection's
    next request, another client's: as nginx, such a connection is not kept."""
    return response.reusable and not ureader.buf
