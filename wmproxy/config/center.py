"""``[center]`` (the link, both ends), its accounts, and ``[[mappings]]`` (what a client publishes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..prot.frame import check_client_id
from .keys import (
    Addr, Invalid, REQUIRED, int_range, key, list_of, one_of, optional_addr, section, table_list, to_addr, to_bool,
    to_domain, to_duration, to_header_rule, to_port_range, to_size, to_str, proxy_protocol_key,
    proxy_protocol_from_key, check_proxy_protocol, rate_limit_key, to_bandwidth,
)


@dataclass(frozen=True)
class CenterUser:
    """``[[center.users]]``: one account a center client may log in with."""

    username: str = key(to_str, REQUIRED, "the client's name")
    password: str = key(to_str, REQUIRED, "its password (never sent: the client proves it with HMAC)")
    disabled: bool = key(to_bool, False, "refuse its logins (and cut its links at the reload that sets it)")
    max_mappings: int = key(int_range(0, 100_000), 0, "mappings its clients may publish, all together (0: any)")
    allow_ports: tuple = key(list_of(to_port_range), (), "ports its tcp, udp and proxy mappings may open, instead of "
                                                         "the server's allow_ports (empty: the server's)")
    max_connections: int = key(int_range(0, 1_000_000), 0, "connections open at once to its tcp and proxy mappings "
                                                           "and https ones passed through, all together (0: any)")
    bandwidth: float = key(to_bandwidth, 0.0, "bytes a second its mappings' connections may move all together, each "
                                              "way ('10m/s'; 0: no limit): a token bucket they share")
    mapping_max_connections: int = key(int_range(0, 1_000_000), 0, "the same, for each of its mappings alone")
    mapping_bandwidth: float = key(to_bandwidth, 0.0, "the same, for each of its mappings alone")
    max_streams: int = key(int_range(0, 1_000_000), 0, "streams its clients may have open on this server at once, "
                                                       "all their links together (0: the server's max_streams)")


@dataclass(frozen=True)
class CenterConfig:
    """``[center]``: the center link. ``bind`` makes this end the server, ``server`` the client."""

    bind: Optional[Addr] = key(optional_addr, None, "server: address the center clients connect to")
    server: tuple = key(list_of(to_addr), (), "client: the center server to link to, or a list of them")
    servers_mode: str = key(one_of(("all", "failover")), "all", "client with several servers: all (a link to each, "
                            "the mappings published on each) or failover (one link at a time, in order)")
    tls: bool = key(to_bool, True, "TLS on the link (plain TCP only with tls = false, with a warning)")
    cert: str = key(to_str, "", "PEM certificate (server; client too for mutual TLS); \"auto\": this install's own, "
                                "made on first start in state_dir (key = \"auto\" too)")
    client_ca: str = key(to_str, "", "server: require client certificates signed by this CA; \"pin\": require one, "
                                     "pinned per account on first use in state_dir/known_clients")
    ca: str = key(to_str, "", "client: CA file to verify the server with ('' = the system store); \"pin\": pin its "
                              "certificate on first use in state_dir/known_servers (weaker than a CA)")
    state_dir: str = key(to_str, "", "where cert = \"auto\" and the pins live (default: $STATE_DIRECTORY, "
                                     "/var/lib/wmproxy as root, else ~/.local/state/wmproxy)")
    server_name: tuple = key(list_of(to_str), (), "client: name the server certificate must carry (default: the "
                                                 "server's host); one for every server, or a list in their order")
    client_id: str = key(to_str, "", "client: its id, told to the server (one link per id; default: the host "
                                     "name and a digest of the config file's path)")
    username: str = key(to_str, "", "client: who to log in as; server: the single account")
    password: str = key(to_str, "", "client: its password; server: the single account's")
    users: tuple = key(table_list(CenterUser), (), "server: several accounts")
    heartbeat: float = key(to_duration, 15.0, "PING an idle link this often; 3 x without a frame = dead")
    window: int = key(to_size, 262144, "per-stream flow-control window to start with (the same on both ends)")
    max_window: int = key(to_size, 4 << 20, "a busy stream's window grows up to this (= window: never grows); "
                                             "the same on both ends: more credit is a protocol error")
    max_frame: int = key(to_size, 1 << 20, "largest frame body accepted")
    max_streams: int = key(int_range(1, 1_000_000), 10000, "server: streams one account's clients may have open "
                                                          "at once, all their links together (one address's, "
                                                          "without accounts); CREATEs past it are refused and the "
                                                          "link goes on (as HTTP/2's max concurrent streams)")
    allow_ports: tuple = key(list_of(to_port_range), (), "server: ports a client's tcp, udp and proxy mappings "
                                                          "may open (empty: any)")
    udp_timeout: float = key(to_duration, 60.0, "server: a udp mapping's session with one public peer ends after "
                                                "this long without a datagram")
    map_http_bind: Optional[Addr] = key(optional_addr, None, "server: the shared listener of http mappings "
                                                             "(routed by Host)")
    map_https_bind: Optional[Addr] = key(optional_addr, None, "server: the shared TLS listener of https mappings "
                                                              "(routed by SNI, then by Host)")
    map_tcp_bind: Optional[Addr] = key(optional_addr, None, "server: the shared port of tcp mappings that name no "
                                                            "remote_bind (one mapping, or one group, at a time)")
    map_proxy_bind: Optional[Addr] = key(optional_addr, None, "server: the same for proxy mappings")
    map_cert: tuple = key(list_of(to_str), (), "server: PEM certificates for map_https_bind (chosen by SNI; none: "
                                               "only tls_passthrough mappings)")
    map_key: tuple = key(list_of(to_str), (), "server: their keys, in the same order")
    map_acme: bool = key(to_bool, False, "server: certificates for the domain of every https mapping whose TLS ends "
                                         "here, obtained and renewed from the ACME directory (acme_directory) while "
                                         "its client is linked")
    map_acme_domains: tuple = key(list_of(to_domain), (), "server: with map_acme, the mapping domains certificates "
                                                          "are asked for: 'app.example.com', '*.example.com' for any "
                                                          "name below it (empty: any domain a linked client maps)")
    auth_fail_limit: int = key(int_range(0, 1_000_000), 10, "server: failed link logins from one address within "
                                                            "auth_fail_window before it is refused (0: never)")
    auth_fail_window: float = key(to_duration, 60.0, "server: the window of auth_fail_limit, and how long an "
                                                     "address is refused after it")
    max_connections_per_ip: int = key(int_range(0, 1_000_000), 1000, "server: concurrent connections of one client "
                                                                     "address on bind, map_http_bind, map_https_bind "
                                                                     "and each mapping port (0: no limit)")
    proxy_protocol: bool = proxy_protocol_key("server: bind")
    proxy_protocol_from: tuple = proxy_protocol_from_key("proxy_protocol")
    map_http2: bool = key(to_bool, True, "server: HTTP/2 from public clients on map_https_bind (ALPN h2, where TLS "
                                         "ends here) and map_http_bind (h2c with prior knowledge), beside HTTP/1.1")
    map_proxy_protocol: bool = proxy_protocol_key("server: map_http_bind, map_https_bind and every mapping port")
    map_proxy_protocol_from: tuple = proxy_protocol_from_key("map_proxy_protocol")
    # last: from here on, 'key' in this class body names this field, not the declaring function
    key: str = key(to_str, "", "PEM private key for cert")

    def validate(self) -> None:
        check_proxy_protocol(self.proxy_protocol, self.proxy_protocol_from, "proxy_protocol")
        check_proxy_protocol(self.map_proxy_protocol, self.map_proxy_protocol_from, "map_proxy_protocol")
        if self.client_id and (why := check_client_id(self.client_id)) is not None:
            raise Invalid(why, ".client_id")
        if (self.bind is None) == (not self.server):
            raise Invalid("set bind (this end is the center server) or server (this end is a center client), "
                          "not both and not neither", ".bind")
        if len(self.server_name) > 1 and len(self.server_name) != len(self.server):
            raise Invalid(f"server_name: one name for every server, or one per server ({len(self.server)}), "
                          f"not {len(self.server_name)}", ".server_name")
        if len(set(map(str, self.server))) != len(self.server):
            raise Invalid("a server is listed twice", ".server")
        if self.tls and self.bind is not None and not (self.cert and self.key):
            raise Invalid("a TLS center server needs cert and key (or tls = false, plain TCP)", ".cert")
        if bool(self.cert) != bool(self.key) or (self.cert == "auto") != (self.key == "auto"):
            raise Invalid("cert and key go together (\"auto\" both, or two files)", ".key")
        if self.client_ca == "pin" and (self.bind is None or not self.tls):
            raise Invalid("client_ca = \"pin\" is for a TLS center server", ".client_ca")
        if self.ca == "pin" and (self.bind is not None or not self.tls):
            raise Invalid("ca = \"pin\" is for a TLS center client", ".ca")
        if self.map_acme and (self.bind is None or self.map_https_bind is None):
            raise Invalid("map_acme gets certificates for map_https_bind: set map_https_bind (on a center server)",
                          ".map_acme")
        if len(self.map_cert) != len(self.map_key):
            raise Invalid("map_cert and map_key need one key per certificate", ".map_key")
        if bool(self.username) != bool(self.password):
            raise Invalid("username and password go together", ".password")
        if self.heartbeat <= 0:
            raise Invalid("heartbeat must be more than 0", ".heartbeat")
        if not 16384 <= self.window <= 1 << 30:
            raise Invalid("window must be from 16k to 1g", ".window")
        if not self.window <= self.max_window <= 1 << 30:
            raise Invalid("max_window must be from window to 1g", ".max_window")
        if not 65536 <= self.max_frame <= (1 << 24) - 1:
            raise Invalid("max_frame must be from 64k to 16m - 1", ".max_frame")

    @property
    def is_server(self) -> bool:
        return self.bind is not None

    @property
    def state_path(self) -> str:
        """state_dir, or its default."""
        from ..center.trust import default_state_dir

        return self.state_dir or default_state_dir()

    def user(self, name: str) -> Optional[CenterUser]:
        """The [[center.users]] account ``name``, if it is one."""
        return next((u for u in self.users if u.username == name), None)

    def accounts(self) -> dict[str, str]:
        """username -> password; empty when the server takes anyone (no credentials set)."""
        out = {u.username: u.password for u in self.users}
        if self.username:
            out[self.username] = self.password
        return out


MAPPING_MODES = ("tcp", "http", "https", "proxy", "udp")


@dataclass(frozen=True)
class MappingHealthConfig:
    """``health_check = { type = "http", path = "/health" }`` on a mapping (center client): its
    local service is checked, and withdrawn from the server while it fails (frp's healthCheck)."""

    type: str = key(one_of(("tcp", "http")), "tcp", "tcp: a connection is opened; http: GET path, then the status")
    path: str = key(to_str, "/", "http: the path asked")
    status: tuple = key(list_of(int_range(100, 599)), (), "http: the statuses that are healthy (empty: 2xx and 3xx)")
    interval: float = key(to_duration, 10.0, "time between two checks")
    timeout: float = key(to_duration, 3.0, "time a check may take")
    fails: int = key(int_range(1, 100), 3, "failed checks in a row that withdraw the mapping")
    passes: int = key(int_range(1, 100), 1, "passed checks in a row that publish it again")

    def validate(self) -> None:
        if not self.path.startswith("/") or any(c in self.path for c in " \r\n"):
            raise Invalid(f"expected a path like '/health', got {self.path!r}", ".path")
        if self.interval <= 0 or self.timeout <= 0:
            raise Invalid("interval and timeout must be more than 0", ".interval")


@dataclass(frozen=True)
class MappingConfig:
    """``[[mappings]]`` (center client): a private service the center server publishes."""

    name: str = key(to_str, REQUIRED, "the mapping's name (unique on this client)")
    mode: str = key(one_of(MAPPING_MODES), REQUIRED, "how it is published")
    local_addr: Optional[Addr] = key(optional_addr, None, "tcp, udp, http, https: the private service, as this "
                                                          "client reaches it")
    remote_bind: Optional[Addr] = key(optional_addr, None, "tcp, udp, proxy: the public address the center server "
                                                           "opens (tcp, proxy: none takes the server's map_tcp_bind "
                                                           "or map_proxy_bind)")
    domain: str = key(to_domain, "", "http, https: the Host it answers on the server's map_http(s)_bind")
    headers: tuple = key(list_of(to_header_rule), (), "http: header rules on requests and responses")
    username: str = key(to_str, "", "proxy: user its forward proxy asks for (with password)")
    password: str = key(to_str, "", "proxy: password its forward proxy asks for")
    tls_passthrough: bool = key(to_bool, False, "https: route by SNI and pass the TLS bytes through to local_addr "
                                                "(the service terminates TLS) instead of terminating on the server")
    local_http2: bool = key(to_bool, False, "http, https: the service speaks HTTP/2 without TLS (h2c: a gRPC "
                                            "service); the server sends it every request as an HTTP/2 stream over one "
                                            "connection, whatever the public client spoke")
    proxy_protocol: str = key(one_of(("", "v1", "v2")), "", "tcp, http, https: start each connection to local_addr "
                              "with a PROXY protocol header of this version naming the public visitor (the server "
                              "tells it over the link)")
    rate_limit: float = rate_limit_key("each connection to local_addr (tcp, http, https)")
    group: str = key(to_str, "", "tcp, proxy, http, https: clients whose mappings name one group (with one "
                                 "group_key) share its port or domain: the server balances over them")
    group_key: str = key(to_str, "", "the group's shared secret (required with group)")
    health_check: Optional[MappingHealthConfig] = section(MappingHealthConfig, "tcp, http, https: check the local "
                                                          "service; withdraw the mapping while it fails")

    @property
    def wire_mode(self) -> str:
        """The mode named in MAPPING: 'tls' for an https mapping passed through by SNI; '+h2'
        after http or https for a service that speaks HTTP/2 (local_http2)."""
        if self.tls_passthrough:
            return "tls"
        return f"{self.mode}+h2" if self.local_http2 else self.mode

    def validate(self) -> None:
        if self.group and self.mode == "udp":
            raise Invalid("groups are for tcp, proxy, http and https mappings", ".group")
        if self.group and not self.group_key:
            raise Invalid("a group needs a group_key (the secret its members share)", ".group_key")
        if self.group_key and not self.group:
            raise Invalid("group_key goes with group", ".group")
        if len(self.group) > 255 or len(self.group_key.encode()) > 255:
            raise Invalid("group and group_key are at most 255 bytes", ".group")
        if self.health_check is not None and (self.mode not in ("tcp", "http", "https") or (
                self.health_check.type == "http" and self.mode == "https" and self.tls_passthrough)):
            raise Invalid("health_check is for tcp, http and https mappings (type = \"tcp\" for one passed through "
                          "by SNI: its service speaks TLS)", ".health_check")
        if self.proxy_protocol and self.mode not in ("tcp", "http", "https"):
            raise Invalid(f"proxy_protocol is for tcp, http and https mappings (a {self.mode} mapping has no "
                          f"connection to start with it)", ".proxy_protocol")
        if self.tls_passthrough and self.mode != "https":
            raise Invalid("tls_passthrough is for mode = \"https\" mappings", ".tls_passthrough")
        if self.local_http2 and (self.mode not in ("http", "https") or self.tls_passthrough):
            raise Invalid("local_http2 is for http and https mappings whose TLS ends on the server",
                          ".local_http2")
        if self.local_http2 and self.proxy_protocol:
            raise Invalid("proxy_protocol needs a connection per visitor, and local_http2 carries every visitor's "
                          "requests on one", ".proxy_protocol")
        if self.local_http2 and self.health_check is not None and self.health_check.type == "http":
            raise Invalid("an HTTP/1.1 health check cannot ask an HTTP/2 service: type = \"tcp\"", ".health_check")
        if self.mode in ("tcp", "udp", "http", "https") and self.local_addr is None:
            raise Invalid(f"a {self.mode} mapping needs local_addr (the private service)", ".local_addr")
        if self.mode == "https" and not self.domain:
            raise Invalid("an https mapping needs domain (the name it answers)", ".domain")
        if self.mode == "udp" and self.remote_bind is None:
            raise Invalid("a udp mapping needs remote_bind (the public address to open)", ".remote_bind")
        if bool(self.username) != bool(self.password):
            raise Invalid("username and password go together", ".password")
        if self.mode == "http" and not self.domain:
            raise Invalid("an http mapping needs domain (the Host it answers)", ".domain")
