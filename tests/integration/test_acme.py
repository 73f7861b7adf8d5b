"""ACME against pebble (Let's Encrypt's test server, Debian package ``pebble``).

pebble runs on loopback in the test's network namespace with a trustme certificate; names are
resolved by pebble-challtestsrv's DNS (every name: 127.0.0.1), and pebble validates on the
ports wmproxy listens on (its httpPort and tlsPort). The clients trust pebble's root, fetched
from its management port, as a browser trusts Let's Encrypt's.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import stat
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509

from conftest import IN_NETNS, control, curl, free_port, wait_port
from test_dashboard import row_text, wait_until

pytestmark = pytest.mark.skipif(shutil.which("pebble") is None or shutil.which("pebble-challtestsrv") is None,
                                reason="pebble is not installed (Debian package pebble)")


class Pebble:
    def __init__(self, tmp: Path, ca, http_port: int, tls_port: int, validity: int = 0,
                 blocked: tuple[str, ...] = (), eab: dict[str, str] | None = None) -> None:
        self.port, self.mgmt, dns = free_port(), free_port(), free_port()
        ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(tmp / "pebble.pem"))
        self.ca_file = tmp / "pebble-ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        conf = {"pebble": {"listenAddress": f"127.0.0.1:{self.port}", "managementListenAddress": f"127.0.0.1:{self.mgmt}",
                           "certificate": str(tmp / "pebble.pem"), "privateKey": str(tmp / "pebble.pem"),
                           "httpPort": http_port, "tlsPort": tls_port, "ocspResponderURL": "",
                           "externalAccountBindingRequired": bool(eab), "externalAccountMACKeys": eab or {},
                           "domainBlocklist": list(blocked),
                           **({"certificateValidityPeriod": validity} if validity else {})}}
        (tmp / "pebble.json").write_text(json.dumps(conf))
        self.logs = [open(tmp / "challtestsrv.log", "wb"), open(tmp / "pebble.log", "wb")]
        self.procs = [subprocess.Popen(["pebble-challtestsrv", "-dns01", f"127.0.0.1:{dns}", "-http01", "",
                                        "-https01", "", "-tlsalpn01", "", "-management", f"127.0.0.1:{free_port()}",
                                        "-defaultIPv6", ""], stdout=self.logs[0], stderr=subprocess.STDOUT)]
        env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"}
        self.procs.append(subprocess.Popen(["pebble", "-config", str(tmp / "pebble.json"), "-dnsserver",
                                            f"127.0.0.1:{dns}", "-strict=false"], stdout=self.logs[1],
                                           stderr=subprocess.STDOUT, env=env))
        wait_port(self.port, proc=self.procs[1])
        wait_port(self.mgmt, proc=self.procs[1])
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        with urllib.request.urlopen(f"https://127.0.0.1:{self.mgmt}/roots/0", context=ctx, timeout=10) as r:
            self.root = tmp / "pebble-root.pem"
            self.root.write_bytes(r.read())
        self.directory = f"https://127.0.0.1:{self.port}/dir"

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for f in self.logs:
            f.close()


@pytest.fixture
def pebble(tmp_path, ca):
    started = []

    def start(http_port: int, tls_port: int, **kw) -> Pebble:
        p = Pebble(tmp_path, ca, http_port, tls_port, **kw)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


def config(peb: Pebble, tmp: Path, http_port: int, tls_port: int, names: list[str], challenge: str,
           extra: str = "") -> str:
    return f"""
acme_directory = "{peb.directory}"
acme_ca = "{peb.ca_file}"
acme_dir = "{tmp / 'acme'}"
acme_email = "ops@example.org"
acme_challenge = "{challenge}"
control = "127.0.0.1:{{port}}"
{extra}
[[http.server]]
bind = "127.0.0.1:{http_port}"
[[http.server.location]]
static_response = "plain {{host}}"

