"""Pure wire code: bytes in, values out. No gevent, no I/O."""
