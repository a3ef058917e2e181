"""
The one in-memory routing table: which sessions are connected, under which full JID, and which of
them a stanza addressed to a JID reaches (RFC 6121 section 8).

The router knows nothing of doors or of stanza semantics: the IM core (L{xmppjson.im.server})
asks it where to deliver.  A clustered deployment replaces it with a subclass that also knows the
sessions of other nodes (L{xmppjson.cluster.ClusterRouter}); everything else talks to it only
through the methods below.

The seam a clustered router needs, and what it means here:
 - the lookups (L{Router.session}, L{Router.sessionsOf}, L{Router.availableSessionsOf},
   L{Router.messageTargets}, L{Router.countOf}) answer for every session the router knows, so in
   a cluster for the sessions of every node;
 - L{Router.hasSessions} and iteration answer for this process's own sessions only: the core
   uses them for what lives in this process (the roster cache, shutdown);
 - L{Router.changed} is told when a session's presence, priority or flags may have changed
   (only when L{Router.replicated}, so that a single process pays nothing for it);
 - L{Router.ready} is false while the router cannot take sessions (a cluster node that is still
   loading the other nodes' sessions).
"""

from __future__ import annotations

from typing import Iterator, Optional

from xmppjson.session import Session


class Router:
    """
    Sessions by bare JID, then by resource.

    @cvar replicated: whether L{changed} must be called after a session's state may have
        changed (a clustered router copies that state to other nodes).
    @cvar ready: whether sessions may be added now.
    """

    replicated = False
    ready = True

    def __init__(self) -> None:
        self._byBare: dict[str, dict[str, Session]] = {}

    def add(self, session: Session) -> Optional[Session]:
        """
        Register a session.  Returns the session it replaced (same full JID), which the caller
        must close with a C{conflict}.
        """
        resources = self._byBare.setdefault(session.bare, {})
        previous = resources.get(session.resource)
        resources[session.resource] = session
        return previous if previous is not session else None

    def remove(self, session: Session) -> bool:
        """
        Unregister a session, if it is still the one registered under its full JID.  Returns
        whether it was.
        """
        resources = self._byBare.get(session.bare)
        if not resources or resources.get(session.resource) is not session:
            return False
        del resources[session.resource]
        if not resources:
            del self._byBare[session.bare]
        return True

    def session(self, bare: str, resource: str) -> Optional[Session]:
        resources = self._byBare.get(bare)
        return resources.get(resource) if resources else None

    def sessionsOf(self, bare: str) -> list[Session]:
        resources = self._byBare.get(bare)
        return list(resources.values()) if resources else []

    def hasSessions(self, bare: str) -> bool:
        """Whether this process holds a session of C{bare} (its roster is cached here)."""
        return bare in self._byBare

    def changed(self, session: Session) -> None:
        """
        C{session}'s presence, priority, C{receivesMessages} or C{interested} may have changed.
        Called by the core only when L{replicated} is true; nothing to do for a single process.
        """

    def countOf(self, bare: str) -> int:
        resources = self._byBare.get(bare)
        return len(resources) if resources else 0

    def availableSessionsOf(self, bare: str) -> list[Session]:
        """Sessions of a user that have sent available presence."""
        resources = self._byBare.get(bare)
        if not resources:
            return []
        return [s for s in resources.values() if s.presence is not None]

    def messageTargets(self, bare: str) -> list[Session]:
        """
        Where a message to a bare JID goes (RFC 6121 8.5.2.1.1): the sessions eligible for
        messages with the highest non-negative priority; all of them when several tie.
        """
        resources = self._byBare.get(bare)
        if not resources:
            return []
        best = -1
        targets: list[Session] = []
        for s in resources.values():
            if not s.receivesMessages or s.priority < 0:
                continue
            if s.priority > best:
                best = s.priority
                targets = [s]
            elif s.priority == best:
                targets.append(s)
        return targets

    def __iter__(self) -> Iterator[Session]:
        for resources in list(self._byBare.values()):
            yield from list(resources.values())

    def __len__(self) -> int:
        return sum(len(r) for r in self._byBare.values())
