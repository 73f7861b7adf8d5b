"""process.py apart from a running server: the pid file is written without following links."""

from __future__ import annotations

import os

from wmproxy.process import write_pidfile


def test_the_pid_file_is_never_written_through_a_planted_link(tmp_path):
    """A pid file in a directory others can write (and root writing it): a symlink planted at
    the temporary name, or at the pid file's own name, must not make it write elsewhere."""
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    pidfile = tmp_path / "wm.pid"
    planted = tmp_path / f"wm.pid.{os.getpid()}.tmp"
    planted.symlink_to(victim)
    write_pidfile(str(pidfile))
    assert victim.read_text() == "keep me\n"
    assert pidfile.read_text() == f"{os.getpid()}\n" and not pidfile.is_symlink() and planted.is_symlink()
    pidfile.unlink()
    pidfile.symlink_to(victim)  # the pid file's own name a link: replaced by the file, the target kept
    write_pidfile(str(pidfile))
    assert victim.read_text() == "keep me\n" and not pidfile.is_symlink()
    assert pidfile.read_text() == f"{os.getpid()}\n" and pidfile.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["victim", "wm.pid", planted.name])  # (no leftover)