[[http.server]]
bind = "127.0.0.1:{tls_port}"
server_name = {json.dumps(names)}
acme = true
[[http.server.location]]
rule = "/big"
file_server = {{ root = "{tmp}" }}
[[http.server.location]]
static_response = "hello {{host}}"
"""


def certificates(port: int) -> dict[str, dict]:
    """/api/certificates, checked against docs/openapi.yaml, by name (and /status says the same)."""
    from test_control_api import check

    status, body = control(port, "GET", "/api/certificates")
    rows = check("/api/certificates", "get", status, body)
    status, body = control(port, "GET", "/status")
    assert [c["name"] for c in json.loads(body)["certificates"]] == [c["name"] for c in rows]
    return {c["name"]: c for c in rows}


def wait_state(port: int, name: str, states: tuple[str, ...], timeout: float = 60, after: float | None = None) -> dict:
    """The name's row once its state is one of ``states`` (and its certificate newer than ``after``)."""
    deadline = time.monotonic() + timeout
    while True:
        row = certificates(port).get(name)
        if row is not None and row["state"] in states and (after is None or (row["not_before"] or 0) > after):
            return row
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}: not {states} within {timeout}s: {row}")
        time.sleep(0.2)


def served_cert(port: int, name: str, root: Path) -> dict:
    """The certificate a TLS client asking for ``name`` is given, verified against pebble's root."""
    ctx = ssl.create_default_context(cafile=str(root))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=name) as tls:
            return tls.getpeercert()


@pytest.mark.parametrize("challenge,workers", [("http-01", 1), ("tls-alpn-01", 1), ("http-01", 2)])
def test_a_certificate_is_obtained_and_served_to_curl(start_proxy, pebble, tmp_path, challenge, workers):
    """With 2 workers, worker 0 runs the ACME client, and whichever worker pebble's validation
    and the clients reach answers from acme_dir."""
    http_port, tls_port = free_port(), free_port()
    peb = pebble(http_port, tls_port)
    p = start_proxy(config=config(peb, tmp_path, http_port, tls_port, ["a.test", "www.a.test"], challenge,
                                  f"workers = {workers}"), bind=False)
    for name in ("a.test", "www.a.test"):
        row = wait_state(p.port, name, ("valid",))
        assert row["issuer"].startswith("Pebble") and row["not_after"] > time.time() + 86400
        assert row["next_renewal"] < row["not_after"] and row["source"] == "http.server[1]"
    r = curl("-sS", "--cacert", str(peb.root), "--resolve", f"a.test:{tls_port}:127.0.0.1",
             f"https://a.test:{tls_port}/")
    assert r.returncode == 0 and r.stdout == f"hello a.test:{tls_port}".encode(), r.stderr
    for _ in range(8):  # (with workers: connections land on each)
        cert = served_cert(tls_port, "www.a.test", peb.root)
        assert ("DNS", "www.a.test") in cert["subjectAltName"]  # (a certificate of its own per name)
    log = p.log()
    assert f"by {challenge}" in log and "certificate for a.test obtained from Pebble" in log
    if challenge == "tls-alpn-01":
        assert "answered an ACME tls-alpn-01 validation" in log
    else:
        assert "acme http-01" in log  # (the access line of pebble's GET)
    key = tmp_path / "acme" / "certs" / "a.test" / "key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and stat.S_IMODE((tmp_path / "acme").stat().st_mode) == 0o700
    accounts = list((tmp_path / "acme" / "accounts").glob("*/key.pem"))
    assert len(accounts) == 1 and stat.S_IMODE(accounts[0].stat().st_mode) == 0o600
    assert [f for f in (tmp_path / "acme" / "challenges").rglob("*") if f.is_file()] == []  # answers cleaned up
    status, body = control(p.port, "GET", "/metrics")
    assert status == 200
    line = next(x for x in body.decode().splitlines()
                if x.startswith('wmproxy_certificate_expiry_timestamp_seconds{name="a.test"}'))
    assert abs(float(line.split()[-1]) - certificates(p.port)["a.test"]["not_after"]) < 1


