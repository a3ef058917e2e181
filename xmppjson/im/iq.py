"""
Info/query stanzas: addressed to the server or to a user's own account they are answered here
(roster, ping, disco, version, ...); to another user's session they are routed; anything nobody
handles is answered with C{service-unavailable} (RFC 6120 8.2.3, 10.5.3).

Features register handlers by the namespace of the iq's payload; C{disco#info} lists exactly the
registered features.
"""

from __future__ import annotations

import platform
from typing import TYPE_CHECKING, Awaitable, Callable, Union

from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish

import xmppjson
from xmppjson.error import BadRequest, ServiceUnavailable
from xmppjson.im.stanzas import (
    NS_DISCO_INFO,
    NS_DISCO_ITEMS,
    NS_PING,
    NS_ROSTER,
    NS_VERSION,
    errorReply,
    iqResult,
    tryJID,
)
from xmppjson.xmltext import isElement

if TYPE_CHECKING:
    from xmppjson.im.server import IMServer
    from xmppjson.session import Session

Reply = Union[domish.Element, Awaitable[domish.Element]]
Handler = Callable[["Session", domish.Element, domish.Element], Reply]

IQ_TYPES = frozenset(("get", "set", "result", "error"))


class IQHandler:
    """
    Dispatch of iq stanzas.

    @ivar serverHandlers: payload namespace -> handler, for iqs to the server's domain.
    @ivar accountHandlers: payload namespace -> handler, for iqs to the user's own bare JID (or
        with no C{to}).
    @ivar userHandlers: payload namespace -> handler, for iqs to another local user's bare JID,
        which the server answers on that user's behalf (vCard, last activity).
    @ivar features: extra disco features (protocols that are not iq namespaces).
    """

    def __init__(self, server: "IMServer"):
        self.server = server
        self.router = server.router
        self.domain = server.domain
        self.serverHandlers: dict[str, Handler] = {}
        self.accountHandlers: dict[str, Handler] = {}
        self.userHandlers: dict[str, Handler] = {}
        self.features: set[str] = {"msgoffline", "urn:xmpp:sid:0"}
        self.register(NS_PING, self._ping, server=True, account=True)
        self.register(NS_DISCO_INFO, self._discoInfo, server=True, account=True)
        self.register(NS_DISCO_ITEMS, self._discoItems, server=True, account=True)
        self.register(NS_VERSION, self._version, server=True)
        self.register(NS_ROSTER, server.rosters.handleIQ, account=True)

    def register(self, namespace: str, handler: Handler, server: bool = False, account: bool = False,
                 user: bool = False) -> None:
        if server:
            self.serverHandlers[namespace] = handler
        if account:
            self.accountHandlers[namespace] = handler
        if user:
            self.userHandlers[namespace] = handler

    def outbound(self, session: "Session", iq: domish.Element) -> None:
        itype = iq.getAttribute("type")
        if itype not in IQ_TYPES:
            raise BadRequest("iq type must be get, set, result or error")
        if itype in ("get", "set") and not iq.getAttribute("id"):
            raise BadRequest("an iq get or set needs an id")
        to = iq.getAttribute("to")
        target = tryJID(to) if to else None
        if to and target is None:
            raise BadRequest("iq 'to' is not a valid JID", condition="jid-malformed")
        if target is None or (not target.user and target.host == self.domain and not target.resource):
            handlers = self.accountHandlers if target is None else self.serverHandlers
            self._answer(session, iq, handlers)
            return
        if target.host != self.domain:
            if itype in ("get", "set"):
                session.deliver(errorReply(iq, "remote-server-not-found", sender=self.domain))
            return
        bare = target.userhost()
        if bare != session.bare and self._blocked(session, iq, target):
            return
        if not target.resource:
            if bare == session.bare:
                self._answer(session, iq, self.accountHandlers)
            elif itype in ("get", "set"):
                payload = [c for c in iq.children if isElement(c)]
                if len(payload) == 1 and (payload[0].uri or "") in self.userHandlers:
                    self.server.spawn(session, iq, self._answerOnBehalf(session, iq, target))
                else:
                    # Another account answered by the server on its behalf: nothing else here
                    # is public.
                    session.deliver(errorReply(iq, "service-unavailable", sender=self.domain))
            return
        peer = self.router.session(bare, target.resource)
        if peer is not None:
            peer.deliver(iq)
        elif itype in ("get", "set"):
            session.deliver(errorReply(iq, "service-unavailable", sender=self.domain))

    def _blocked(self, session: Session, iq: domish.Element, target: JID) -> bool:
        """
        Blocking (XEP-0191) between the sender and another local user with a session: answered
        here (and C{True} returned) when one of them blocks the other.
        """
        blocking = self.server.blocking
        if not blocking.active:
            return False
        if blocking.refuseOutbound(session, iq, target):
            return True
        if blocking.blocks(target.user, session.jid):
            if iq.getAttribute("type") in ("get", "set"):
                session.deliver(errorReply(iq, "service-unavailable", sender=self.domain))
            return True
        return False

    async def _answerOnBehalf(self, session: Session, iq: domish.Element, target: JID) -> None:
        """An iq to another user's bare JID, for a service that answers for users."""
        # That user may be offline, their blocklist not cached: this may read it.
        if await self.server.blocking.isBlockedBy(target.user or "", session.jid):
            raise ServiceUnavailable("no service here answers this")
        self._answer(session, iq, self.userHandlers)

    def _answer(self, session: "Session", iq: domish.Element, handlers: dict[str, Handler]) -> None:
        if iq.getAttribute("type") in ("result", "error"):
            return  # answers to our pushes and pings
        payload = [c for c in iq.children if isElement(c)]
        if len(payload) != 1:
            raise BadRequest("an iq get or set carries exactly one payload element")
        child = payload[0]
        handler = handlers.get(child.uri or "")
        if handler is None:
            raise ServiceUnavailable(f"no service here answers {child.uri}")
        reply = handler(session, iq, child)
        if isElement(reply):
            session.deliver(reply)
        else:
            self.server.spawn(session, iq, _send(session, reply))

    # built-in services --------------------------------------------------------

    def _ping(self, session: "Session", iq: domish.Element, child: domish.Element) -> domish.Element:
        return iqResult(iq, self.domain if not iq.getAttribute("to") else None)

    def allFeatures(self) -> list[str]:
        names = set(self.serverHandlers) | set(self.accountHandlers) | set(self.userHandlers) | self.features
        return sorted(names)

    def _discoInfo(self, session: "Session", iq: domish.Element, child: domish.Element) -> domish.Element:
        if iq.getAttribute("type") != "get":
            raise BadRequest("disco#info is get only")
        if child.getAttribute("node"):
            raise ServiceUnavailable("no such node", condition="item-not-found")
        reply = iqResult(iq, session.bare)
        query = reply.addElement((NS_DISCO_INFO, "query"))
        identity = query.addElement("identity")
        if iq.getAttribute("to") and tryJID(iq["to"]) is not None and not tryJID(iq["to"]).user:
            identity["category"], identity["type"], identity["name"] = "server", "im", "xmppjson"
            features = self.allFeatures()
        else:
            identity["category"], identity["type"] = "account", "registered"
            features = sorted(set(self.accountHandlers) | {NS_DISCO_INFO})
        for feature in features:
            query.addElement("feature")["var"] = feature
        return reply

    def _discoItems(self, session: "Session", iq: domish.Element, child: domish.Element) -> domish.Element:
        if iq.getAttribute("type") != "get":
            raise BadRequest("disco#items is get only")
        reply = iqResult(iq, session.bare)
        reply.addElement((NS_DISCO_ITEMS, "query"))
        return reply

    def _version(self, session: "Session", iq: domish.Element, child: domish.Element) -> domish.Element:
        if iq.getAttribute("type") != "get":
            raise BadRequest("version is get only")
        reply = iqResult(iq)
        query = reply.addElement((NS_VERSION, "query"))
        query.addElement("name", content="xmppjson")
        query.addElement("version", content=xmppjson.__version__)
        query.addElement("os", content=platform.system())
        return reply


async def _send(session: "Session", pending: Awaitable[domish.Element]) -> None:
    reply = await pending
    if reply is not None and session.active:
        session.deliver(reply)


