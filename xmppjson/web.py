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
from xmppjson.rest import REQUEST_TIMEOUT, BoundedRequest, RestResource


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


class BoundedChannel(http.HTTPChannel):
    """
    An HTTP/1.1 channel that bounds the time a request line may take: from its first byte,
    the site's C{requestTimeout} (L{REQUEST_TIMEOUT}) seconds, or the connection is closed.
    Until its line is complete a request has no object of its own (L{BoundedRequest} bounds
    it from there to the end of its body), and every byte restarts Twisted's idle timeout:
    without this a client sending a byte a minute would hold a connection for hours.
    """

    _lineDeadline: Any = None

    def dataReceived(self, data: bytes) -> None:
        if self._lineDeadline is None and not self.requests:
            timeout = getattr(getattr(self, "site", None), "requestTimeout", REQUEST_TIMEOUT)
            if timeout:
                self._lineDeadline = self.callLater(timeout, self._lineTooSlow)
        super().dataReceived(data)
        if self.requests:
            # The line has arrived (the request exists): the request's own deadline runs.
            self._cancelLineDeadline()

    def _cancelLineDeadline(self) -> None:
        if self._lineDeadline is not None and self._lineDeadline.active():
            self._lineDeadline.cancel()
        self._lineDeadline = None

    def _lineTooSlow(self) -> None:
        self._lineDeadline = None
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Any) -> None:
        self._cancelLineDeadline()
        super().connectionLost(reason)


# What Site's protocol factory builds (the wrapper that can switch to HTTP/2), around our
# channel; the plain channel if this Twisted has no such wrapper.
_GenericChannel = getattr(http, "_GenericHTTPChannelProtocol", None)


class XmppJsonSite(server.Site):
    """
    The Site: bodies are bounded by C{maxBody} (C{config.maxHTTPBody}) while they are received
    (L{BoundedRequest}), request lines and requests in time (L{BoundedChannel},
    L{BoundedRequest}), tracebacks are never shown to clients, and tokens never reach the
    access log (L{redactingLogFormatter}).
    """

    _logger = Logger()  # not "log": Site.log(request) writes the access log
    requestFactory = BoundedRequest
    displayTracebacks = False

    def __init__(self, root: resource.Resource, maxBody: int, reactor: Any = None):
        super().__init__(root, reactor=reactor, logFormatter=redactingLogFormatter)
        self.maxBody = maxBody

    def protocol(self) -> Any:  # type: ignore[override]
        """The connection's protocol: Twisted's, with a L{BoundedChannel} for HTTP/1.1."""
        channel = BoundedChannel()
        return channel if _GenericChannel is None else _GenericChannel(channel)


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
