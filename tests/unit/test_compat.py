"""config.compat: the Rust wmproxy's keys and value shapes, read into this project's config."""

from __future__ import annotations

import re

import pytest

from wmproxy import config
from wmproxy.config import compat
from wmproxy.config.keys import Invalid
from wmproxy.errors import ConfigError


def load(tmp_path, text: str, name: str = "c.toml") -> tuple[config.Config, compat.Reading]:
    (tmp_path / name).write_text(text)
    cfg, reading = config.load_reading(str(tmp_path / name))
    assert reading is not None
    return cfg, reading


def test_a_file_of_this_project_is_not_translated(tmp_path):
    (tmp_path / "c.toml").write_text('[proxy]\nbind = "127.0.0.1:1"\nflag = "http socks5"\n')
    cfg, reading = config.load_reading(str(tmp_path / "c.toml"))
    assert reading is None and cfg.control is None


@pytest.mark.parametrize("flag,protocols", [(7, {"http", "https", "socks5"}), (5, {"http", "socks5"}),
                                            ("4", {"socks5"}), ("http https", {"http", "https"})])
def test_flag_as_a_number_or_words(tmp_path, flag, protocols):
    value = flag if isinstance(flag, int) else f'"{flag}"'
    cfg, _ = load(tmp_path, f'[proxy]\nbind_addr = "127.0.0.1:1"\nflag = {value}\nudp_bind = "127.0.0.1"\n')
    assert cfg.proxy.flag == protocols and str(cfg.proxy.udp_bind) == "127.0.0.1:0"


def test_a_client_file_becomes_a_center_client_with_its_mappings(tmp_path):
    cfg, reading = load(tmp_path, """
[proxy]
server = "127.0.0.1:8091"
bind_addr = "127.0.0.1:8090"
ts = true
domain = "center.test"
username = "u"
password = "p"
[[proxy.mappings]]
name = "web"
mode = "http"
local_addr = "127.0.0.1:8080"
domain = "localhost"
headers = ["proxy x-forward-for {client_ip}", "proxy + from $url", "+ last-modified 'from proxy'", "- etag"]
[[proxy.mappings]]
name = "tcp"
mode = "tcp"
local_addr = "127.0.0.1:8080"
domain = ""
""")
    assert [str(a) for a in cfg.center.server] == ["127.0.0.1:8091"] and cfg.center.tls
    assert cfg.center.server_name == ("center.test",) and cfg.center.username == "u"
    assert str(cfg.proxy.bind) == "127.0.0.1:8090" and not cfg.proxy.auth  # (the server's proxy asks the login)
    web, tcp = cfg.mappings
    assert [(h.is_proxy, h.op.name, h.key, h.value) for h in web.headers] == [
        (True, "REPLACE", "x-forward-for", "{client_ip}"), (True, "ADD", "from", "{url}"),
        (False, "ADD", "last-modified", "from proxy"), (False, "DELETE", "etag", "")]
    assert tcp.remote_bind is None and tcp.domain == ""
    assert cfg.control is not None and str(cfg.control) == compat.DEFAULT_CONTROL
    assert any("published on the server's map_tcp_bind" in n for n in reading.notes)


def test_headers_in_the_list_form_as_yaml_writes_them(tmp_path):
    cfg, _ = load(tmp_path, """
server: 127.0.0.1:8091
mappings:
  - name: web
    mode: http
    local_addr: 127.0.0.1:8080
    domain: localhost
    headers:
      - [proxy, +, x-forward-for, $client_ip]
      - [+, last-modified, from proxy]
      - [-, etag]
""", "c.yaml")
    assert [(h.is_proxy, h.op.name, h.key, h.value) for h in cfg.mappings[0].headers] == [
        (True, "ADD", "x-forward-for", "{client_ip}"), (False, "ADD", "last-modified", "from proxy"),
        (False, "DELETE", "etag", "")]
    assert not cfg.center.tls  # (ts off: plain, as the original; the server warns at start)


