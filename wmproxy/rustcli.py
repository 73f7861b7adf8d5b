"""``wmproxy``: the Rust wmproxy's command line (its src/arg.rs), over this project.

Each subcommand builds the config the original would (in the original's keys) and reads it
through config.compat, as a file of the original is read: one translation for both. Then it
serves as ``wmproxy-server`` does (process.serve), or talks to the control API.

Where this differs from the original on purpose, ``--help`` says so: the center link's
password is never sent (an HMAC proves it), TLS certificates are verified, a loopback or
private target is refused by a proxy that other hosts can reach, no pid file is written
unless --pidfile is given, and unknown config keys are errors.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from typing import Any, Optional
from urllib.parse import urlsplit

from . import __version__

PROG = "wmproxy"
DEFAULT_FROM = "127.0.0.1:8869"  # the original's file-server, reverse-proxy and ws-proxy default

DIFFERENCES = """\
differences from the Rust wmproxy, on purpose:
  - the center link's password never crosses the wire (the client proves it with an HMAC);
  - TLS peers are verified: by --cert's file, or, without one, each install makes its own pair
    and the two ends pin each other's certificate on first use (the original's built-in pair,
    private key included, is not shipped);
  - a proxy that other hosts can reach refuses loopback and private targets (allow_targets in a
    config file lets them);
  - no pid file unless --pidfile is given (the original writes wmproxy.pid in the current
    directory);
  - config files: keys neither program knows are errors (the original ignores them silently).
The same files and commands also run under wmproxy-server / wmproxy-client; see
docs/MIGRATING.md."""


def _shared() -> argparse.ArgumentParser:
    """The original's shared flags (struct Shared), on every subcommand."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("shared")
    g.add_argument("--control", metavar="ADDR", help="control API address (default 127.0.0.1:8837; "
                   "the file's own in run)")
    g.add_argument("--disable-stdout", action="store_true", help="no log on the terminal (to /dev/null "
                   "unless the config names a log file)")
    g.add_argument("--disable-control", action="store_true", help="no control API")
    g.add_argument("--daemon", action="store_true", help="detach and run in the background")
    g.add_argument("--forever", action="store_true", help="restart the program when it dies (a supervisor "
                   "such as systemd's Restart=on-failure does this better: conf/systemd)")
    g.add_argument("-v", "--verbose", action="store_true", help="log everything (debug)")
    g.add_argument("--default-level", metavar="LEVEL", help="log level: trace, debug, info, warn, error")
    g.add_argument("--pidfile", metavar="FILE", help="write the process id here (default: none)")
    return p


