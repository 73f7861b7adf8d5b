"""What a service manager needs from the process: dropping root, and systemd's notify protocol.

- ``drop_privileges``: bind as root (ports below 1024, keys readable by root only), then become
  the configured ``user``/``group`` before serving anything, as nginx's workers and HAProxy do.
  Blocks on nothing; raises PrivilegeError with what to do.
- ``notify``: ``sd_notify(3)`` without libsystemd: one datagram to ``$NOTIFY_SOCKET`` (READY=1,
  RELOADING=1, STOPPING=1, STATUS=...). A no-op outside a ``Type=notify`` unit.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import time


class PrivilegeError(Exception):
    pass


def _lookup(user: str, group: str) -> tuple[str, int, int]:
    """(user name, uid, gid): names or numbers; the group defaults to the user's own."""
    try:
        pw = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(f"user {user!r} does not exist (create it: useradd --system --no-create-home "
                             f"--shell /usr/sbin/nologin {user})") from None
    if not group:
        return pw.pw_name, pw.pw_uid, pw.pw_gid
    try:
        gid = grp.getgrgid(int(group)).gr_gid if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise PrivilegeError(f"group {group!r} does not exist") from None
    return pw.pw_name, pw.pw_uid, gid


def drop_privileges(user: str, group: str = "", own: tuple[str, ...] = ()) -> str:
    """Become ``user`` (and ``group``, else the user's primary group, with the user's
    supplementary groups) for good. Files in ``own`` (the log file) are handed to the user first,
    so that reopening them after logrotate still works. Returns what was done, for the log.

    Running as that user already is fine; any other non-root user raises PrivilegeError, as does
    a switch the kernel refuses or one that could be undone (setuid(0) must fail afterwards)."""
    name, uid, gid = _lookup(user, group)
    if os.getuid() != 0 and os.geteuid() != 0:
        if os.getuid() == uid and os.getgid() == gid:
            return f"running as {name} (uid {uid}, gid {gid}) already"
        raise PrivilegeError(f"cannot switch to user {name}: this process runs as uid {os.getuid()}, not root "
                             "(start it as root, or leave 'user' out)")
    for path in own:
        if path and os.path.exists(path):
            os.chown(path, uid, gid)
    try:
        os.initgroups(name, gid)
        os.setgid(gid)
        os.setuid(uid)
    except OSError as e:
        raise PrivilegeError(f"cannot switch to user {name}: {e.strerror}") from None
    try:
        os.setuid(0)
    except OSError:
        return f"switched to user {name} (uid {uid}, gid {gid})"
    raise PrivilegeError(f"switched to user {name} but could become root again: refusing to serve")


def notify(*fields: str) -> bool:
    """Send ``fields`` ('READY=1', 'STATUS=...') to systemd, if it asked for them. Never raises:
    a service manager that went away must not take the proxy with it. Returns whether sent."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":
        return False
    if address[0] == "@":
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto("\n".join(fields).encode("utf-8"), address)
        return True
    except OSError:
        return False


def notify_reloading(why: str) -> bool:
    """RELOADING=1 with the monotonic time systemd (253+) matches the reload by."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}", f"STATUS=reloading ({why})")
