"""HTTP Basic credentials (RFC 7617) as the forward proxy reads them from Proxy-Authorization.
Pure: a header value in, (user, password) out."""

from __future__ import annotations

import base64
import binascii
from typing import Optional


def parse_basic_auth(value: Optional[bytes]) -> Optional[tuple[str, str]]:
    """(user, password) from a 'Basic ...' credentials value, or None when absent/invalid."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None
