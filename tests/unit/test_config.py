"""Config building: converters, key paths, aliases, overrides."""

from __future__ import annotations

import ipaddress

import pytest

from wmproxy import config
from wmproxy.errors import ConfigError


def test_defaults_are_secure():
    cfg = config.load(None, default={"proxy": {}})
    assert str(cfg.proxy.bind) == "127.0.0.1:8090" and cfg.proxy.bind.is_loopback
    assert not cfg.proxy.auth
    assert cfg.proxy.max_header_size == 65536 and cfg.proxy.idle_timeout == 300


@pytest.mark.parametrize("text,seconds", [(30, 30.0), ("10s", 10.0), ("500ms", 0.5), ("2min", 120.0), ("1h", 3600.0),
                                          ("1.5s", 1.5), ("5m", 300.0)])
def test_durations(text, seconds):
    assert config.to_duration(text) == seconds


@pytest.mark.parametrize("text,n", [(100, 100), ("64k", 65536), ("1m", 1 << 20), ("8KiB", 8192)])
def test_sizes(text, n):
    assert config.to_size(text) == n


@pytest.mark.parametrize("text,host,port", [("127.0.0.1:80", "127.0.0.1", 80), ("[::1]:8090", "::1", 8090),
                                            ("localhost:1", "localhost", 1), ("0.0.0.0:0", "0.0.0.0", 0)])
def test_addresses(text, host, port):
    a = config.to_addr(text)
    assert (a.host, a.port) == (host, port)
    assert str(config.to_addr(str(a))) == str(a)


@pytest.mark.parametrize("bad", ["::1:80", "host", "host:", "a b:1", "[::1]80", ":80", "h:70000"])
def test_bad_addresses(bad):
    with pytest.raises(config.Invalid):
        config.to_addr(bad)


def test_alias_and_flag_words():
    cfg = config.build(config.Config, {"proxy": {"bind_addr": "127.0.0.1:1", "flag": "http|socks5"}})
    assert cfg.proxy.bind.port == 1 and cfg.proxy.flag == {"http", "socks5"}


def test_override_names_its_origin():
    with pytest.raises(ConfigError) as e:
        config.load(None, [config.Override(("proxy", "allow"), ["1.2.3.0/24", "x"], "command line --allow")],
                    default={})
    assert e.value.source == "command line --allow" and e.value.path == "proxy.allow[1]"


def test_nameservers_are_ip_addresses_with_an_optional_port():
    """A resolver's address is an IP (with a port if not 53); anything else is a config error
    naming the key, not a traceback from dnspython at start."""
    from wmproxy.net.dns import Resolver

    cfg = config.load(None, default={"dns": {"nameservers": ["192.0.2.53", "192.0.2.54:5353", "::1", "[::1]:5353"]}})
    assert [(ns.address, ns.port) for ns in Resolver(cfg.dns)._dns.nameservers] == [
        ("192.0.2.53", 53), ("192.0.2.54", 5353), ("::1", 53), ("::1", 5353)]
    for bad in ("dns.google", "192.0.2.53:0", "192.0.2.53:99999", "[::1]", "1.2.3.4:53:53", "", 53):
        with pytest.raises(ConfigError) as e:
            config.load(None, default={"dns": {"nameservers": ["192.0.2.53", bad]}})
        assert e.value.path == "dns.nameservers[1]" and "an IP address, with a port if not 53" in str(e.value), bad


def test_networks():
    nets = config.list_of(config.to_network)(["10.0.0.0/8", "::1", "192.168.1.7/24"])
    assert nets[2] == ipaddress.ip_network("192.168.1.0/24")


def test_frozen():
    cfg = config.load(None, default={"proxy": {}})
    with pytest.raises(AttributeError):
        cfg.proxy.bind = None