def test_a_server_file_becomes_a_center_server_whose_proxy_serves_its_clients_only(tmp_path):
    cfg, reading = load(tmp_path, """
disable_control = true
[proxy]
bind_addr = "127.0.0.1:8091"
username = "u"
password = "p"
map_http_bind = "127.0.0.1:8001"
map_tcp_bind = "127.0.0.1:8002"
mode = "server"
server_id = 3
""")
    assert str(cfg.center.bind) == "127.0.0.1:8091" and not cfg.center.tls
    assert cfg.center.accounts() == {"u": "p"} and cfg.proxy.auth and cfg.proxy.bind is None
    assert str(cfg.center.map_tcp_bind) == "127.0.0.1:8002" and cfg.control is None
    assert reading.warnings == ["proxy.server_id: accepted, no effect here (the Rust program's proxy id)"]


def test_tls_without_certificate_files_is_a_pair_per_install_and_pins(tmp_path):
    cfg, reading = load(tmp_path, '[proxy]\nmode = "server"\nbind_addr = "127.0.0.1:1"\ntc = true\ntwo_way_tls = true\n')
    assert (cfg.center.cert, cfg.center.key, cfg.center.client_ca) == ("auto", "auto", "pin")
    assert any('cert = "auto"' in n for n in reading.notes)
    cfg, _ = load(tmp_path, '[proxy]\nserver = "127.0.0.1:1"\nts = true\ntwo_way_tls = true\n')
    assert (cfg.center.cert, cfg.center.key, cfg.center.ca) == ("auto", "auto", "pin")
    cfg, _ = load(tmp_path, '[proxy]\nserver = "127.0.0.1:1"\nts = true\ncert = "/etc/ssl/certs/ca-certificates.crt"\n')
    assert cfg.center.ca == "/etc/ssl/certs/ca-certificates.crt" and not cfg.center.cert  # (a CA file: verified)


def test_center_addr_keeps_the_forward_proxy_on_bind(tmp_path):
    cfg, _ = load(tmp_path, '[proxy]\nbind = "127.0.0.1:8090"\ncenter_addr = "127.0.0.1:8091"\n')
    assert str(cfg.center.bind) == "127.0.0.1:8091" and str(cfg.proxy.bind) == "127.0.0.1:8090"


HTTP = """
[http]
proxy_connect_timeout = "3s"
[http.limit_req_zone]
limit = "{{client_ip}} limit=10m rate=600r/min"
[[http.upstream]]
name = "server"
server = [{{ addr = "127.0.0.1:8080", fail_timeout = 30, fall_times = 2 }}]
[[http.server]]
bind_addr = "127.0.0.1:81 127.0.0.1:82"
bind_ssl = "127.0.0.1:8443"
cert = "{d}/c.pem"
key = "{d}/c.key"
up_name = "a.test"
limit_req = "zone=limit brust=5"
allow_ip = "127.0.0.1 10.0.0.0/8"
[[http.server.location]]
rule = "/api/*.json"
proxy_url = "http://server"
[[http.server.location]]
rule = {{ path = "/", method = "GET POST" }}
static_response = "ok"
"""


def test_http_keys_flow_down_and_locations_keep_their_order(tmp_path):
    (tmp_path / "c.pem").write_text("")
    (tmp_path / "c.key").write_text("")
    cfg, reading = load(tmp_path, HTTP.format(d=tmp_path))
    plain, tls = cfg.http.server
    assert [str(b) for b in plain.bind] == ["127.0.0.1:81", "127.0.0.1:82"] and not plain.cert
    assert [str(b) for b in tls.bind] == ["127.0.0.1:8443"] and tls.cert.endswith("c.pem")
    assert plain.server_name == ("a.test",)
    api, root = plain.location
    assert api.rule.kind == "regex" and api.rule.regex.search("/api/v1/x.json") and \
        not api.rule.regex.search("/api/v1/x.html") and not api.rule.regex.search("/x/api/a.json")
    assert api.proxy_connect_timeout == 3.0 and api.limit_req.rate == 10.0 and api.limit_req.burst == 5
    assert [str(n) for n in api.allow_ip] == ["127.0.0.1/32", "10.0.0.0/8"]
    assert root.method == ("GET", "POST") and root.rule.regex.search("/anything")
    assert cfg.http.upstream[0].server[0].fail_timeout == 30.0
    assert "http.upstream[0].server[0].fall_times: accepted, no effect here" in " ".join(reading.warnings)