def test_a_refused_name_is_reported_and_the_others_served(start_proxy, pebble, tmp_path):
    http_port, tls_port = free_port(), free_port()
    peb = pebble(http_port, tls_port, blocked=("blocked.test",))
    p = start_proxy(config=config(peb, tmp_path, http_port, tls_port, ["ok.test", "blocked.test", "*.wild.test"],
                                  "http-01"), bind=False)
    good = wait_state(p.port, "ok.test", ("valid",))
    bad = wait_state(p.port, "blocked.test", ("refused",))
    assert "rejectedIdentifier" in bad["last_error"] and bad["next_attempt"] > time.time() + 3600
    wild = certificates(p.port)["*.wild.test"]
    assert wild["state"] == "refused" and "dns-01" in wild["last_error"] and wild["next_attempt"] is None
    assert good["failures"] == 0
    r = curl("-sS", "--cacert", str(peb.root), "--resolve", f"ok.test:{tls_port}:127.0.0.1",
             f"https://ok.test:{tls_port}/")
    assert r.returncode == 0 and r.stdout == f"hello ok.test:{tls_port}".encode(), r.stderr
    time.sleep(3)  # (not retried in a loop: one order for the refused name)
    assert p.log().count("no certificate for blocked.test") == 1
    text = subprocess.run([str(Path(__file__).resolve().parents[2] / "bin" / "wmproxy-server"), "status",
                           "-c", str(next(tmp_path.glob("conf-*.toml")))], capture_output=True, text=True,
                          timeout=30)
    assert "certificates (ACME): 3" in text.stdout and "rejectedIdentifier" in text.stdout, text.stdout + text.stderr
    # a reload: a name added gets its certificate, the refused one is asked again (the operator may
    # have fixed it), the one served is untouched
    conf = next(tmp_path.glob("conf-*.toml"))
    conf.write_text(conf.read_text().replace('"*.wild.test"]', '"*.wild.test", "new.test"]'))
    assert control(p.port, "POST", "/reload")[0] == 200
    wait_state(p.port, "new.test", ("valid",))
    assert certificates(p.port)["ok.test"]["not_after"] == good["not_after"]
    deadline = time.monotonic() + 20
    while p.log().count("no certificate for blocked.test") < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert p.log().count("no certificate for blocked.test") == 2