def make_parser() -> argparse.ArgumentParser:
    shared = _shared()
    p = argparse.ArgumentParser(prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="wmproxy: the Rust wmproxy's commands and config files, served by this "
                                            "project (wmproxy-server and wmproxy-client are its own programs).",
                                epilog=DIFFERENCES)
    p.add_argument("-V", "--version", action="version", version=f"{PROG} {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, text: str, aliases: tuple = ()) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, parents=[shared], aliases=list(aliases),
                              formatter_class=argparse.RawDescriptionHelpFormatter, epilog=DIFFERENCES)

    px = command("proxy", "a forward proxy (HTTP, HTTPS CONNECT, SOCKS5); with -S a center client, with "
                          "--mode server or -c a center server")
    px.add_argument("-b", "--bind", metavar="ADDR", help="the proxy's address (default 127.0.0.1:8090)")
    px.add_argument("-c", "--center-addr", metavar="ADDR", help="center server: the address clients link to")
    px.add_argument("--mode", choices=("server", "client"), help="server: -b is where clients link (the 0.1 way)")
    px.add_argument("--flag", metavar="FLAGS", help="protocols: 'http https socks5' or 7 (1 http, 2 https, 4 socks5)")
    px.add_argument("-S", "--server", metavar="ADDR", help="center client: the center server to link to")
    px.add_argument("--user", metavar="USER", help="the login (of the proxy, and of the center link)")
    px.add_argument("--pass", dest="password", metavar="PASS", help="its password")
    px.add_argument("--udp-bind", metavar="IP", help="SOCKS5 UDP: the address relay sockets bind to")
    for kind in ("http", "https", "tcp", "proxy"):
        px.add_argument(f"--map-{kind}-bind", f"--map-{kind}", dest=f"map_{kind}_bind", metavar="ADDR",
                        help=f"center server: the shared listener of {kind} mappings")
    px.add_argument("--map-cert", metavar="FILE", help="center server: certificate of https mappings")
    px.add_argument("--map-key", metavar="FILE", help="its key")
    px.add_argument("--ts", action="store_true", help="TLS to the center server (verified with --cert, else its "
                    "certificate pinned on first use)")
    px.add_argument("--tc", action="store_true", help="TLS from center clients (--cert/--key, else this install's "
                    "own pair)")
    px.add_argument("--two-way-tls", action="store_true", help="both ends present a certificate (--cert/--key, else "
                    "this install's own, pinned by the other end on first use)")
    px.add_argument("--domain", metavar="NAME", help="the name the center server's certificate carries")
    px.add_argument("--cert", metavar="FILE", help="PEM certificate (server: its own; client: trusted, and its "
                    "own with --two-way-tls)")
    px.add_argument("--key", metavar="FILE", help="its key")
    px.add_argument("-s", "--server-id", type=int, help="the original's proxy id (no effect here)")

    for name, text in (("run", "serve a config file (TOML or YAML, the original's or this project's)"),
                       ("check", "check a config file and say how it was read")):
        c = command(name, text, aliases=("config",) if name == "run" else ())
        c.add_argument("-c", "--config", metavar="FILE", required=True)
    for name, text in (("stop", "stop the running program (through its control API, or its pid file)"),
                       ("reload", "make the running program reload its config file")):
        c = command(name, text)
        c.add_argument("-c", "--config", metavar="FILE", help="the config naming the control API")
        c.add_argument("-u", "--url", metavar="URL", help="the control API, e.g. http://127.0.0.1:8837")

    fs = command("file-server", "serve a directory's files")
    fs.add_argument("-r", "--root", default="", metavar="DIR", help="the directory (default: the current one)")
    fs.add_argument("-l", "--listen", default=DEFAULT_FROM, metavar="ADDR", help=f"address (default {DEFAULT_FROM})")
    fs.add_argument("--listen-ssl", metavar="ADDR", help="a TLS address too (needs --cert/--key)")
    fs.add_argument("--cert", metavar="FILE")
    fs.add_argument("--key", metavar="FILE")
    fs.add_argument("-d", "--domain", metavar="NAME", help="the name it answers")
    fs.add_argument("-b", "--browse", action="store_true", help="list directories without an index file")
    fs.add_argument("--robots", metavar="TEXT", help="the answer to /robots.txt")
    fs.add_argument("--path404", metavar="FILE", help="the page of a missing file")
    fs.add_argument("-c", "--cache-time", metavar="TIME", help="Cache-Control max-age, e.g. 1h")
    fs.add_argument("-e", "--ext-mimetype", action="append", default=[], metavar="EXT=TYPE",
                    help="a Content-Type by extension, e.g. md=text/markdown")
    fs.add_argument("--cors", action="store_true", help="Access-Control-Allow-Origin: *")
    fs.add_argument("-H", "--header", action="append", default=[], metavar="RULE",
                    help="a header rule, e.g. '+ X-Served-By wmproxy'")
    fs.add_argument("--access-log", metavar="FILE", help="access lines to this file")

    rp = command("reverse-proxy", "an HTTP reverse proxy to one server")
    rp.add_argument("-f", "--from", dest="source", default=DEFAULT_FROM, metavar="ADDR",
                    help=f"address (default {DEFAULT_FROM})")
    rp.add_argument("-t", "--to", required=True, metavar="ADDR", help="the server")
    rp.add_argument("-H", "--header", action="append", default=[], metavar="RULE",
                    help="a header rule, e.g. 'proxy x-forward-for {client_ip}'")
    rp.add_argument("--access-log", metavar="FILE", help="access lines to this file")
    rp.add_argument("--tls", action="store_true", help="the server speaks TLS (verified, its certificate naming "
                    "--to's address)")
    rp.add_argument("--ws", action="store_true", help="websockets (they pass through here without it)")

    ws = command("ws-proxy", "websocket <-> TCP bridging")
    ws.add_argument("-f", "--from", dest="source", default=DEFAULT_FROM, metavar="ADDR",
                    help=f"address (default {DEFAULT_FROM})")
    ws.add_argument("-t", "--to", required=True, metavar="ADDR", help="where connections go")
    ws.add_argument("--mode", required=True, choices=("ws2tcp", "tcp2ws", "tcp2wss"),
                    help="ws2tcp: websocket clients to a TCP server; tcp2ws(s): TCP clients to a websocket server")
    ws.add_argument("--domain", metavar="NAME", help="tcp2ws(s): the Host (and TLS name) asked")
    ws.add_argument("--access-log", metavar="FILE", help="accepted (no access lines on [stream] here)")
    ws.add_argument("--ws", action="store_true", help="accepted (the original's; no effect)")

    command("version", "print the version")
    return p


