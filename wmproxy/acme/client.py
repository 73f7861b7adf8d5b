"""One certificate from an ACME directory (RFC 8555) with certbot's ``acme`` library.

:func:`obtain` runs one order for one name: the account (made once per directory, its key kept
in acme_dir), a fresh key for the certificate, the challenge answered through the CertStore
(HTTP-01: a file the port-80 listeners answer from; TLS-ALPN-01: a certificate the TLS listener
answers a validation's ClientHello with), then the order finalized. It blocks the calling
greenlet (the library speaks through requests, on gevent's sockets) and raises
:class:`AcmeFailure` saying whether trying again later can help.

The ``acme`` library no longer carries TLS-ALPN-01 (RFC 8737); its two message classes are
registered here (the challenge JSON is ``{type, url, status, token}``, the answer ``{}``), and
the validation certificate is made with ``cryptography``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
from typing import Any, Callable

import josepy as jose
from acme import challenges, client, crypto_util, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID, ObjectIdentifier

from .. import __version__
from ..net.certstore import CertStore, write_private
from .types import AcmeFailure, Directory, Issued

log = logging.getLogger("wmproxy.acme")

ORDER_DEADLINE = 90.0  # seconds an order may take from its challenges to its certificate
NETWORK_TIMEOUT = 30  # seconds for one request to the directory
RATE_LIMITED_WAIT = 3600.0  # after rateLimited (the library drops Retry-After; an hour: Let's Encrypt's window)
ID_PE_ACME_IDENTIFIER = ObjectIdentifier("1.3.6.1.5.5.7.1.31")  # RFC 8737
#: problem types that say the name will not be issued as asked: reported, not retried soon
REFUSALS = ("rejectedIdentifier", "unsupportedIdentifier", "caa", "invalidContact", "unsupportedContact",
            "externalAccountRequired", "badCSR", "malformed")


@challenges.ChallengeResponse.register
class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):
    """The answer to a tls-alpn-01 challenge: an empty object, as for http-01."""

    typ = "tls-alpn-01"


@challenges.Challenge.register
class TLSALPN01(challenges.KeyAuthorizationChallenge):
    """tls-alpn-01 (RFC 8737): the CA connects to port 443 with ALPN acme-tls/1 and SNI the
    name, and expects a self-signed certificate for the name carrying the SHA-256 of the key
    authorization in a critical acmeIdentifier extension."""

    response_cls = TLSALPN01Response
    typ = response_cls.typ

    def validation(self, account_key: jose.JWK, **kwargs: Any) -> bytes:
        """The PEM certificate and key to answer the validation with."""
        digest = hashlib.sha256(self.key_authorization(account_key).encode()).digest()
        return alpn_certificate(kwargs["domain"], digest)


def alpn_certificate(name: str, digest: bytes) -> bytes:
    """A self-signed certificate (and its key, PEM, one after the other) for ``name`` with the
    acmeIdentifier extension holding ``digest`` (DER: an OCTET STRING of 32 bytes)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wmproxy ACME validation")])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.UnrecognizedExtension(ID_PE_ACME_IDENTIFIER, b"\x04\x20" + digest), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM) + _pem(key)


def obtain(directory: Directory, store: CertStore, name: str, challenge: str) -> Issued:
    """A certificate for ``name`` by ``challenge`` ("http-01" or "tls-alpn-01"). Blocks for
    up to ORDER_DEADLINE plus the requests' own time. Raises AcmeFailure."""
    try:
        acme = _client(directory, store)
        key = ec.generate_private_key(ec.SECP256R1())
        order = acme.new_order(crypto_util.make_csr(_pem(key), [name]))
        cleanup: list[Callable[[], None]] = []
        try:
            for authz in order.authorizations:
                if authz.body.status == messages.STATUS_VALID:
                    continue  # (the directory remembers an earlier validation)
                _answer(acme, store, authz, name, challenge, cleanup)
            deadline = datetime.datetime.now() + datetime.timedelta(seconds=ORDER_DEADLINE)
            done = acme.poll_and_finalize(order, deadline)
        finally:
            for undo in cleanup:
                undo()
        return Issued(done.fullchain_pem.encode(), _pem(key))
    except AcmeFailure:
        raise
    except messages.Error as e:
        code = e.code or ""
        raise AcmeFailure(f"{code or 'error'}: {e.detail or e}", refused=code in REFUSALS,
                          retry_after=RATE_LIMITED_WAIT if code == "rateLimited" else 0.0) from None
    except errors.ValidationError as e:
        raise AcmeFailure("validation failed: " + "; ".join(_challenge_errors(e))) from None
    except errors.TimeoutError:
        raise AcmeFailure(f"the order was not done within {ORDER_DEADLINE:g}s") from None
    except (errors.Error, OSError, ValueError) as e:  # requests' errors are OSErrors; bad JSON is a ValueError
        raise AcmeFailure(f"{type(e).__name__}: {e}") from None