def test_renewal_swaps_the_certificate_while_a_download_goes_on(start_proxy, pebble, tmp_path):
    http_port, tls_port = free_port(), free_port()
    peb = pebble(http_port, tls_port, validity=6)  # renewal a third of 6 s before expiry: every 4 s
    (tmp_path / "big").write_bytes(os.urandom(1 << 20) * 20)
    p = start_proxy(config=config(peb, tmp_path, http_port, tls_port, ["r.test"], "tls-alpn-01"), bind=False)
    first = wait_state(p.port, "r.test", ("valid",))
    assert first["not_after"] - first["not_before"] <= 7
    got = {}

    def slow_download() -> None:
        ctx = ssl.create_default_context(cafile=str(peb.root))
        with socket.create_connection(("127.0.0.1", tls_port), timeout=30) as raw:
            with ctx.wrap_socket(raw, server_hostname="r.test") as tls:
                got["serial"] = tls.getpeercert()["serialNumber"]
                tls.sendall(b"GET /big HTTP/1.1\r\nHost: r.test\r\nConnection: close\r\n\r\n")
                n = 0
                while chunk := tls.recv(65536):
                    n += len(chunk)
                    time.sleep(len(chunk) / 2e6)  # 2 MB/s: the download spans the renewal
                got["bytes"], got["ended"] = n, time.monotonic()

    t = threading.Thread(target=slow_download)
    t.start()
    second = wait_state(p.port, "r.test", ("valid", "obtaining"), timeout=40, after=first["not_before"])
    renewed_at = time.monotonic()
    assert second["not_after"] > first["not_after"]
    time.sleep(1.5)  # (other processes look at the file every second; this one at once)
    renewed = served_cert(tls_port, "r.test", peb.root)
    t.join(timeout=60)
    assert got["bytes"] > 20 << 20  # the download that began on the old certificate finished whole,
    assert got["ended"] > renewed_at  # after the renewal
    assert renewed["serialNumber"] != got["serial"]
    assert "renewing a certificate for r.test" in p.log()
    # the directory goes away: the next renewal fails, is reported, and the certificate in use stays
    peb.stop()
    failed = wait_state(p.port, "r.test", ("failed",), timeout=30)
    assert failed["failures"] == 1 and failed["next_attempt"] > time.time() + 200  # (backoff: 5 minutes)
    assert failed["not_after"] == certificates(p.port)["r.test"]["not_after"] >= second["not_after"]
    assert "keeps serving" in p.wait_log("no certificate for r.test")
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # (it may have expired by now: 6 s)
    with socket.create_connection(("127.0.0.1", tls_port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="r.test") as tls:
            serving = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
    assert serving.not_valid_after_utc.timestamp() == failed["not_after"]  # (the last one obtained)


def test_a_name_that_fails_validation_is_reported_and_backs_off(start_proxy, pebble, tmp_path):
    http_port, tls_port, nowhere = free_port(), free_port(), free_port()
    peb = pebble(nowhere, tls_port)  # pebble validates http-01 on a port nothing listens on
    p = start_proxy(config=config(peb, tmp_path, http_port, tls_port, ["v.test"], "http-01"), bind=False)
    row = wait_state(p.port, "v.test", ("failed",))
    assert "validation failed" in row["last_error"] and "v.test" in row["last_error"], row
    assert row["failures"] == 1 and 250 < row["next_attempt"] - time.time() <= 300
    state = json.loads((tmp_path / "acme" / "certs" / "v.test" / "state.json").read_text())
    assert state["failures"] == 1  # (kept: a restart does not ask again before next_attempt)
    r = curl("-sS", "--cacert", str(peb.root), "--resolve", f"v.test:{tls_port}:127.0.0.1",
             f"https://v.test:{tls_port}/")
    assert r.returncode != 0  # (no certificate yet: the handshake fails, nothing self-signed stands in)
    time.sleep(3)
    assert p.log().count("no certificate for v.test") == 1


@pytest.mark.parametrize("challenge", ["http-01", "tls-alpn-01"])
def test_https_mappings_get_their_certificates_while_linked(pair, pebble, origin, tmp_path, challenge):
    web, secure, cport = free_port(), free_port(), free_port()
    peb = pebble(web, secure)
    p = pair(start_client=False, server_top=(
        f'control = "127.0.0.1:{cport}"\nacme_directory = "{peb.directory}"\nacme_ca = "{peb.ca_file}"\n'
        f'acme_dir = "{tmp_path / "acme"}"\nacme_challenge = "{challenge}"'), server_extra=(
        f'map_http_bind = "127.0.0.1:{web}"\nmap_https_bind = "127.0.0.1:{secure}"\nmap_acme = true\n'
        f'map_acme_domains = ["app.test", "*.apps.test"]'))
    assert certificates(cport) == {}  # (no mapping linked: nothing asked for)
    mapping = '[[mappings]]\nname = "{}"\nmode = "https"\nlocal_addr = "127.0.0.1:%d"\ndomain = "{}"\n' % origin.port
    p.client = p.start_client(tail=mapping.format("app", "app.test") + mapping.format("stray", "stray.test"))
    p.client.wait_log("mapping 'stray' published")
    row = wait_state(cport, "app.test", ("valid",))
    stray = certificates(cport)["stray.test"]
    assert stray["state"] == "refused" and "map_acme_domains" in stray["last_error"]
    assert row["source"] == "mapping app of alice" and row["issuer"].startswith("Pebble")
    r = curl("-sS", "--cacert", str(peb.root), "--resolve", f"app.test:{secure}:127.0.0.1",
             f"https://app.test:{secure}/whoami")
    assert r.returncode == 0 and r.stdout == b"origin-A", r.stderr
    answered = f"answered an ACME {challenge} validation"
    assert answered in p.server.log()
    # another name on the same port gets no certificate of this mapping's
    r = curl("-sS", "--cacert", str(peb.root), "--resolve", f"other.test:{secure}:127.0.0.1",
             f"https://other.test:{secure}/whoami")
    assert r.returncode != 0
    p.client.stop()  # the client goes: its name leaves the list (its files stay for its return)
    deadline = time.monotonic() + 15
    while certificates(cport) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert certificates(cport) == {}


def test_an_acme_dir_that_cannot_be_written_is_a_config_error(tmp_path):
    (tmp_path / "a-file").write_text("x")
    conf = tmp_path / "bad.toml"
    conf.write_text(f'acme_dir = "{tmp_path}/a-file/acme"\n[[http.server]]\nbind = "127.0.0.1:{free_port()}"\n'
                    f'server_name = ["a.test"]\nacme = true\n[[http.server.location]]\nstatic_response = "x"\n')
    r = subprocess.run([str(Path(__file__).resolve().parents[2] / "bin" / "wmproxy-server"), "-c", str(conf)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "acme_dir" in r.stderr and "a-file/acme" in r.stderr and str(conf) in r.stderr, \
        r.stderr


@pytest.mark.skipif(not IN_NETNS or os.geteuid() != 0, reason="binds port 80: root in the tests' own network namespace")
@pytest.mark.xdist_group("port-80")  # (one xdist worker runs every test that binds port 80)
@pytest.mark.parametrize("plain_port", [80, None])
def test_auto_proves_names_on_port_80_when_a_plain_listener_takes_it(start_proxy, pebble, tmp_path, plain_port):
    """acme_challenge = "auto": http-01 when a plain listener takes port 80 (as the directory asks
    there), else tls-alpn-01 on the TLS listener."""
    http_port, tls_port = plain_port or free_port(), free_port()
    peb = pebble(http_port, tls_port)
    p = start_proxy(config=config(peb, tmp_path, http_port, tls_port, ["auto.test"], "auto"), bind=False)
    wait_state(p.port, "auto.test", ("valid",))
    assert ("by http-01" if plain_port == 80 else "by tls-alpn-01") in p.log()


def test_a_directory_that_requires_an_external_account_binding(start_proxy, pebble, tmp_path):
    """ZeroSSL and company CAs bind the ACME account to an account of theirs (RFC 8555 7.3.4)."""
    http_port, tls_port = free_port(), free_port()
    mac = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"
    peb = pebble(http_port, tls_port, eab={"kid-1": mac})
    p = start_proxy(config=config(peb, tmp_path, http_port, tls_port, ["eab.test"], "http-01"), bind=False)
    row = wait_state(p.port, "eab.test", ("refused",))
    assert "acme_eab_kid" in row["last_error"], row  # (told what to set, not retried in a loop)
    conf = next(tmp_path.glob("conf-*.toml"))
    conf.write_text(f'acme_eab_kid = "kid-1"\nacme_eab_hmac_key = "{mac}"\n' + conf.read_text())
    assert control(p.port, "POST", "/reload")[0] == 200
    row = wait_state(p.port, "eab.test", ("valid",))
    assert row["issuer"].startswith("Pebble")


def test_the_dashboard_lists_the_certificates(start_proxy, pebble, tmp_path, browser):
    http_port, tls_port = free_port(), free_port()
    peb = pebble(http_port, tls_port, blocked=("blocked.test",))
    p = start_proxy(config=config(peb, tmp_path, http_port, tls_port, ["ok.test", "blocked.test"], "http-01"),
                    bind=False)
    wait_state(p.port, "ok.test", ("valid",))
    wait_state(p.port, "blocked.test", ("refused",))
    browser.get(f"http://127.0.0.1:{p.port}/")
    ok = wait_until(lambda: row_text(browser, "certificates", "ok.test"))
    assert "valid" in ok and "Pebble" in ok
    assert "rejectedIdentifier" in wait_until(lambda: row_text(browser, "certificates", "blocked.test"))
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
