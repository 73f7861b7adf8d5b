"""``[http]``: the reverse proxy, static files, locations, upstreams and health checks."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Optional

from .keys import (
    Addr, Invalid, REQUIRED, _unique_names, int_range, key, list_of, one_of, section, table_list,
    to_addr, to_bool, to_duration, to_header_rule, to_network, to_size, to_str, proxy_protocol_key,
    proxy_protocol_from_key, check_proxy_protocol, rate_limit_key,
)


def to_http2(value: Any) -> bool | str:
    """``http2``: true, false or "h2c"."""
    if isinstance(value, str) and value.lower() == "h2c":
        return "h2c"
    try:
        return to_bool(value)
    except Invalid:
        raise Invalid(f"expected true, false or \"h2c\", got {value!r}") from None


@dataclass(frozen=True)
class LocationRule:
    """How a location matches a path, as nginx: ``= /x`` exact, ``^~ /x`` prefix that stops
    the regex search, ``~ re`` / ``~* re`` regex (case-insensitive), ``/x`` prefix."""

    kind: str  # "exact", "prefix", "prefix-stop", "regex", "named"
    text: str
    regex: Optional[re.Pattern] = None

    def __str__(self) -> str:
        regex = "~* " if self.regex is not None and self.regex.flags & re.IGNORECASE else "~ "
        return {"exact": "= ", "prefix-stop": "^~ ", "regex": regex}.get(self.kind, "") + self.text


def to_location_rule(value: Any) -> LocationRule:
    if isinstance(value, str) and re.match(r"^@[A-Za-z0-9_-]{1,64}$", value.strip()):
        return LocationRule("named", value.strip())  # (no path reaches it: try_paths and error_page do)
    if isinstance(value, str):
        op, _, rest = value.strip().partition(" ")
        rest = rest.strip()
        if op in ("~", "~*") and rest:
            try:
                return LocationRule("regex", rest, re.compile(rest, re.IGNORECASE if op == "~*" else 0))
            except re.error as e:
                raise Invalid(f"bad regular expression {rest!r}: {e}") from None
        if op in ("=", "^~") and rest.startswith("/"):
            return LocationRule("exact" if op == "=" else "prefix-stop", rest)
        if op.startswith("/") and not rest:
            return LocationRule("prefix", op)
    raise Invalid(f"expected a location rule: a path prefix '/api/', '= /exact', '^~ /prefix', '~ regex' "
                  f"('~*' ignores case) or a name '@fallback', got {value!r}")


@dataclass(frozen=True)
class ErrorPage:
    """``error_page = ["404 /404.html", "500 502 =200 @fallback"]``, as nginx's: the codes it
    takes, the status answered (0: the code itself; -1, ``=``: the page's own), where to go."""

    codes: frozenset
    status: int
    target: str  # a path ('/404.html') or a named location ('@fallback')

    def __str__(self) -> str:
        status = {0: "", -1: "= "}.get(self.status, f"={self.status} ")
        return f"{' '.join(map(str, sorted(self.codes)))} {status}{self.target}"


def to_error_page(value: Any) -> ErrorPage:
    words = value.split() if isinstance(value, str) else []
    codes = []
    while words and words[0].isdigit():
        codes.append(int(words.pop(0)))
    status = 0
    if words and words[0].startswith("="):
        text = words.pop(0)[1:]
        status = int(text) if text.isdigit() else -1
        if text and not text.isdigit():
            words = []
    if len(words) == 1 and codes and all(300 <= c <= 599 for c in codes) and (status <= 0 or 100 <= status <= 599) \
            and (re.match(r"^/\S*$", words[0]) or re.match(r"^@[A-Za-z0-9_-]{1,64}$", words[0])):
        return ErrorPage(frozenset(codes), status, words[0])
    raise Invalid(f"expected an error page like '404 /404.html', '500 502 503 504 /50x.html', '404 =200 /index.html' "
                  f"or '502 = @fallback' (codes 300-599, then =CODE or =, then a path or a named location), "
                  f"got {value!r}")


def to_server_name(value: Any) -> str:
    """A host name, '*.example.com' or 'example.*'."""
    if isinstance(value, str):
        name = value.strip().lower().rstrip(".")
        plain = name[2:] if name.startswith("*.") else name[:-2] if name.endswith(".*") else name
        if plain and re.match(r"^[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?$", plain):
            return name
    raise Invalid(f"expected a server name like 'example.com', '*.example.com' or 'example.*', got {value!r}")


def to_method(value: Any) -> str:
    """An HTTP method name (a token), upper case: 'get' -> 'GET'."""
    if isinstance(value, str) and re.match(r"^[A-Za-z]{1,20}$", value.strip()):
        return value.strip().upper()
    raise Invalid(f"expected an HTTP method like 'GET' or 'POST', got {value!r}")


def to_proxy_url(value: Any) -> str:
    if isinstance(value, str) and re.match(r"^(https?|h2c|grpcs?)://[^/\s?#]+(/\S*)?$", value.strip()):
        return value.strip()
    raise Invalid(f"expected 'http://upstream-name', 'http://host:port', https:// for TLS, h2c:// or grpc:// for "
                  f"HTTP/2 without TLS, grpcs:// for HTTP/2 with TLS, or any of them with a path, got {value!r}")


def to_hidden_name(value: Any) -> str:
    """A file or directory name to hide ('.git'), or a prefix with '*' ('.*')."""
    if isinstance(value, str) and value.strip() and "/" not in value and value.strip() not in (".", ".."):
        return value.strip()
    raise Invalid(f"expected a file or directory name like '.git', or '.*' for every dot file, got {value!r}")


def to_ext_mimetypes(value: Any) -> tuple:
    """{ md = "text/markdown" } -> (("md", "text/markdown"),): hashable, the extension in lower case."""
    if isinstance(value, dict):
        out = []
        for ext, kind in value.items():
            name = str(ext).strip().lower().lstrip(".")
            if not name or not isinstance(kind, str) or not re.match(r"^[\w.+-]+/[\w.+-]+(\s*;.*)?$", kind.strip()):
                raise Invalid(f"expected a media type like 'text/markdown' for {ext!r}, got {kind!r}", f".{ext}")
            out.append((name, kind.strip()))
        return tuple(sorted(out))
    raise Invalid(f"expected a table of extensions and media types like {{ md = \"text/markdown\" }}, got {value!r}")


@dataclass(frozen=True)
class FileServerConfig:
    """``file_server = { root = "...", ... }``: static files of a location."""

    root: str = key(to_str, REQUIRED, "directory served")
    prefix: str = key(to_str, "", "taken off the request's path before it is looked up under root (nginx's alias; "
                                  "the Rust wmproxy's prefix): with '/static', /static/a.css is root/a.css")
    index: tuple = key(list_of(to_str), ("index.html",), "files tried for a directory, in order")
    browse: bool = key(to_bool, False, "list a directory without an index file (else 403)")
    cache_time: float = key(to_duration, 0.0, "Cache-Control max-age sent with files (0: none)")
    path404: str = key(to_str, "", "file under root answered, with status 404, for a missing path")
    try_paths: tuple = key(list_of(to_str), (), "fallbacks tried when a path is missing, with {path}, e.g. "
                                                "['{path}.html', '/index.html'], or a rewrite 'REGEX SOURCE REPLACEMENT' "
                                                "('^/a/(.*) {path} /b/$1'); the last may be a named location "
                                                "'@fallback' or a status '=404' (nginx's try_files)")
    precompressed: bool = key(to_bool, True, "serve a .br or .gz sibling to a client that accepts it")
    gzip: bool = key(to_bool, True, "without such a sibling, compress text-like files (text/*, JSON, JavaScript, "
                                    "XML, SVG; 256 bytes or more) on the fly for a client that accepts gzip")
    follow_symlinks: bool = key(to_bool, False, "serve symlinks that point outside root (else 403)")
    hide: tuple = key(list_of(to_hidden_name), (), "names never served nor listed, at any depth (404): '.git', "
                                                   "'.env', '.*' for every dot file")
    cors: bool = key(to_bool, False, "Access-Control-Allow-Origin: * (and -Allow-Headers) on its answers")
    robots: str = key(to_str, "", "the text answered for /robots.txt ('': the file under root, if any)")
    ext_mimetype: tuple = key(to_ext_mimetypes, (), "Content-Type by file extension, over the built-in table: "
                                                    "{ md = \"text/markdown\" }")

    def validate(self) -> None:
        if not os.path.isdir(self.root):
            raise Invalid(f"no such directory: {self.root}", ".root")
        if self.prefix and not self.prefix.startswith("/"):
            raise Invalid(f"expected a path like '/static', got {self.prefix!r}", ".prefix")


def to_rate(value: Any) -> float:
    """Requests per second from '10r/s', '600r/m' or a number."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    if isinstance(value, str):
        m = re.match(r"^\s*(\d+(?:\.\d+)?)\s*r/(s|m)\s*$", value)
        if m and float(m.group(1)) > 0:
            return float(m.group(1)) / (60 if m.group(2) == "m" else 1)
    raise Invalid(f"expected a rate like '10r/s', '600r/m' or 5, got {value!r}")


@dataclass(frozen=True)
class LimitReqConfig:
    """``limit_req = { rate = "10r/s", burst = 20 }``: requests per client address."""

    rate: float = key(to_rate, REQUIRED, "requests per second a client address may make")
    burst: int = key(int_range(0, 1_000_000), 0, "requests beyond the rate allowed at once")


HTTP_ACTIONS = ("proxy_url", "file_server", "static_response", "redirect")


@dataclass(frozen=True)
class HttpLocationConfig:
    """``[[http.server.location]]``: what a path of a server does (exactly one action)."""

    rule: LocationRule = key(to_location_rule, LocationRule("prefix", "/"), "the paths it matches")
    method: tuple = key(list_of(to_method), (), "only requests with one of these methods (empty: any)")
    host: tuple = key(list_of(to_server_name), (), "only requests for one of these hosts ('a.test', '*.a.test', "
                                                   "'a.*'; empty: any)")
    client_ip: tuple = key(list_of(to_network), (), "only requests from these networks (empty: any; unlike "
                                                    "deny_ip, another location may take the others)")
    scheme: str = key(one_of(("", "http", "https")), "", "only requests that came over http or https ('': both)")
    proxy_url: str = key(to_proxy_url, "", "reverse proxy to 'http://upstream-name' or a URL")
    file_server: Optional[FileServerConfig] = section(FileServerConfig, "static files")
    static_response: str = key(to_str, "", "answer with this text, exactly ({client_ip}, {host}, {url} filled in)")
    redirect: str = key(to_str, "", "redirect to this URL ({host}, {url} filled in)")
    status: int = key(int_range(0, 599), 0, "status of static_response (200) or redirect (302)")
    headers: tuple = key(list_of(to_header_rule), (), "header rules: 'proxy ...' on the request upstream, "
                                                      "the others on the response")
    allow_ip: tuple = key(list_of(to_network), (), "client networks allowed (empty: all)")
    deny_ip: tuple = key(list_of(to_network), (), "client networks refused with 403 (checked first)")
    limit_req: Optional[LimitReqConfig] = section(LimitReqConfig, "rate limit per client address (429 beyond)")
    rate_limit: float = rate_limit_key("each request's answer to the client and body to the server")
    client_max_body_size: Optional[int] = key(to_size, None, "largest request body here (413 beyond; 0: no limit; "
                                                             "default: the server's)")
    error_page: tuple = key(list_of(to_error_page), (), "pages for the errors wmproxy answers itself here (404, 403, "
                                                        "429, 502, 504...): '404 /404.html', '502 =200 @fallback' "
                                                        "(replace the server's error_page when given)")
    access_log: str = key(to_str, "", "access log line format with {client_ip}, {host}, {url}, {path}, {query}, "
                                      "{method}, {status}, {bytes}, {time}, {upstream}, {date}, {referer}, "
                                      "{user_agent}, {cookie}; 'off' for none ('': the default line)")
    proxy_connect_timeout: float = key(to_duration, 10.0, "proxy_url: time to connect to a server")
    proxy_read_timeout: float = key(to_duration, 60.0, "proxy_url: time a server may be silent")
    proxy_ignore_client_abort: bool = key(to_bool, False, "proxy_url: a request goes on at the server when its "
                                          "client closes (or half-closes) its connection before the answer (as "
                                          "nginx's; false: the server's connection is closed, 499 logged)")
    proxy_ssl_ca: str = key(to_str, "", "https proxy_url: CA file the servers are verified with ('' = system store)")
    proxy_ssl_name: str = key(to_str, "", "https proxy_url: the name their certificates must carry (and SNI); "
                                          "default: proxy_url's host")

    def validate(self) -> None:
        if self.proxy_ssl_ca and not os.path.isfile(self.proxy_ssl_ca):
            raise Invalid(f"no such file: {self.proxy_ssl_ca}", ".proxy_ssl_ca")
        if self.file_server is not None:
            for i, entry in enumerate(self.file_server.try_paths):
                if " " in entry:
                    words = entry.split(" ", 2)
                    try:
                        re.compile(words[0])
                    except re.error as e:
                        raise Invalid(f"bad regular expression {words[0]!r}: {e}", f".file_server.try_paths[{i}]") \
                            from None
                    if len(words) != 3 or not words[2].strip():
                        raise Invalid(f"expected a path like '{{path}}.html' or a rewrite 'REGEX SOURCE REPLACEMENT' "
                                      f"like '^/a/(.*) {{path}} /b/$1', got {entry!r}", f".file_server.try_paths[{i}]")
                if entry.startswith(("@", "=")) and i != len(self.file_server.try_paths) - 1:
                    raise Invalid(f"{entry!r}: a named location or a status comes last in try_paths",
                                  f".file_server.try_paths[{i}]")
                if entry.startswith("=") and not (entry[1:].isdigit() and 200 <= int(entry[1:]) <= 599):
                    raise Invalid(f"expected a status like '=404', got {entry!r}", f".file_server.try_paths[{i}]")
        actions = [a for a in HTTP_ACTIONS if getattr(self, a)]
        if len(actions) != 1:
            raise Invalid(f"a location does exactly one of {', '.join(HTTP_ACTIONS)}; "
                          f"got {', '.join(actions) or 'none'}", "")


@dataclass(frozen=True)
class HttpServerConfig:
    """``[[http.server]]``: a virtual server, picked by the request's Host among those on its bind."""

    bind: tuple = key(list_of(to_addr), REQUIRED, "listening address or addresses", aliases=("bind_addr",))
    server_name: tuple = key(list_of(to_server_name), (), "names it answers (empty: the default server)")
    location: tuple = key(table_list(HttpLocationConfig), REQUIRED, "its locations")
    headers: tuple = key(list_of(to_header_rule), (), "header rules for every location (before the location's)")
    error_page: tuple = key(list_of(to_error_page), (), "pages for the errors wmproxy answers itself (404, 403, 429, "
                                                        "502, 504...), for locations without their own: "
                                                        "'404 /404.html', '502 = @fallback'")
    client_read_timeout: float = key(to_duration, 60.0, "the keep-alive wait between requests, the longest "
                                                        "silence while a client sends, and the longest wait for a "
                                                        "client to take bytes of its answer")
    client_header_timeout: float = key(to_duration, 60.0, "deadline for a whole request head (and TLS handshake) "
                                                          "from its first byte (408 beyond)")
    client_body_timeout: float = key(to_duration, 60.0, "the longest silence while a request body arrives, and its "
                                                        "deadline: this plus its length at client_body_min_rate (408)")
    client_body_min_rate: int = key(to_size, 1024, "bytes a second a request body must arrive at, at least")
    client_max_body_size: int = key(to_size, 1 << 20, "largest request body, as nginx's (413 beyond; 0: no limit); "
                                                      "a location may say otherwise")
    max_header_size: int = key(to_size, 65536, "largest request head (431 beyond)")
    max_headers: int = key(int_range(1, 10000), 100, "most header lines in a request (431 beyond)")
    max_connections_per_ip: int = key(int_range(0, 1_000_000), 1000, "concurrent connections of one client address "
                                                                     "on its binds (0: no limit)")
    proxy_protocol: bool = proxy_protocol_key("its binds (every server on a bind must say the same)")
    proxy_protocol_from: tuple = proxy_protocol_from_key("proxy_protocol")
    http2: bool | str = key(to_http2, True, "HTTP/2 beside HTTP/1.1: true offers h2 by ALPN on TLS binds and takes h2c with "
                                     "prior knowledge (the client preface) on plain ones; \"h2c\" (plain binds) says "
                                     "the same; false: HTTP/1.1 only")
    http2_max_concurrent_streams: int = key(int_range(1, 1000), 128, "HTTP/2 streams one connection may have open "
                                                                     "at once (SETTINGS_MAX_CONCURRENT_STREAMS)")
    http2_header_table_size: int = key(int_range(0, 65536), 4096, "the HPACK table the client may fill "
                                                                 "(SETTINGS_HEADER_TABLE_SIZE); max_header_size bounds "
                                                                 "a decoded header list")
    acme: bool = key(to_bool, False, "TLS on this server's binds with certificates for each server_name obtained and "
                                     "renewed from the ACME directory (acme_directory), instead of cert and key")
    cert: str = key(to_str, "", "PEM certificate: TLS on this server's binds")
    # last: from here on, 'key' in this class body names this field, not the declaring function
    key: str = key(to_str, "", "PEM private key for cert")

    def validate(self) -> None:
        check_proxy_protocol(self.proxy_protocol, self.proxy_protocol_from, "proxy_protocol")
        if bool(self.cert) != bool(self.key):
            raise Invalid("cert and key go together", ".key")
        if self.acme and self.cert:
            raise Invalid("acme = true obtains this server's certificates: remove cert and key, or acme", ".acme")
        if self.acme and not self.server_name:
            raise Invalid("acme = true needs server_name: the names to obtain certificates for", ".server_name")
        if self.http2 == "h2c" and self.tls:
            raise Invalid("h2c is HTTP/2 without TLS, and this server has a cert: true offers h2 by ALPN", ".http2")
        if not self.location:
            raise Invalid("a server needs at least one location", ".location")
        names = [loc.rule.text for loc in self.location if loc.rule.kind == "named"]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise Invalid(f"two locations are named {name}", ".location")
        if len(names) == len(self.location):
            raise Invalid("a server needs a location that a path reaches (not only named ones)", ".location")
        wanted = [(f".error_page[{j}]", page.target) for j, page in enumerate(self.error_page)]
        for i, loc in enumerate(self.location):
            wanted += [(f".location[{i}].error_page[{j}]", page.target) for j, page in enumerate(loc.error_page)]
            if loc.file_server is not None:
                wanted += [(f".location[{i}].file_server.try_paths[{j}]", entry)
                           for j, entry in enumerate(loc.file_server.try_paths)]
        for where, target in wanted:
            if target.startswith("@") and target not in names:
                raise Invalid(f"no location named {target} on this server (named: {', '.join(names) or 'none'})",
                              where)

    @property
    def tls(self) -> bool:
        """Whether its binds speak TLS (a cert, or ACME's)."""
        return bool(self.cert) or self.acme


@dataclass(frozen=True)
class HttpUpstreamServerConfig:
    """One server of an http upstream: ``{ addr = "127.0.0.1:8080", weight = 2 }``."""

    addr: Addr = key(to_addr, REQUIRED, "server address")
    weight: int = key(int_range(1, 1000), 1, "share of requests (round robin by weight)")
    max_fails: int = key(int_range(0, 1000), 1, "failures within fail_timeout that take it out (0: never)")
    fail_timeout: float = key(to_duration, 10.0, "the window for max_fails, and how long it stays out")


@dataclass(frozen=True)
class HealthCheckConfig:
    """``health_check = { path = "/health", interval = "5s" }``: active checks of each server."""

    path: str = key(to_str, "/", "path asked with GET; a 2xx or 3xx answer is healthy")
    interval: float = key(to_duration, 5.0, "time between two checks of a server")
    timeout: float = key(to_duration, 2.0, "time a check may take")
    rise: int = key(int_range(1, 100), 2, "healthy checks in a row that bring a server back")
    fall: int = key(int_range(1, 100), 3, "failed checks in a row that take a server out")

    def validate(self) -> None:
        if not self.path.startswith("/"):
            raise Invalid("expected a path starting with /", ".path")
        if self.interval <= 0:
            raise Invalid("interval must be more than 0", ".interval")


@dataclass(frozen=True)
class HttpUpstreamConfig:
    """``[[http.upstream]]``: servers a ``proxy_url = "http://name"`` balances over."""

    name: str = key(to_str, REQUIRED, "the name proxy_url refers to")
    server: tuple = key(table_list(HttpUpstreamServerConfig), REQUIRED, "the servers")
    method: str = key(one_of(("round_robin", "least_conn", "ip_hash")), "round_robin", "how a request picks "
                                                                                       "its server")
    keepalive: int = key(int_range(0, 10000), 128, "idle connections kept open to each server")
    send_proxy_protocol: str = key(one_of(("", "v1", "v2")), "", "start each connection to a server with a PROXY "
                                   "protocol header of this version naming the client; such a connection then serves "
                                   "that client connection's requests only (HAProxy's private connections)")
    health_check: Optional[HealthCheckConfig] = section(HealthCheckConfig, "active health checks")
    protocol: str = key(one_of(("http/1.1", "h2")), "http/1.1", "what is spoken to the servers: h2 is HTTP/2, "
                        "many requests over few connections (h2c without TLS, ALPN h2 with https://); "
                        "proxy_url's h2c://, grpc:// and grpcs:// say h2 too")

    def validate(self) -> None:
        if not self.server:
            raise Invalid("an upstream needs at least one server", ".server")
        if self.protocol == "h2" and self.send_proxy_protocol:
            raise Invalid("send_proxy_protocol needs a connection per client, and h2 carries many clients' requests "
                          "on one", ".send_proxy_protocol")


@dataclass(frozen=True)
class HttpConfig:
    """``[http]``: reverse proxy, static files (names as in the Rust wmproxy)."""

    server: tuple = key(table_list(HttpServerConfig), (), "virtual servers")
    upstream: tuple = key(table_list(HttpUpstreamConfig), (), "upstream groups")
    real_ip_from: tuple = key(list_of(to_network), (), "HTTP proxies in front whose real_ip_header is believed "
                                                       "(nginx set_real_ip_from): it gives the client's address")
    real_ip_header: str = key(to_str, "X-Forwarded-For", "the header those proxies put the client's address in; of a "
                                                         "list, the right-most address not in real_ip_from is taken")

    def validate(self) -> None:
        _unique_names(self.upstream, "upstream", ".upstream")
        if not self.real_ip_header or not all(c.isalnum() or c in "-_" for c in self.real_ip_header):
            raise Invalid(f"expected a header name like 'X-Forwarded-For' or 'X-Real-IP', got "
                          f"{self.real_ip_header!r}", ".real_ip_header")
        first_on: dict[str, tuple[int, HttpServerConfig]] = {}  # (the socket's settings: alike on one address)
        for i, srv in enumerate(self.server):
            for bind in srv.bind:
                j, first = first_on.setdefault(str(bind), (i, srv))
                if first.tls != srv.tls:
                    raise Invalid(f"{bind} is shared with server[{j}]: servers on one address are all TLS "
                                  f"(cert and key, or acme) or none", f".server[{i}].cert")
                if (bool(first.http2), first.http2_max_concurrent_streams, first.http2_header_table_size) != (
                        bool(srv.http2), srv.http2_max_concurrent_streams, srv.http2_header_table_size):
                    raise Invalid(f"{bind} is shared with server[{j}]: servers on one address have the same http2, "
                                  f"http2_max_concurrent_streams and http2_header_table_size", f".server[{i}].http2")
                if (first.proxy_protocol, set(first.proxy_protocol_from)) != (srv.proxy_protocol,
                                                                             set(srv.proxy_protocol_from)):
                    raise Invalid(f"{bind} is shared with server[{j}]: servers on one address have the same "
                                  f"proxy_protocol and proxy_protocol_from", f".server[{i}].proxy_protocol")

    def upstream_named(self, name: str) -> Optional[HttpUpstreamConfig]:
        return next((u for u in self.upstream if u.name == name), None)
