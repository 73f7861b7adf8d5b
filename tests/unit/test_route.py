"""[http] routing, pure: server by Host, location as nginx, path normalization."""

from __future__ import annotations

import pytest

from wmproxy import config
from wmproxy.web.route import normalize_path, pick_location, pick_server


def server(names=(), rules=("/",)):
    return config.build(config.HttpServerConfig, {
        "bind": "127.0.0.1:1", "server_name": list(names),
        "location": [{"rule": r, "static_response": r} for r in rules]})


def test_server_by_host_like_nginx():
    default = server()
    exact, star, tail = server(["www.a.test"]), server(["*.a.test", "*.deep.a.test"]), server(["mail.*"])
    servers = (exact, star, tail, default)
    assert pick_server(servers, "www.a.test") is exact
    assert pick_server(servers, "WWW.A.TEST.") is exact
    assert pick_server(servers, "x.a.test") is star and pick_server(servers, "x.deep.a.test") is star
    assert pick_server(servers, "mail.b.test") is tail
    assert pick_server(servers, "other.test") is default
    assert pick_server((exact, star), "other.test") is exact  # no unnamed server: the first


@pytest.mark.parametrize("path,expected", [
    ("/", "/"), ("/exact", "= /exact"), ("/exact/", "/"), ("/img/a.gif", "~* \\.(gif|jpg)$"),
    ("/img/a.GIF", "~* \\.(gif|jpg)$"), ("/static/a.gif", "^~ /static/"), ("/static/sub/x", "^~ /static/"),
    ("/api/v1/x", "/api/v1/"), ("/api/x", "/api/"), ("/api/v1/a.jpg", "~* \\.(gif|jpg)$"),
    ("/doc.PHP", "/"), ("/doc.php", "~ \\.php$"),
])
def test_locations_like_nginx(path, expected):
    srv = server(rules=("/", "= /exact", "/api/", "/api/v1/", "^~ /static/", "~ \\.php$", "~* \\.(gif|jpg)$"))
    assert pick_location(srv, path).static_response == expected


def test_no_location_matches():
    assert pick_location(server(rules=("/api/",)), "/other") is None


@pytest.mark.parametrize("target,expected", [
    ("/a/../b", "/b"), ("/a/./b/", "/a/b/"), ("//a//b", "/a/b"), ("/a%20b?x=/..", "/a b"), ("/%2e%2e", None),
    ("/a/%2e%2e/%2e%2e", None), ("/..", None), ("/a/..", "/"),
])
def test_normalize_path(target, expected):
    assert normalize_path(target) == expected


@pytest.mark.parametrize("target", ["*", "a/b", "/%ff", "/a%00b"])
def test_malformed_paths(target):
    with pytest.raises(ValueError):
        normalize_path(target)
