"""An idle watchdog: one sleeping greenlet per connection instead of a timer per socket call.

gevent arms and cancels a timer around every ``recv`` of a socket that has a timeout; on a
busy keep-alive connection that costs more than the parsing. Here the connection only bumps a
counter (the Reader's ``reads``, a relay's byte count); the watchdog wakes a few times per
period and acts when the counter has not moved for the whole period.
"""

from __future__ import annotations

import time
from typing import Callable

import gevent


def watch_idle(progress: Callable[[], int], timeout: Callable[[], float],
               on_idle: Callable[[], None]) -> gevent.Greenlet:
    """Spawn a watchdog calling ``on_idle()`` once ``progress()`` stays the same for
    ``timeout()`` seconds (read again each round, so a connection may change phase), then
    ending. Precision is about a quarter of the timeout. The caller owns the greenlet and
    kills it when the connection ends.
    """

    def watch() -> None:
        seen = progress()
        since = time.monotonic()
        while True:
            limit = timeout()
            gevent.sleep(min(limit / 4 + 0.02, max(0.0, since + limit - time.monotonic()) + 0.02))
            now = time.monotonic()
            current = progress()
            if current != seen:
                seen, since = current, now
            elif now - since >= timeout():
                on_idle()
                return

    return gevent.spawn(watch)