def _common(args: argparse.Namespace, disable_control: bool) -> dict:
    """The original's ConfigOption keys from the shared flags."""
    out: dict[str, Any] = {}
    if args.control:
        out["control"] = args.control
    if args.disable_control or disable_control and not args.control:
        out["disable_control"] = True
    if args.disable_stdout:
        out["disable_stdout"] = True
    if args.verbose:
        out["default_level"] = "trace"
    elif args.default_level:
        out["default_level"] = args.default_level
    if args.pidfile:
        out["pidfile"] = args.pidfile
    return out


def _access(http: dict, file: Optional[str]) -> None:
    if file:
        http["access_log"] = "access"
        http["log_names"] = {"access": file}


def build_original(args: argparse.Namespace) -> dict:
    """The config the original builds for a subcommand (src/arg.rs parse_env), in its keys."""
    if args.command == "proxy":
        proxy: dict[str, Any] = {k: v for k, v in (
            ("bind", args.bind), ("center_addr", args.center_addr), ("mode", args.mode), ("flag", args.flag),
            ("server", args.server), ("username", args.user), ("password", args.password),
            ("udp_bind", args.udp_bind), ("map_http_bind", args.map_http_bind),
            ("map_https_bind", args.map_https_bind), ("map_tcp_bind", args.map_tcp_bind),
            ("map_proxy_bind", args.map_proxy_bind), ("map_cert", args.map_cert), ("map_key", args.map_key),
            ("domain", args.domain), ("cert", args.cert), ("key", args.key), ("server_id", args.server_id))
            if v is not None}
        proxy.update({k: True for k in ("ts", "tc", "two_way_tls") if getattr(args, k)})
        return {**_common(args, False), "proxy": proxy}
    if args.command == "file-server":
        fs: dict[str, Any] = {"root": os.path.abspath(args.root or "."), "browse": args.browse, "cors": args.cors}
        for k in ("robots", "path404", "cache_time"):
            if getattr(args, k):
                fs[k] = getattr(args, k)
        if args.ext_mimetype:
            fs["ext_mimetype"] = dict(_pair(e) for e in args.ext_mimetype)
        server: dict[str, Any] = {"bind_addr": args.listen, "location": [
            {"rule": "/", "file_server": fs, **({"headers": args.header} if args.header else {})}]}
        if args.listen_ssl:
            server.update(bind_ssl=args.listen_ssl, cert=args.cert or "", key=args.key or "")
        if args.domain:
            server["server_name"] = args.domain
        http: dict[str, Any] = {"server": [server]}
        _access(http, args.access_log)
        return {**_common(args, True), "http": http}
    if args.command == "reverse-proxy":
        host = args.to.rsplit(":", 1)[0].strip("[]")
        location: dict[str, Any] = {"rule": "/", "proxy_url": f"{'https' if args.tls else 'http'}://server"}
        if args.tls:
            location["proxy_ssl_name"] = host
        if args.header:
            location["headers"] = args.header
        http = {"upstream": [{"name": "server", "server": [{"addr": args.to}]}],
                "server": [{"bind_addr": args.source, "location": [location]}]}
        _access(http, args.access_log)
        return {**_common(args, True), "http": http}
    if args.command == "ws-proxy":
        server = {"bind_addr": args.source, "up_name": "server", "bind_mode": args.mode}
        if args.domain and args.mode != "ws2tcp":
            server["ws_host"] = args.domain
        return {**_common(args, True), "stream": {"upstream": [{"name": "server", "server": [{"addr": args.to}]}],
                                                  "server": [server]}}
    raise ValueError(args.command)


def _pair(text: str) -> tuple[str, str]:
    ext, sep, kind = text.partition("=")
    if not sep:
        raise SystemExit(f"{PROG}: --ext-mimetype: expected EXT=TYPE like md=text/markdown, got {text!r}")
    return ext, kind


