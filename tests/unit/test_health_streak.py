"""net.health.Streak: probes in a row turn into a server's state."""

from __future__ import annotations

from wmproxy.net.health import Streak


def test_fall_failures_take_it_out_and_rise_successes_bring_it_back():
    s = Streak(fall=3, rise=2)
    assert [s.saw(ok) for ok in (False, False, True, False, False)] == [False] * 5 and s.up  # never 3 in a row
    assert s.saw(False) and not s.up  # the third in a row
    assert [s.saw(ok) for ok in (True, False, True)] == [False] * 3 and not s.up
    assert s.saw(True) and s.up
    assert not s.saw(True) and s.count == 0
