"""A WSGI application: it greets the caller and describes the request.

Any WSGI server can serve it; serve.py runs it with the standard library's
wsgiref, so the function needs nothing installed but python3.
"""

import json
import os
from urllib.parse import parse_qs


def application(environ, start_response):
    """Answer every request with a JSON greeting naming its method, path and query."""
    query = parse_qs(environ.get("QUERY_STRING", ""))
    name = query.get("name", ["world"])[0]
    body = json.dumps(
        {
            "greeting": f"Hello, {name}!",
            "function": os.environ.get("SHOAL_FUNCTION", ""),
            "method": environ["REQUEST_METHOD"],
            "path": environ.get("PATH_INFO", "") or "/",
            "query": query,
        }
    ).encode("utf-8")
    start_response(
        "200 OK",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    return [body]
