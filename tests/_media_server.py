"""A small HTTP server on loopback for media-fetch tests: fixed files, redirects, oversized and slow bodies."""

import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    routes: dict = {}

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        route = self.routes.get(self.path.split("?")[0])
        if route is None:
            self.send_error(404)
            return
        kind, value = route
        if kind == "redirect":
            self.send_response(302)
            self.send_header("Location", value)
            self.end_headers()
        elif kind == "bytes":
            self.send_response(200)
            self.send_header("Content-Length", str(len(value)))
            self.end_headers()
            self.wfile.write(value)
        elif kind == "unsized":  # a body longer than it says nothing about: no Content-Length, closed at the end
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            for _ in range(value):
                self.wfile.write(b"\0" * 65536)
        elif kind == "drip":  # one byte at a time, slower than any deadline
            self.send_response(200)
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            try:
                for _ in range(1000):
                    self.wfile.write(b"\0")
                    self.wfile.flush()
                    time.sleep(value)
            except OSError:
                pass


@contextmanager
def media_server(routes: dict):
    """Serve `routes` (`path -> ("bytes", data) | ("redirect", url) | ("unsized", n_64k) | ("drip", s)`)."""
    handler = type("Handler", (_Handler,), {"routes": routes})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
