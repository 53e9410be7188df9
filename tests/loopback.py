"""A real HTTP server on 127.0.0.1 for tests (judge endpoints that misbehave on purpose)."""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer


def start_http(handler) -> tuple[ThreadingHTTPServer, str]:
    """Serve `handler` on a free loopback port in a daemon thread; return the server and its OpenAI-style base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1"


def stop_http(server: ThreadingHTTPServer) -> None:
    server.shutdown()
    server.server_close()
