"""Command lines of ``wmproxy-server`` and ``wmproxy-client`` (configargparse).

Three layers, highest first: flags, ``WMPROXY_*`` environment variables, the TOML (or YAML) file
(``-c FILE``). Without a file the embedded default runs: a forward proxy on 127.0.0.1:8090.
Flags and variables are placed at their key path and validated with the file, so an error
names where the value came from.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from dataclasses import dataclass

import configargparse

from . import __version__, config
from .errors import ConfigError

EMBEDDED_DEFAULT: dict = {"proxy": {}}
COMMANDS = ("run", "status", "reload", "stop", "file-server")
FILE_SERVER_BIND = "127.0.0.1:8869"


def file_server_config(root: str, listen: str, browse: bool) -> dict:
    """The config of ``file-server``: one [http] server with one file_server location."""
    return {"http": {"server": [{"bind": listen, "location": [
        {"rule": "/", "file_server": {"root": os.path.abspath(root), "browse": browse}}]}]}}


@dataclass(frozen=True)
class Opt:
    """A flag that sets one config key. ``only``: the one program that has it ('' = both)."""

    flags: tuple[str, ...]
    path: tuple[str, ...]
    help: str
    metavar: str
    group: str
    append: bool = False
    only: str = ""

    @property
    def dest(self) -> str:
        return "_".join(self.path)

    @property
    def env(self) -> str:
        """WMPROXY_ and the last long flag: --password -> WMPROXY_PASSWORD."""
        return "WMPROXY_" + self.flags[-1].lstrip("-").replace("-", "_").upper()


SERVER, CLIENT = "wmproxy-server", "wmproxy-client"
PROXY, LINK, SERVICE, LOGS, CONTROL = "proxy", "center link", "service", "logs", "control API"
GROUPS: dict[str, str | dict[str, str]] = {  # a title, or one per program
    PROXY: {SERVER: "forward proxy ([proxy])",
            CLIENT: "local proxy ([proxy]; its traffic leaves at the center server)"},
    LINK: {SERVER: "center server ([center]: center clients link to it)", CLIENT: "center link ([center])"},
    SERVICE: "running as a service",
    LOGS: "logs",
    CONTROL: "control API (status, reload, stop, metrics)",
}

OPTIONS = (
    Opt(("-b", "--bind"), ("proxy", "bind"), "forward proxy address (default 127.0.0.1:8090)", "ADDR", PROXY),
    Opt(("--user", "--username"), ("proxy", "username"), "username clients must give", "USER", PROXY, only=SERVER),
    Opt(("--pass", "--password"), ("proxy", "password"),
        "password clients must give (prefer WMPROXY_PASSWORD: flags show in ps)", "PASS", PROXY, only=SERVER),
    Opt(("--allow",), ("proxy", "allow"), "client network allowed, e.g. 10.0.0.0/8 (repeatable)", "CIDR", PROXY,
        append=True),
    Opt(("--deny",), ("proxy", "deny"), "client network refused (repeatable)", "CIDR", PROXY, append=True),
    Opt(("--udp-bind",), ("proxy", "udp_bind"), "enable SOCKS5 UDP ASSOCIATE with relay sockets on this "
        "address, port 0, e.g. 127.0.0.1:0", "ADDR", PROXY),
    Opt(("--flag",), ("proxy", "flag"), "protocols served: 'http https socks5 socks4'", "LIST", PROXY),
    Opt(("--connect-timeout",), ("proxy", "connect_timeout"), "upstream connect timeout, e.g. 10s", "TIME", PROXY),
    Opt(("--idle-timeout",), ("proxy", "idle_timeout"), "close connections idle this long, e.g. 5min", "TIME", PROXY),
    Opt(("--max-connections",), ("proxy", "max_connections"), "concurrent client connections", "N", PROXY),
    Opt(("--proxy-protocol",), ("proxy", "proxy_protocol"), "behind a balancer: each connection starts with a "
        "PROXY protocol header (v1 or v2): true or false (default)", "BOOL", PROXY),
    Opt(("--proxy-protocol-from",), ("proxy", "proxy_protocol_from"), "a balancer network allowed to send it "
        "(repeatable; required with --proxy-protocol)", "CIDR", PROXY, append=True),

    Opt(("--center-bind",), ("center", "bind"), "address center clients connect to", "ADDR", LINK, only=SERVER),
    Opt(("--server",), ("center", "server"), "the center server to link to", "ADDR", LINK, only=CLIENT),
    Opt(("--user", "--username"), ("center", "username"), "who to log in to the center server as", "USER", LINK,
        only=CLIENT),
    Opt(("--pass", "--password"), ("center", "password"),
        "the password to log in with (prefer WMPROXY_PASSWORD: flags show in ps)", "PASS", LINK, only=CLIENT),
    Opt(("--tls",), ("center", "tls"), "TLS on the center link: true (default) or false", "BOOL", LINK),
    Opt(("--ca",), ("center", "ca"), "CA file to verify the server with (default: the system store)", "FILE",
        LINK, only=CLIENT),
    Opt(("--server-name",), ("center", "server_name"), "name the server certificate carries (default: its host)",
        "NAME", LINK, only=CLIENT),
    Opt(("--cert",), ("center", "cert"), "the link's certificate (PEM)", "FILE", LINK, only=SERVER),
    Opt(("--key",), ("center", "key"), "its private key (PEM)", "FILE", LINK, only=SERVER),
    Opt(("--cert",), ("center", "cert"), "client certificate for mutual TLS (PEM)", "FILE", LINK, only=CLIENT),
    Opt(("--key",), ("center", "key"), "its private key (PEM)", "FILE", LINK, only=CLIENT),

    Opt(("--pidfile",), ("pidfile",), "write the pid to FILE; refuse to start if that pid is alive", "FILE", SERVICE),
    Opt(("--run-user",), ("user",), "started as root: bind, then serve as this user", "USER", SERVICE),
    Opt(("--run-group",), ("group",), "with --run-user: serve with this group (default: the user's)", "GROUP",
        SERVICE),
    Opt(("--grace",), ("grace",), "on stop, time live connections get to finish, e.g. 10s", "TIME", SERVICE),
    Opt(("--workers",), ("workers",), "worker processes sharing the listeners: N, or auto (one per core); "
        "1 (default) serves in this process", "N", SERVICE),

    Opt(("--log-level",), ("log_level",), "debug, info (default), warning or error", "LEVEL", LOGS),
    Opt(("--log-file",), ("log_file",), "log to FILE instead of stderr; SIGUSR1 reopens it", "FILE", LOGS),
    Opt(("--log-format",), ("log_format",), "text (default) or json", "FORMAT", LOGS),
    Opt(("--access-log-file",), ("access_log_file",), "HTTP access lines to FILE of their own", "FILE", LOGS),
    Opt(("--access-log-format",), ("access_log_format",), "wmproxy (default) or combined", "FORMAT", LOGS),

    Opt(("--control",), ("control",), "control API address, e.g. 127.0.0.1:8837 ('' disables)", "ADDR", CONTROL),
    Opt(("--control-token",), ("control_token",), "bearer token for the control API (prefer the variable)", "TOKEN",
        CONTROL),
)


def options(prog: str) -> tuple[Opt, ...]:
    """The flags of ``prog`` (in wmproxy-client --username/--password are the center link's
    credentials: its local proxy is authenticated by the server's [proxy])."""
    return tuple(o for o in OPTIONS if o.only in ("", prog))


def commands(prog: str) -> dict[str, str]:
    out = {"run": "serve (the default)",
           "status": "print the running process's status (through its control API)",
           "reload": "make the running process reload its configuration file",
           "stop": "make the running process stop gracefully",
           "upgrade": "with workers: new workers on the installed code take over, the old ones drain"}
    if prog == SERVER:
        out["file-server"] = "serve the files of --root on --listen, without a configuration file"
    return out


def make_parser(prog: str) -> configargparse.ArgumentParser:
    what = ("forward proxy (HTTP, HTTPS CONNECT, SOCKS5, SOCKS4/4a) on one port, center server of tunnels, "
            "reverse proxy and static files ([http]), TCP/UDP forwarding ([stream])" if prog == SERVER else
            "center client: keeps one TLS link to a center server, serves a local proxy whose traffic leaves "
            "there, and publishes this network's services through it ([[mappings]])")
    listing = "\n".join(f"  {name:<12} {text}" for name, text in commands(prog).items())
    p = configargparse.ArgumentParser(
        prog=prog, formatter_class=configargparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(f"{prog}: {what}.", 79) + f"\n\ncommands:\n{listing}",
        epilog=textwrap.fill("Each flag also reads a WMPROXY_* variable (shown in brackets) and sets the "
                             "configuration key of the same name over the file's. Without -c the embedded default "
                             "runs: a forward proxy on 127.0.0.1:8090. The commands status, reload and stop talk "
                             "to the control API the configuration names.", 79),
    )
    p.add_argument("command", nargs="?", default="run", choices=tuple(commands(prog)), metavar="COMMAND",
                   help="one of: " + ", ".join(commands(prog)))
    p.add_argument("-c", "--config", env_var="WMPROXY_CONFIG", metavar="FILE", help="configuration file: TOML, or YAML when it ends in .yaml/.yml")
    p.add_argument("--check", action="store_true", help="validate the configuration and the files it names, "
                   "print the result, exit 0 or 1")
    p.add_argument("-V", "--version", action="version", version=f"%(prog)s {__version__}")
    groups = {}
    for o in options(prog):
        if o.group not in groups:
            title = GROUPS[o.group]
            groups[o.group] = p.add_argument_group(title if isinstance(title, str) else title[prog])
            if o.group == SERVICE:
                groups[o.group].add_argument("--daemon", action="store_true", env_var="WMPROXY_DAEMON",
                                             help="detach and run in the background (logs to --log-file); "
                                             "returns once the listeners are bound")
        groups[o.group].add_argument(*o.flags, dest=o.dest, env_var=o.env, help=o.help, metavar=o.metavar,
                                     action="append" if o.append else "store", default=None)
    if prog == SERVER:
        g = p.add_argument_group("file-server command")
        g.add_argument("-r", "--root", metavar="DIR", help="the directory served (default: .)")
        g.add_argument("-l", "--listen", metavar="ADDR", help=f"address (default {FILE_SERVER_BIND})")
        g.add_argument("--browse", action="store_true", help="list directories that have no index file")
    return p


def overrides(prog: str, args: argparse.Namespace, argv: list[str]) -> list[config.Override]:
    """The flags and variables that were given, as config overrides naming their origin."""
    out = []
    for o in options(prog):
        value = getattr(args, o.dest)
        if value is None:
            continue
        on_line = any(a == f or a.startswith(f + "=") for a in argv for f in o.flags)
        origin = f"command line {o.flags[-1]}" if on_line else f"environment {o.env}"
        out.append(config.Override(o.path, value, origin))
    return out


def _control_command(prog: str, command: str, cfg: config.Config) -> int:
    from . import control

    method, path = {"status": ("GET", "/status"), "reload": ("POST", "/reload"), "stop": ("POST", "/stop"),
                    "upgrade": ("POST", "/upgrade")}[command]
    try:
        status, body = control.call(cfg, method, path, timeout=600.0 if command == "upgrade" else 30.0)
    except control.ControlClientError as e:
        print(f"{prog} {command}: {e}", file=sys.stderr)
        return 1
    try:
        answer = json.loads(body)
    except ValueError:
        answer = {"error": body.decode("utf-8", "replace")}
    if status >= 300:
        print(f"{prog} {command}: {answer.get('error', answer)}", file=sys.stderr)
        return 1
    if command == "status":
        try:  # (the top talkers: a list of their own)
            status, body = control.call(cfg, "GET", f"/api/connections?limit={control.STATUS_TOP}")
            answer["top_connections"] = json.loads(body) if status == 200 else None
        except (control.ControlClientError, ValueError):
            pass
        print(control.format_status(answer))
    elif command == "upgrade":
        print(f"upgraded: workers {' '.join(map(str, answer['workers']))} serve, the old ones drain")
    elif command == "reload":
        print(f"reloaded: added {answer['added'] or 'none'}, removed {answer['removed'] or 'none'}, "
              f"changed {answer['changed'] or 'none'}, {answer['unchanged']} unchanged")
    else:
        print(f"stopping (grace {answer['grace_seconds']}s)")
    return 0


def check(prog: str, cfg: config.Config, config_file: str | None, reading: "config.compat.Reading | None",
          shown: str) -> int:
    """``--check`` (and ``wmproxy check``): the files the config names read as starting would,
    how a Rust wmproxy file was read, then OK; the exit status (1 on an error)."""
    from .app import check_files

    try:
        check_files(cfg, config_file)
    except ConfigError as e:
        print(f"{prog}: configuration error: {e}", file=sys.stderr)
        return 1
    if reading is not None:
        print(f"{shown}: read as a Rust wmproxy config:")
        for line in reading.notes:
            print(f"  {line}")
        for line in reading.warnings:
            print(f"  warning: {line}")
    print(f"{prog}: configuration OK ({shown})")
    return 0


def run(prog: str, argv: list[str] | None = None) -> int:
    """Parse, load, then run a command or serve until stopped. Returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    args = make_parser(prog).parse_args(argv)
    config_file = os.path.abspath(args.config) if args.config else None
    default = EMBEDDED_DEFAULT
    source = config_file or "embedded default config"
    if args.command == "file-server":
        if config_file:
            print(f"{prog}: file-server takes --root and --listen, not a configuration file", file=sys.stderr)
            return 2
        default = file_server_config(args.root or ".", args.listen or FILE_SERVER_BIND, args.browse)
        args.command = "run"
        source = f"file-server of {os.path.abspath(args.root or '.')}"
    elif getattr(args, "root", None) or getattr(args, "listen", None) or getattr(args, "browse", False):
        print(f"{prog}: --root, --listen and --browse go with the file-server command", file=sys.stderr)
        return 2
    try:
        cfg, reading = config.load_reading(config_file, overrides(prog, args, argv), default=default)
    except ConfigError as e:
        print(f"{prog}: configuration error: {e}", file=sys.stderr)
        return 1
    if args.check:
        return check(prog, cfg, config_file, reading, args.config or source)
    if args.command != "run":
        return _control_command(prog, args.command, cfg)
    from .process import serve  # imported late: --check, --help and the commands need no gevent hub

    return serve(prog, cfg, config_file, overrides(prog, args, argv), daemon=args.daemon, source=source,
                 warnings=[f"{config_file}: {w}" for w in reading.warnings] if reading is not None else [])


def _quiet_on_closed_stdout(prog: str) -> int:
    """run(prog), ending quietly when stdout is a pipe whose reader went away
    (``wmproxy-server status | head -3``): as other Unix tools do, no traceback."""
    try:
        status = run(prog)
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)  # (Python would flush into the closed pipe at exit)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def server_main() -> int:
    return _quiet_on_closed_stdout("wmproxy-server")


def client_main() -> int:
    return _quiet_on_closed_stdout("wmproxy-client")
