"""
The IM core's entry point, shared by every door.  (Being written: the router issue.)

Public API the doors use:
 - C{async openSession(session) -> None}: register a bound session with the router (a session
   with the same full JID is replaced and closed with C{conflict}); raises
   L{xmppjson.error.ResourceConstraint} when the user has too many sessions.
 - C{receive(session, element) -> None}: a stanza from the session's client.  Never raises:
   every error is answered to the session as a stanza error.
 - C{closeSession(session) -> None}: the session's connection is gone (idempotent).
 - C{newResource() -> str}: a fresh server-generated resource.
 - C{async shutdown()}: close every session with C{system-shutdown}.
"""

from __future__ import annotations

from typing import Any

from xmppjson.config import Config


class IMServer:
    def __init__(self, config: Config, store: Any, reactor: Any):
        self.config = config
        self.store = store
        self.reactor = reactor

    async def shutdown(self) -> None:
        pass
