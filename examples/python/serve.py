"""Serve app.application on 127.0.0.1:$PORT with the standard library alone.

Shoal sets PORT to a free port and sends the function's requests there;
run it by hand with `PORT=8080 python3 serve.py`.
"""

import os
import sys
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIServer, make_server

from app import application


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    """A WSGIServer that answers each connection on its own thread, so a
    slow request does not hold up the others (processes: shared)."""

    daemon_threads = True


def main():
    port = os.environ.get("PORT")
    if not port:
        sys.exit("serve.py: PORT is not set; run it as PORT=8080 python3 serve.py")
    with make_server("127.0.0.1", int(port), application, server_class=ThreadingWSGIServer) as server:
        print(f"serving on http://127.0.0.1:{port}", file=sys.stderr, flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
