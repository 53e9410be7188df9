"""Loopback helpers for tests: a real HTTP server on 127.0.0.1 (judge endpoints that misbehave on purpose), and
concurrent clients that hit a server at the same moment."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import ThreadingHTTPServer


def start_http(handler) -> tuple[ThreadingHTTPServer, str]:
    """Serve `handler` on a free loopback port in a daemon thread; return the server and its OpenAI-style base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1"


def stop_http(server: ThreadingHTTPServer) -> None:
    server.shutdown()
    server.server_close()


def together_and_alone(send, requests: list, between=None) -> tuple[list, list]:
    """`send` every request at once (a barrier releases all threads together, so a server batches them), call
    `between()` if given, then send each alone, in order. A server that batches correctly answers the same both ways."""
    start = threading.Barrier(len(requests))

    def send_together(req):
        start.wait()
        return send(req)

    with ThreadPoolExecutor(len(requests)) as pool:
        together = list(pool.map(send_together, requests))
    if between is not None:
        between()
    return together, [send(req) for req in requests]
