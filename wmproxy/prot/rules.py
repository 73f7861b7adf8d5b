"""Header rules and ``{var}`` filling: what ``headers = [...]`` in a location or a mapping
does to a request or a response. Pure. The rules themselves (prot.frame.HeaderRule) travel in
the mapping handshake, so their type is declared with the frames."""

from __future__ import annotations

from typing import Sequence

from .frame import HeaderOp, HeaderRule
from .http1 import Headers


def fill(template: str, variables: dict[str, str]) -> str:
    """``{name}`` in ``template`` replaced from ``variables`` ({client_ip}, {host}, {url}...)."""
    for name, value in variables.items():
        template = template.replace("{" + name + "}", value)
    return template


def apply_header_rules(headers: Headers, rules: Sequence[HeaderRule], variables: dict[str, str]) -> Headers:
    """Headers after mapping rules (prot.frame.HeaderRule): ADD appends, DELETE removes every
    header of that name, SET_IF_ABSENT adds only when missing, REPLACE removes then adds.
    ``{name}`` in a value is replaced from ``variables``. Without rules, ``headers`` itself."""
    if not rules:
        return headers
    out = list(headers)
    for rule in rules:
        name = rule.key.encode("latin-1")
        lower = name.lower()
        value = fill(rule.value, variables)
        present = any(k.lower() == lower for k, _ in out)
        if rule.op in (HeaderOp.DELETE, HeaderOp.REPLACE):
            out = [(k, v) for k, v in out if k.lower() != lower]
        if rule.op in (HeaderOp.ADD, HeaderOp.REPLACE) or (rule.op == HeaderOp.SET_IF_ABSENT and not present):
            out.append((name, value.encode("latin-1", "replace")))
    return out
