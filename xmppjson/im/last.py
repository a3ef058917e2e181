"""
Last Activity (XEP-0012), C{jabber:iq:last}, answered by the server:

 - to the server's domain: its uptime;
 - to a user's bare JID (one's own, or a contact's who lets the asker see their presence, i.e.
   whose roster gives the asker a C{from} or C{both} subscription): C{0} seconds while the user
   has an available session, else the seconds since their last presence ended, with the status
   text of that last presence.  Anyone else is answered C{forbidden}, an unknown user
   C{service-unavailable}.

The time and status are the ones the REST API reports as C{last_seen} and C{status}
(L{xmppjson.im.presence.LastSeen}): the value not yet written to the store when there is one,
else the stored one.  To a full JID the iq goes to the client, like any other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.words.xish import domish

from xmppjson.error import BadRequest, Forbidden, NotFound, ServiceUnavailable
from xmppjson.im import roster as R
from xmppjson.im.stanzas import iqResult, tryJID

if TYPE_CHECKING:
    from xmppjson.im.server import IMServer
    from xmppjson.session import Session

NS_LAST = "jabber:iq:last"


class LastActivity:
    """
    The C{jabber:iq:last} service.

    @ivar started: when the server started, in the reactor's seconds.
    """

    def __init__(self, server: IMServer):
        self.server = server
        self.started = server.reactor.seconds()
        server.iq.register(NS_LAST, self.uptime, server=True)
        server.iq.register(NS_LAST, self.handleIQ, account=True, user=True)

    def _query(self, iq: domish.Element, sender: str | None, seconds: int, text: str = "") -> domish.Element:
        reply = iqResult(iq, sender)
        query = reply.addElement((NS_LAST, "query"))
        query["seconds"] = str(max(0, seconds))
        if text:
            query.addContent(text)
        return reply

    def uptime(self, session: Session, iq: domish.Element, child: domish.Element) -> domish.Element:
        """To the server: seconds since it started."""
        if iq.getAttribute("type") != "get":
            raise BadRequest("last activity is get only")
        return self._query(iq, self.server.domain, int(self.server.reactor.seconds() - self.started))

    def handleIQ(self, session: Session, iq: domish.Element, child: domish.Element):
        """To a user's bare JID: how long ago they were last available."""
        if iq.getAttribute("type") != "get":
            raise BadRequest("last activity is get only")
        to = iq.getAttribute("to")
        target = tryJID(to) if to else None
        if target is None or target.userhost() == session.bare:
            return self._answer(session, iq, session.localpart, own=True)
        return self._answer(session, iq, target.user or "", own=False)

    async def _answer(self, session: Session, iq: domish.Element, localpart: str, own: bool) -> domish.Element:
        server = self.server
        bare = f"{localpart}@{server.domain}"
        sender = session.bare if own else None
        if not own:
            if not server.router.hasSessions(bare) and not await server.store.userExists(localpart):
                raise ServiceUnavailable("no such user")
            roster = await server.rosters.get(localpart)
            if not R.hasFrom(roster.get(session.bare)):
                raise Forbidden("you are not subscribed to this user's presence")
        if server.router.availableSessionsOf(bare):
            return self._query(iq, sender, 0)
        pending = server.presence.lastSeen.pending(localpart)
        if pending is not None:
            when, _, status = pending
        else:
            profile = await server.store.getProfile(localpart)
            if profile is None:
                raise ServiceUnavailable("no such user")
            when, status = profile["last_seen"], profile["status"]
        if when is None:
            raise NotFound("this user has never been online")
        seconds = int(server.reactor.seconds() - when.timestamp())
        return self._query(iq, sender, seconds, status)