def _control_config(args: argparse.Namespace) -> Any:
    """The config naming the control API of stop and reload: -c FILE, -u URL or --control (its
    token, where one is set, from $WMPROXY_CONTROL_TOKEN). Raises ConfigError."""
    from . import config
    from .errors import ConfigError

    if args.config:
        return config.load(os.path.abspath(args.config))
    url = args.url or args.control or "127.0.0.1:8837"
    parts = urlsplit(url if "//" in url else f"http://{url}")
    try:
        return config.build(config.Config, {"control": f"{parts.hostname}:{parts.port or 80}",
                                            "control_token": os.environ.get("WMPROXY_CONTROL_TOKEN", "")})
    except (config.Invalid, ValueError) as e:
        raise ConfigError("-u" if args.url else "--control", "", f"{url}: {e} ($WMPROXY_CONTROL_TOKEN gives the "
                          f"token)") from None


def _by_pidfile(path: str) -> int:
    try:
        with open(path, encoding="ascii") as f:
            pid = int(f.read().strip())
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError) as e:
        print(f"{PROG} stop: no -c nor -u, and the pid file {path} names no process to stop: {e}", file=sys.stderr)
        return 1
    print(f"stopping process {pid}")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = make_parser().parse_args(argv)
    if args.command == "version":
        print(f"{PROG} {__version__}")
        return 0
    if args.daemon and args.forever:
        print(f"{PROG}: --daemon and --forever cannot go together", file=sys.stderr)
        return 2
    from . import config, control
    from .errors import ConfigError

    if args.command in ("stop", "reload"):
        if args.command == "stop" and not (args.config or args.url or args.control):
            return _by_pidfile(args.pidfile or "wmproxy.pid")
        try:
            status, body = control.call(_control_config(args), "POST", f"/{args.command}")
        except (ConfigError, control.ControlClientError) as e:
            print(f"{PROG} {args.command}: {e}", file=sys.stderr)
            return 1
        print(body.decode("utf-8", "replace").strip())
        return 0 if status < 300 else 1
    config_file = os.path.abspath(args.config) if args.command in ("run", "config", "check") else None
    try:
        if config_file is not None:
            cfg, reading = config.load_reading(config_file, _overrides(args))
        else:
            cfg, reading = config.from_original(build_original(args), f"{PROG} {args.command}")
    except ConfigError as e:
        print(f"{PROG}: configuration error: {e}", file=sys.stderr)
        return 1
    if args.command == "check":
        from .cli import check

        return check(PROG, cfg, config_file, reading, args.config)
    from .process import serve

    return serve(PROG, cfg, config_file, [], daemon=args.daemon, source=config_file or f"{PROG} {args.command}",
                 warnings=reading.warnings if reading is not None else [])


def _overrides(args: argparse.Namespace) -> list:
    """The shared flags over a config file's keys (run, check)."""
    from . import config
    from .config.compat import LEVELS

    out = []
    level = "trace" if args.verbose else args.default_level

    def over(key: str, value: Any, flag: str) -> None:
        out.append(config.Override((key,), value, f"command line {flag}"))

    if args.control or args.disable_control:
        over("control", "" if args.disable_control else args.control,
             "--disable-control" if args.disable_control else "--control")
    if level:
        over("log_level", LEVELS.get(level.lower(), level), "--verbose" if args.verbose else "--default-level")
    if args.pidfile:
        over("pidfile", args.pidfile, "--pidfile")
    if args.disable_stdout:
        over("log_file", os.devnull, "--disable-stdout")
    return out


def forever(argv: list[str]) -> int:
    """``--forever``: run the same command without it, again after each death (not after a
    clean exit), waiting 1 s, doubling to 30 s while it keeps dying within 10 s of its start.
    SIGTERM, SIGINT and SIGHUP are passed on to it."""
    args = [a for a in argv if a != "--forever"]
    child: Optional[subprocess.Popen] = None

    def forward(signum: int, _frame: Any) -> None:
        if child is not None and child.poll() is None:
            child.send_signal(signum)
        if signum != signal.SIGHUP:
            raise SystemExit(0)

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, forward)
    delay = 1.0
    while True:
        started = time.monotonic()
        child = subprocess.Popen([sys.executable, "-m", "wmproxy.launch", "rust", *args])
        try:
            code = child.wait()
        except SystemExit:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
            return 0
        if code == 0:
            return 0
        if time.monotonic() - started > 10:
            delay = 1.0  # (it ran a while: this death is not the last one's loop)
        print(f"{PROG} --forever: the program ended with status {code}; starting it again in {delay:.0f} s",
              file=sys.stderr, flush=True)
        time.sleep(delay)
        delay = min(delay * 2, 30.0)
