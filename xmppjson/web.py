"""
The HTTP side of xmppjson: one L{twisted.web.server.Site} on C{--web} serving the REST API
(L{xmppjson.rest}) and, at C{/stream}, the JSON WebSocket dialect.

Resource tree::

    /               a redirect to app/ (the browser client)
    /app/           the browser client's files (L{xmppjson.webclient})
    /stream         the WebSocket resource, from _streamResource()
    everything else REST: WebRoot hands it to RestResource, which routes on the full path
"""

from __future__ import annotations

import re
from typing import Any

from twisted.logger import Logger
from twisted.web import http, resource, server
from twisted.web.iweb import IAccessLogFormatter
from zope.interface import provider

from xmppjson import webclient
from xmppjson.accounts import Accounts
from xmppjson.config import Config
from xmppjson.rest import BoundedRequest, RestResource


class WebRoot(resource.Resource):
    """
    The root of the Site.  Children mounted with C{putChild} (C{b"stream"}, C{b"app"}, C{b""}
    for C{/}) take their paths; every other path goes to the REST resource, which routes on the
    full path.
    """

    def __init__(self, rest: RestResource):
        super().__init__()
        self.rest = rest

    def getChild(self, path: bytes, request: server.Request) -> resource.Resource:
        return self.rest

    def render(self, request: server.Request) -> Any:
        return self.rest.render(request)


def _streamResource(config: Config, accounts: Accounts, im: Any, reactor: Any) -> Any:
    """
    The resource (an L{IResource}) mounted at C{/stream}: the JSON WebSocket dialect
    (C{docs/json-dialect.md}).

    HOOK for the WebSocket door: return its Autobahn C{WebSocketResource} here (built from
    C{config}, C{accounts} for token checks, C{im} for sessions and C{reactor}).
    """
    from xmppjson.websocket import StreamResource

    return StreamResource(config, accounts, im, reactor)


_TOKEN_IN_QUERY = re.compile(r"([?&]token=)[^&\s\"]*")


@provider(IAccessLogFormatter)
def redactingLogFormatter(timestamp: str, request: server.Request) -> str:
    """
    The combined access log format, with C{?token=…} values (REST calls and the WebSocket URL)
    replaced by C{<redacted>}: a login token in a log file is a login.
    """
    return _TOKEN_IN_QUERY.sub(r"\1<redacted>", http.combinedLogFormatter(timestamp, request))


class XmppJsonSite(server.Site):
    """
    The Site: bodies are bounded by C{maxBody} (C{config.maxHTTPBody}) while they are received
    (L{BoundedRequest}), tracebacks are never shown to clients, and tokens never reach the
    access log (L{redactingLogFormatter}).
    """

    _logger = Logger()  # not "log": Site.log(request) writes the access log
    requestFactory = BoundedRequest
    displayTracebacks = False

    def __init__(self, root: resource.Resource, maxBody: int, reactor: Any = None):
        super().__init__(root, reactor=reactor, logFormatter=redactingLogFormatter)
        self.maxBody = maxBody


def makeRoot(config: Config, accounts: Accounts, im: Any, reactor: Any) -> WebRoot:
    """
    The resource tree: REST at the root, the WebSocket resource at C{/stream}, the browser
    client at C{/app/} with C{/} redirecting to it.  Tests can serve it with
    C{treq.testing.StubTreq}.
    """
    root = WebRoot(RestResource(config, accounts, im, reactor))
    root.putChild(b"stream", _streamResource(config, accounts, im, reactor))
    root.putChild(webclient.MOUNT, webclient.staticResource())
    root.putChild(b"", webclient.rootRedirect())
    return root


def makeSite(config: Config, accounts: Accounts, im: Any, reactor: Any) -> server.Site:
    """
    The Site for C{--web}: REST and the WebSocket C{/stream} on one port.  Nothing listens
    until the caller hands the Site to an endpoint.
    """
    site = XmppJsonSite(makeRoot(config, accounts, im, reactor), config.maxHTTPBody, reactor)
    site.noisy = False
    return site