def test_mappings_and_allow_ports():
    cfg = config.build(config.Config, {
        "center": {"server": "127.0.0.1:8091", "tls": False},
        "mappings": [{"name": "ssh", "mode": "tcp", "local_addr": "127.0.0.1:22", "remote_bind": "0.0.0.0:2222"}]})
    assert cfg.mappings[0].remote_bind.port == 2222
    server = config.build(config.CenterConfig, {"bind": "0.0.0.0:8091", "tls": False,
                                                "allow_ports": ["2000-2999", 3306]})
    assert server.allow_ports == ((2000, 2999), (3306, 3306))
    for bad, path in (({"mappings": [{"name": "x", "mode": "tcp", "local_addr": "127.0.0.1:1",
                                      "remote_bind": "0.0.0.0:2"}]}, "mappings"),
                      ({"center": {"bind": "0.0.0.0:1", "tls": False, "allow_ports": ["9-2"]}},
                       "center.allow_ports[0]"),
                      ({"center": {"bind": "0.0.0.0:1", "tls": False, "window": "1m", "max_window": "512k"}},
                       "center.max_window")):
        with pytest.raises(config.Invalid) as e:
            config.build(config.Config, bad)
        assert e.value.subpath == path


def test_stream_tcp_and_udp_may_share_a_port_but_not_a_transport():
    up = [{"name": "u", "server": [{"addr": "127.0.0.1:53"}]}]
    tcp = {"bind": "127.0.0.1:5300", "up_name": "u"}
    udp = {**tcp, "bind_mode": "udp"}
    cfg = config.build(config.StreamConfig, {"upstream": up, "server": [tcp, udp]})
    assert [s.bind_mode for s in cfg.server] == ["tcp", "udp"]
    for twice in ([tcp, tcp], [udp, udp]):
        with pytest.raises(config.Invalid) as e:
            config.build(config.StreamConfig, {"upstream": up, "server": twice})
        assert e.value.subpath == "server[1].bind" and "bound twice" in str(e.value)


def test_udp_mappings_and_socks5_udp_bind():
    cfg = config.build(config.MappingConfig, {"name": "dns", "mode": "udp", "local_addr": "127.0.0.1:53",
                                              "remote_bind": "0.0.0.0:2053"})
    assert cfg.mode == "udp"
    with pytest.raises(config.Invalid) as e:
        config.build(config.MappingConfig, {"name": "dns", "mode": "udp", "local_addr": "127.0.0.1:53"})
    assert e.value.subpath == "remote_bind"
    assert config.build(config.ProxyConfig, {"udp_bind": "127.0.0.1:0"}).udp_bind.port == 0
    with pytest.raises(config.Invalid) as e:
        config.build(config.ProxyConfig, {"udp_bind": "0.0.0.0:1080"})
    assert e.value.subpath == "udp_bind" and "port 0" in str(e.value)


def test_tls_passthrough_is_for_https_mappings():
    m = config.build(config.MappingConfig, {"name": "t", "mode": "https", "tls_passthrough": True,
                                            "local_addr": "127.0.0.1:443", "domain": "a.test"})
    assert m.wire_mode == "tls"
    with pytest.raises(config.Invalid) as e:
        config.build(config.MappingConfig, {"name": "t", "mode": "tcp", "tls_passthrough": True,
                                            "local_addr": "127.0.0.1:1", "remote_bind": "0.0.0.0:2"})
    assert e.value.subpath == "tls_passthrough"


def test_http2_keys():
    def server(**extra):
        return {"bind": "127.0.0.1:8443", "location": [{"static_response": "x"}], **extra}

    cfg = config.build(config.Config, {"http": {"server": [server(), server(bind="127.0.0.1:8080", http2="h2c"),
                                                           server(bind="127.0.0.1:8081", http2=False)]}})
    assert [s.http2 for s in cfg.http.server] == [True, "h2c", False]
    assert cfg.http.server[0].http2_max_concurrent_streams == 128
    cases = [
        (server(http2="maybe"), "http.server[0].http2", 'true, false or "h2c"'),
        (server(http2="h2c", cert="c.pem", key="k.pem"), "http.server[0].http2", "has a cert"),
        (server(http2_max_concurrent_streams=0), "http.server[0].http2_max_concurrent_streams", "1 to 1000"),
    ]
    for srv, path, text in cases:
        with pytest.raises(ConfigError) as e:
            config.load(None, default={"http": {"server": [srv]}})
        assert e.value.path == path and text in str(e.value), (path, str(e.value))
    with pytest.raises(ConfigError) as e:  # two servers on one address: one socket, one ALPN list
        config.load(None, default={"http": {"server": [server(), server(http2=False)]}})
    assert e.value.path == "http.server[1].http2" and "same http2" in str(e.value)


