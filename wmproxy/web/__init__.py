"""[http]: the reverse proxy, static files and websocket pass-through."""