def test_the_0_1_file_server_is_served_on_bind_addr(tmp_path):
    cfg, _ = load(tmp_path, f'bind_addr: 127.0.0.1:8090\nreverse:\n  file_server:\n    root: "{tmp_path}"\n'
                            f'    prefix: /root\n    hide: [.git]\n    disable_compress: true\n', "c.yaml")
    (srv,) = cfg.http.server
    assert str(srv.bind[0]) == "127.0.0.1:8090" and cfg.proxy is None
    fs = srv.location[0].file_server
    assert fs.root == str(tmp_path) and fs.prefix == "/root" and fs.hide == (".git",) and not fs.gzip


def test_stream_address_ranges_timeouts_and_websocket_urls(tmp_path):
    cfg, _ = load(tmp_path, """
[stream]
[[stream.upstream]]
name = "udp"
bind = "udp"
server = [{ addr = "127.0.0.1:8089" }]
[[stream.server]]
bind_addr = "127.0.0.1:9001-:9003"
bind_mode = "udp"
up_name = "udp"
timeout = "500s"
[[stream.server]]
bind_addr = "127.0.0.1:85"
proxy_url = "wss://127.0.0.1:8081/chat"
bind_mode = "tcp2ws"
""")
    servers = cfg.stream.server
    assert [s.bind.port for s in servers] == [9001, 9002, 9003, 85]
    assert servers[0].client_timeout == 500.0 and servers[0].bind_mode == "udp"
    ws = servers[3]
    assert ws.bind_mode == "tcp2wss" and ws.ws_path == "/chat"
    assert str(cfg.stream.upstream_named(ws.up_name).server[0].addr) == "127.0.0.1:8081"


@pytest.mark.parametrize("text,path,says", [
    ('[proxy]\nserver = "127.0.0.1:1"\nsever_id = 1\n', "proxy.sever_id", "unknown key 'sever_id'"),
    ('[proxy]\nmode = "relay"\n', "proxy.mode", "expected 'server' or 'client'"),
    ('[proxy]\nmode = "client"\n', "proxy.server", "needs server"),
    ('[proxy]\nserver = "127.0.0.1:1"\nflag = 9\n', "proxy.flag", "expected a number from 1 to 7"),
    ('[proxy]\nmode = "server"\nbind_addr = "127.0.0.1:1"\ntc = true\ncert = "a.pem"\n', "proxy.key",
     "cert and key go together"),
    ('[http]\nerror_log = "nope"\n', "http.error_log", "'nope' is not in log_names"),
    ('[http]\naccess_log = "a"\n[[http.server]]\nbind_addr = "127.0.0.1:1"\nlimit_req = "zone=z"\n'
     '[[http.server.location]]\nstatic_response = "x"\n', "http.access_log", "'a' is not in log_names"),
    ('[http]\nmax_read_buf = 1\n[[http.server]]\nbind_addr = "127.0.0.1:1"\nlimit_req = "zone=z"\n'
     '[[http.server.location]]\nstatic_response = "x"\n', "http.server[0].location[0].limit_req",
     "no limit_req_zone named 'z'"),
    ('[http]\nmax_read_buf = 1\n[[http.server]]\nbind_addr = "127.0.0.1:1"\n[[http.server.location]]\n'
     'rule = "/a"\n', "http.server[0].location[0]", "a location needs file_server, static_response or proxy_url"),
])
def test_errors_name_the_key_in_the_file(tmp_path, text, path, says):
    (tmp_path / "c.toml").write_text(text)
    with pytest.raises(ConfigError) as e:
        config.load(str(tmp_path / "c.toml"))
    assert e.value.path == path and says in e.value.message and "read as a Rust wmproxy config" in e.value.message, \
        str(e.value)