def test_acme_keys():
    def server(**extra):
        return {"bind": "127.0.0.1:8443", "location": [{"static_response": "x"}], **extra}

    cfg = config.load(None, default={"acme_dir": "/tmp/acme-x", "http": {"server": [
        server(server_name=["a.test"], acme=True), server(bind="127.0.0.1:80")]}})
    assert cfg.uses_acme and cfg.http.server[0].tls and not cfg.http.server[1].tls
    assert cfg.acme_directory == "https://acme-v02.api.letsencrypt.org/directory"
    assert cfg.acme_challenge_type == "http-01"  # a plain server on port 80
    cfg = config.load(None, default={"http": {"server": [server(server_name=["a.test"], acme=True)]}})
    assert cfg.acme_challenge_type == "tls-alpn-01" and cfg.acme_path.endswith("/acme")
    cases = [
        ({"http": {"server": [server(acme=True)]}}, "http.server[0].server_name", "needs server_name"),
        ({"http": {"server": [server(acme=True, server_name=["a.test"], cert="c.pem", key="k.pem")]}},
         "http.server[0].acme", "remove cert and key"),
        ({"http": {"server": [server(acme=True, server_name=["a.test"]), server(server_name=["b.test"])]}},
         "http.server[1].cert", "all TLS"),
        ({"acme_challenge": "http-01", "http": {"server": [server(acme=True, server_name=["a.test"])]}},
         "acme_challenge", "plain HTTP"),
        ({"acme_directory": "http://ca.test/dir"}, "acme_directory", "https URL"),
        ({"acme_email": "not an address"}, "acme_email", "e-mail"),
        ({"acme_challenge": "dns-01"}, "acme_challenge", "auto"),
        ({"acme_eab_kid": "kid-1"}, "acme_eab_hmac_key", "go together"),
        ({"acme_eab_kid": "kid-1", "acme_eab_hmac_key": "not base64!"}, "acme_eab_hmac_key", "base64url"),
        ({"center": {"bind": "127.0.0.1:9000", "tls": False, "map_acme": True}}, "center.map_acme", "map_https_bind"),
    ]
    for doc, path, text in cases:
        doc.setdefault("http", {"server": [server()]})
        with pytest.raises(ConfigError) as e:
            config.load(None, default=doc)
        assert e.value.path == path and text in str(e.value), (path, e.value.path, str(e.value))


def test_http2_upstreams():
    loc = lambda url: {"bind": "127.0.0.1:8080", "location": [{"proxy_url": url}]}  # noqa: E731
    for url in ("grpc://127.0.0.1:50051", "grpcs://api.test", "h2c://app/v1/", "https://app"):
        cfg = config.build(config.Config, {"http": {"server": [loc(url)]}})
        assert cfg.http.server[0].location[0].proxy_url == url
    with pytest.raises(ConfigError) as e:
        config.load(None, default={"http": {"server": [loc("ftp://x")]}})
    assert e.value.path == "http.server[0].location[0].proxy_url" and "grpc://" in str(e.value)
    up = {"name": "app", "server": [{"addr": "127.0.0.1:1"}], "protocol": "h2"}
    cfg = config.build(config.Config, {"http": {"upstream": [up]}})
    assert cfg.http.upstream[0].protocol == "h2"
    with pytest.raises(ConfigError) as e:
        config.load(None, default={"http": {"upstream": [{**up, "protocol": "h3"}]}})
    assert e.value.path == "http.upstream[0].protocol" and "http/1.1, h2" in str(e.value)
    with pytest.raises(ConfigError) as e:  # a PROXY header names one client; h2 carries many
        config.load(None, default={"http": {"upstream": [{**up, "send_proxy_protocol": "v2"}]}})
    assert e.value.path == "http.upstream[0].send_proxy_protocol"
