"""
What every session is, whatever its door.

A door (the c2s XML stream, the JSON WebSocket) authenticates a user, builds a subclass of
L{Session} that knows how to put a stanza on its wire, and hands it to the IM core
(L{xmppjson.im.server.IMServer}).  From then on the core only ever calls L{Session.deliver} and
L{Session.close}; the door only ever calls C{IMServer.receive} with stanzas from its client and
C{IMServer.closeSession} when its connection ends.  No door knows the other exists.
"""

from __future__ import annotations

from typing import Optional

from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish


class Session:
    """
    One connected client resource.

    @ivar jid: the full JID (C{user@domain/resource}).
    @ivar bare: the bare JID as a string.
    @ivar localpart: the (nodeprepped) user name.
    @ivar door: C{"c2s"} or C{"websocket"}, for logs and metrics only.
    @ivar priority: the priority of the last available presence (0 before any).
    @ivar presence: the last available presence broadcast by this session, or C{None} while the
        session is not available (never sent presence, or sent unavailable).
    @ivar receivesMessages: whether a message to the bare JID may be delivered here.  XMPP
        sessions become eligible with their first available presence (RFC 6121); WebSocket
        sessions from the moment they open (the original web API did so).
    @ivar interested: the session receives roster pushes (it requested the roster, RFC 6121
        2.1.6; WebSocket sessions always).
    @ivar directedTo: full/bare JIDs this session sent directed presence to, which must get its
        unavailable presence when it ends.
    @ivar active: False once the session is closed; the core never delivers to it then.
    """

    door = "session"
    #: Whether the session is eligible for bare-JID messages even while not available (the
    #: JSON door's sessions are, as the original web API's were).
    messagesWhileUnavailable = False

    def __init__(self, jid: JID):
        self.jid = jid
        self.bare = jid.userhost()
        self.localpart = jid.user or ""
        self.resource = jid.resource or ""
        self.full = jid.full()
        self.priority = 0
        self.presence: Optional[domish.Element] = None
        self.receivesMessages = self.messagesWhileUnavailable
        self.interested = False
        self.directedTo: set[str] = set()
        self.active = True

    @property
    def available(self) -> bool:
        return self.presence is not None

    def deliver(self, element: domish.Element) -> None:
        """
        Put a stanza addressed to this session on the wire.  Must not raise; a door that cannot
        write (its connection is gone) hands the stanza back with L{undeliverable}.
        """
        raise NotImplementedError

    def close(self, condition: str | None = None, text: str | None = None) -> None:
        """
        End the session from the server side, with an optional stream error condition
        (C{conflict}, C{system-shutdown}, C{policy-violation}, ...).  The door must then call
        C{IMServer.closeSession} once its connection is gone.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{self.__class__.__name__} {self.full}>"