@pytest.mark.parametrize("text,mark", [
    # one of our keys put in the wrong table, where only the Rust wmproxy has such a key: the file is
    # read as the Rust wmproxy's, and the error (about another key) says which key made it so
    ('[[http.upstream]]\nname = "o"\nprotocol = "h2"\nserver = [{ addr = "127.0.0.1:1" }]\n'
     '[[http.server]]\nbind = "127.0.0.1:2"\nproxy_read_timeout = "5s"\n'
     '[[http.server.location]]\nproxy_url = "http://o"\n', "http.server[0].proxy_read_timeout"),
    ('[http]\nmax_read_buf = 1\n[[http.server]]\nbind = "127.0.0.1:2"\nhttp2 = 3\n'
     '[[http.server.location]]\nstatic_response = "x"\n', "http.max_read_buf"),
    ('mappings = []\nworkers = 0\n', "mappings without a [center] table"),
])
def test_an_error_in_a_file_read_as_the_rust_wmproxys_names_what_made_it_so(tmp_path, text, mark):
    (tmp_path / "c.toml").write_text(text)
    with pytest.raises(ConfigError) as e:
        config.load(str(tmp_path / "c.toml"))
    assert f"read as a Rust wmproxy config, for its {mark}" in e.value.message, str(e.value)


@pytest.mark.parametrize("rule,matches,misses", [
    ("/root", ["/root", "/root/a", "/rootx"], ["/", "/x/root"]),
    ("*", ["/", "/a/b"], []),
    ("/static/*.css", ["/static/a.css", "/static/x/y.css"], ["/static/a.js", "/x/static/a.css"]),
    ("^/v[0-9]+/", ["/v1/a"], ["/va/"]),
])
def test_a_rule_matches_as_the_originals(rule, matches, misses):
    text, _ = compat._rule(rule, "rule")
    regex = re.compile(text[2:])
    assert all(regex.search(p) for p in matches) and not any(regex.search(p) for p in misses)


def test_a_rule_that_is_no_regex_is_refused():
    with pytest.raises(Invalid, match="bad regular expression"):
        compat._rule("/a(b", "rule")


def test_log_format_becomes_the_locations_access_line(tmp_path):
    cfg, reading = load(tmp_path, """
[http]
access_log = "access main trace"
[http.log_format]
main = "{d(%Y-%m-%d %H:%M:%S)} {client_ip} {l} {url} status: {status} {up_status} x: {nope}"
[http.log_names]
access = "logs/access.log trace"
[[http.server]]
bind_addr = "127.0.0.1:1"
[[http.server.location]]
rule = "/a"
static_response = "a"
[[http.server.location]]
rule = "/b"
static_response = "b"
""")
    lines = {loc.access_log for loc in cfg.http.server[0].location}
    assert lines == {"{date} {client_ip} INFO {url} status: {status} {status} x: {nope}"}
    assert cfg.http.server[0].client_max_body_size == 0  # (the original takes bodies of any size)
    assert cfg.access_log_file == "logs/access.log"
    assert [w for w in reading.warnings if "{nope}" in w] == [
        "http.server[0].location[0].access_log: {nope} of log_format.main have no value here (written as they are)"]


@pytest.mark.parametrize("entry,path,tried", [
    ("/ro(\\w+)/(.*) {path} /ro$1/Cargo.toml", "/root/x/y", "/root/Cargo.toml"),
    ("^/old/(?P<rest>.*) {path} /new/${rest}", "/old/a/b", "/new/a/b"),
    ("^/nomatch/ {path} /x", "/other", "/other"),  # (no match: the source as it is)
])
def test_a_try_paths_rewrite_as_the_originals(entry, path, tried):
    from wmproxy.web.files import _rewrite

    assert _rewrite(entry, path) == tried


def test_a_try_paths_rewrite_with_a_bad_regex_is_refused(tmp_path):
    (tmp_path / "c.toml").write_text(f'[[http.server]]\nbind = "127.0.0.1:1"\n[[http.server.location]]\n'
                                     f'file_server = {{ root = "{tmp_path}", try_paths = ["/a(b {{path}} /c"] }}\n')
    with pytest.raises(ConfigError, match="bad regular expression"):
        config.load(str(tmp_path / "c.toml"))