def _answer(acme: client.ClientV2, store: CertStore, authz: messages.AuthorizationResource, name: str,
            challenge: str, cleanup: list[Callable[[], None]]) -> None:
    wanted = next((c for c in authz.body.challenges if c.chall.typ == challenge), None)
    if wanted is None:
        offered = ", ".join(c.chall.typ for c in authz.body.challenges) or "none"
        raise AcmeFailure(f"the directory offers no {challenge} challenge for {name} (offered: {offered})",
                          refused=True)
    account_key = acme.net.key
    chall = wanted.chall
    if challenge == "http-01":
        token = chall.encode("token")
        store.put_http(token, chall.key_authorization(account_key).encode())
        cleanup.append(lambda: store.drop_http(token))
    else:
        store.put_alpn(name, chall.validation(account_key, domain=name))
        cleanup.append(lambda: store.drop_alpn(name))
    acme.answer_challenge(wanted, chall.response(account_key))


def _client(directory: Directory, store: CertStore) -> client.ClientV2:
    """A client with its account (registered once; the key and the account's URL kept)."""
    folder = os.path.join(store.made().root, "accounts", hashlib.sha256(directory.url.encode()).hexdigest()[:16])
    key_path, account_path = os.path.join(folder, "key.pem"), os.path.join(folder, "account.json")
    try:
        with open(key_path, "rb") as f:
            private = serialization.load_pem_private_key(f.read(), password=None)
    except FileNotFoundError:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        write_private(key_path, _pem(private))
    jwk = jose.JWKRSA(key=private)
    verify: Any = directory.ca or True  # (requests, which it hands this to, takes a CA file's path too)
    net = client.ClientNetwork(jwk, user_agent=f"wmproxy/{__version__}", timeout=NETWORK_TIMEOUT, verify_ssl=verify)
    acme = client.ClientV2(client.ClientV2.get_directory(directory.url, net), net)
    try:
        with open(account_path) as f:
            saved = json.load(f)
        if saved.get("email") != directory.email:
            raise ValueError("the contact changed")
        net.account = messages.RegistrationResource.json_loads(saved["account"])
    except (OSError, ValueError, KeyError, jose.DeserializationError):
        binding: dict[str, Any] = {}
        if directory.eab_kid:
            binding["external_account_binding"] = messages.ExternalAccountBinding.from_data(
                account_public_key=jwk.public_key(), kid=directory.eab_kid, hmac_key=directory.eab_hmac_key,
                directory=acme.directory)
        elif acme.external_account_required():
            raise AcmeFailure(f"the directory {directory.url} requires an external account binding: set "
                              f"acme_eab_kid and acme_eab_hmac_key (from the CA's account page)", refused=True)
        try:
            account = acme.new_account(messages.NewRegistration.from_data(email=directory.email or None,
                                                                          terms_of_service_agreed=True, **binding))
        except errors.ConflictError as e:
            # the key has an account already: its URL came with a 200 (pebble answers so after a binding)
            account = messages.RegistrationResource(body=messages.Registration(), uri=e.location)
        net.account = account
        write_private(account_path, json.dumps({"directory": directory.url, "email": directory.email,
                                                "account": account.json_dumps()}).encode())
        log.info("ACME account registered at %s%s", directory.url,
                 f" for {directory.email}" if directory.email else "")
    return acme


def _pem(key: Any) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _challenge_errors(e: errors.ValidationError) -> list[str]:
    out = []
    for authz in e.failed_authzrs:
        for c in authz.body.challenges:
            if c.error is not None:
                out.append(f"{authz.body.identifier.value} ({c.chall.typ}): {c.error.detail or c.error.code}")
    return out or ["no detail"]
