"""center.trust: the certificate made per install, and pins on first use."""

from __future__ import annotations

import os
import ssl
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wmproxy.center import trust
from wmproxy.errors import ProtocolError
from wmproxy.prot import frame as fr


def test_identity_is_made_once_with_a_private_key_only_its_owner_reads(tmp_path):
    state = tmp_path / "state"
    cert, key = trust.identity(str(state))
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600 and stat.S_IMODE(os.stat(state).st_mode) == 0o700
    der = trust.identity_der(str(state))
    assert trust.identity(str(state)) == (cert, key) and trust.identity_der(str(state)) == der  # not made again
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)  # a usable pair
    other = tmp_path / "other"
    assert trust.identity_der(str(other)) != der  # one per install
    # a state folder others can write (an operator's choice): a link planted where a temporary
    # file used to be made (the key's name, this pid) does not make the key be written through it
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    (shared / f"{trust.IDENTITY_KEY}.{os.getpid()}.tmp").symlink_to(victim)
    trust.identity(str(shared))
    assert victim.read_text() == "keep me\n" and not (shared / trust.IDENTITY_KEY).is_symlink()


def test_a_pin_is_taken_once_and_a_different_certificate_is_refused_naming_the_file(tmp_path):
    pins = trust.KnownPeers(str(tmp_path / "known_servers"), "center server")
    a, b = b"certificate A", b"certificate B"
    assert pins.check("h:1", a) is True and pins.check("h:1", a) is False
    with pytest.raises(trust.PinMismatch) as e:
        pins.check("h:1", b)
    assert str(tmp_path / "known_servers") in str(e.value) and "delete the line 'h:1 ...'" in str(e.value)
    assert pins.check("h:2", b) is True  # another name, its own pin
    text = (tmp_path / "known_servers").read_text()
    assert text == f"h:1 {trust.fingerprint(a)}\nh:2 {trust.fingerprint(b)}\n"
    (tmp_path / "known_servers").write_text(f"# edited\nh:2 {trust.fingerprint(b)}\n")  # the operator removed h:1
    assert pins.check("h:1", b) is True


def test_kept_certificates_are_the_servers_anchors(tmp_path):
    pins = trust.KnownPeers(str(tmp_path / "known_clients"), "center client")
    pins.check("alice#office", b"\x30\x03der", keep_der=True)
    pins.check("bob", b"plain")
    assert pins.anchors() == [b"\x30\x03der"]
    (tmp_path / "known_clients").write_text("broken line\nx sha256:00 !!notbase64\n")
    assert pins.anchors() == [] and pins.pinned("x") == "sha256:00"


def test_token_with_a_certificate_round_trips_and_is_bounded():
    body = fr.encode_token("alice", "p" * 64, "office", b"DER")
    assert fr.decode_token_cert(body, True, True) == ("alice", "p" * 64, "office", b"DER")
    with pytest.raises(ProtocolError, match="trailing bytes"):
        fr.decode_token(body, True)  # (a server that did not ask for one)
    with pytest.raises(ProtocolError, match="a certificate of 0 bytes"):
        fr.decode_token_cert(fr.encode_short("a") + fr.encode_short("b") + (0).to_bytes(2, "big"), False, True)
    with pytest.raises(ValueError):
        fr.encode_token("a", "b", None, b"x" * (fr.CERT_MAX + 1))
    assert fr.cert_proof("pw", b"n" * 16, b"A") != fr.cert_proof("pw", b"n" * 16, b"B") != fr.proof("pw", b"n" * 16)


def test_a_server_pins_at_most_max_pins_clients(tmp_path, monkeypatch):
    from wmproxy.center.handshake import AuthFailed, Enrolled
    from wmproxy.config import CenterConfig

    monkeypatch.setattr(trust, "MAX_PINS", 3)
    cfg = CenterConfig(bind=None, server=(), tls=True, cert="auto", key="auto", state_dir=str(tmp_path))
    server = trust.ServerTrust(cfg)
    server.pins = trust.KnownPeers(str(tmp_path / "known_clients"), "center client")
    client_der = trust.identity_der(str(tmp_path / "client"))
    for i in range(3):
        with pytest.raises(Enrolled):
            server.check(f"a#{i}", None, client_der)
    with pytest.raises(AuthFailed, match="3 clients are pinned in .* already"):
        server.check("a#3", None, client_der)
    server.check("a#1", client_der, None)  # (a pinned one still links)
    with pytest.raises(AuthFailed, match="a client certificate is required"):
        server.check("a#1", None, None)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.booleans(), st.booleans())
def test_any_token_body_is_read_or_refused_as_a_protocol_error(body, with_id, with_cert):
    """What a stranger sends on TOKEN (before any password is checked): a bounded read, or
    ProtocolError; never another exception, never a certificate beyond CERT_MAX."""
    try:
        _, _, _, cert = fr.decode_token_cert(body, with_id, with_cert)
    except ProtocolError:
        return
    assert cert is None or 0 < len(cert) <= fr.CERT_MAX


def test_a_server_whose_pins_are_garbage_still_serves(tmp_path):
    """A pin line whose certificate is not one (an edit gone wrong, or a password holder
    enrolling junk): logged and left out of the trust store; the context still loads."""
    from wmproxy.config import CenterConfig

    (tmp_path / "known_clients").write_text("a#x sha256:00 bm90IGEgY2VydA==\n")  # ("not a cert")
    cfg = CenterConfig(bind=None, server=(), tls=True, cert="auto", key="auto", client_ca="pin",
                       state_dir=str(tmp_path))
    server = trust.ServerTrust(cfg)
    assert server.pins is not None and server.ssl.verify_mode == ssl.CERT_OPTIONAL
