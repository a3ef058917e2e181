"""
The browser chat client: plain HTML, CSS and ES modules under C{xmppjson/static/}, served by the
same Site as the REST API and C{/stream}.  There is no build step; what is in the package is what
the browser gets.

Mount it in L{xmppjson.web.makeRoot} like this::

    from xmppjson import webclient

    root.putChild(b"app", webclient.staticResource())   # /app/ -> index.html, /app/js/..., /app/app.css
    root.putChild(b"", webclient.rootRedirect())         # GET / -> 302 to app/

The page finds the REST API and C{/stream} one level up from itself (a C{<meta>} in
C{index.html}), so C{/app/} must stay one path segment below the API's root.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.web import resource, static, util

#: The directory holding C{index.html}, C{app.css} and C{js/}.
STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")

#: Where the client is mounted below the Site's root, and where C{/} sends browsers.
MOUNT = b"app"

# The page loads nothing from elsewhere and talks only to its own origin (REST and the
# WebSocket); a policy that says so turns an injected script or a lookalike resource into a
# console error instead of an attack.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)


class StaticFiles(static.File):
    """
    A L{static.File} for the client: correct types for ES modules (browsers refuse to run a
    module served as anything but JavaScript), C{index.html} as the only index, no directory
    listings, and headers that make the browser revalidate after an upgrade.
    """

    contentTypes = {  # noqa: RUF012 - File declares it so
        **static.File.contentTypes,
        ".html": "text/html; charset=utf-8",
        ".js": "text/javascript; charset=utf-8",
        ".mjs": "text/javascript; charset=utf-8",
        ".css": "text/css; charset=utf-8",
        ".json": "application/json",
        ".svg": "image/svg+xml",
        ".map": "application/json",
    }
    indexNames = ["index.html"]  # noqa: RUF012 - File declares it so

    def directoryListing(self) -> resource.Resource:
        return resource.NoResource("No such file.")

    def render_GET(self, request: Any) -> Any:
        # Files keep their Last-Modified validation; no-cache only forces the check, so an
        # upgraded server never runs a new index.html against old cached modules.
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        request.setHeader(b"Referrer-Policy", b"no-referrer")
        request.setHeader(b"Content-Security-Policy", CONTENT_SECURITY_POLICY.encode("ascii"))
        return super().render_GET(request)


def staticResource(path: str = STATIC_DIR) -> StaticFiles:
    """
    The web client's files as a resource: mount it at C{/app}.

    @param path: the directory to serve (the package's C{static/} by default).
    """
    return StaticFiles(path, defaultType="application/octet-stream")


def rootRedirect() -> resource.Resource:
    """
    A resource for C{GET /}: a redirect to the client.  The target is relative (C{app/}), so it
    also works when the whole Site sits behind a path prefix.
    """
    return util.Redirect(MOUNT + b"/")


__all__ = ["MOUNT", "STATIC_DIR", "StaticFiles", "rootRedirect", "staticResource"]
