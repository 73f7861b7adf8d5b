"""acme_dir as the listeners read it: challenge answers a stranger can ask for, certificates
swapped whole, and the TLS-ALPN-01 validation certificate (RFC 8737)."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st

from wmproxy.acme.client import ID_PE_ACME_IDENTIFIER, alpn_certificate
from wmproxy.net.certstore import CertStore, safe_name

TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"


def test_an_http_answer_only_for_a_token_put_there(tmp_path):
    store = CertStore(str(tmp_path / "acme"))
    assert store.http_answer(TOKEN) is None
    store.put_http(TOKEN, b"key-authorization")
    assert store.http_answer(TOKEN) == b"key-authorization"
    (tmp_path / "secret").write_text("not for strangers")
    for token in ("../../secret", "..%2f..%2fsecret", "", "short", TOKEN + "/x", "a" * 300, TOKEN[:-1] + ".",
                  "/etc/passwd"):
        assert store.http_answer(token) is None, token
    store.drop_http(TOKEN)
    assert store.http_answer(TOKEN) is None
    with pytest.raises(ValueError):
        store.put_http("../x" * 5, b"no")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_no_token_reads_outside_the_challenge_folder(tmp_path_factory, token):
    store = CertStore(str(tmp_path_factory.getbasetemp() / "fuzz-acme"))
    assert store.http_answer(token) is None  # (nothing is pending: nothing anywhere is read)


def test_names_fit_for_file_names():
    assert safe_name("a.test") and safe_name("www.example.com") and safe_name("x_1.test")
    for bad in ("*.a.test", "a.*", "../a", "a/b", ".a", "a..b", "", "A.test", "a.test.", "a" * 260):
        assert not safe_name(bad), bad


def test_a_saved_certificate_is_served_and_its_key_kept_private(tmp_path):
    ca = pytest.importorskip("trustme").CA()
    store = CertStore(str(tmp_path / "acme"))
    assert store.context_for("a.test") is None
    cert = ca.issue_cert("a.test")
    store.save_cert("a.test", b"".join(p.bytes() for p in cert.cert_chain_pems), cert.private_key_pem.bytes())
    chain, key = store.cert_paths("a.test")
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "acme").st_mode) == 0o700
    assert store.context_for("a.test", ("h2", "http/1.1")) is not None
    # a reader caught between the new key and the new chain keeps the old pair
    first = store.context_for("a.test")
    other = ca.issue_cert("a.test")
    with open(key, "wb") as f:
        f.write(other.private_key_pem.bytes())
    os.utime(chain)
    store._contexts = {k: (0.0, v[1] - 1, v[2]) for k, v in store._contexts.items()}  # (as if a second went by)
    assert store.context_for("a.test") is first


def test_the_tls_alpn_certificate_carries_the_key_authorization_digest():
    digest = hashlib.sha256(b"token.thumbprint").digest()
    pem = alpn_certificate("v.test", digest)
    cert = x509.load_pem_x509_certificate(pem)
    ext = cert.extensions.get_extension_for_oid(ID_PE_ACME_IDENTIFIER)
    assert ext.critical and ext.value.value == b"\x04\x20" + digest  # DER OCTET STRING of 32 bytes
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert names == ["v.test"]
    assert b"PRIVATE KEY" in pem


def test_map_acme_domains_allow_exact_names_and_names_below_a_wildcard():
    from wmproxy.acme.manager import domain_allowed

    allowed = ("app.test", "*.apps.test")
    assert domain_allowed("app.test", allowed) and domain_allowed("a.apps.test", allowed)
    assert domain_allowed("x.y.apps.test", allowed) and domain_allowed("anything.test", ())
    for name in ("apps.test", "evilapps.test", "app.test.evil", "xapp.test"):
        assert not domain_allowed(name, allowed), name
