"""
Persistent storage: one interface, L{IStore}, with two backends of identical behaviour.

 - L{xmppjson.storage.sqlite}: the embedded default, SQLite through C{twisted.enterprise.adbapi}
   (one connection, WAL).
 - L{xmppjson.storage.pgsql}: PostgreSQL through txpostgres.

Both share the SQL in L{xmppjson.storage.sql} and are tested by one mixin
(C{tests/test_storage.py}); the schema is versioned and upgrades itself on C{start()}
(L{xmppjson.storage.schema}).  Every method returns a L{Deferred}; when the database cannot be
reached it fails with L{xmppjson.error.StoreUnavailable}.

Availability: C{start()} fires once the database is reachable and its schema current, retrying in
the background (capped exponential backoff) for as long as it takes.  Until then, and while the
store reconnects after losing its database, every method fails at once with StoreUnavailable
rather than waiting; the store recovers by itself.  Timestamps go in as datetimes (naive ones
are taken as UTC) and come out as aware UTC datetimes.

Use L{openStore} to build a store from a C{--db} URL.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from zope.interface import Attribute, Interface

from xmppjson.error import Conflict, XMPPJSONError

# The profile keys of the login response, in the order the original web API sends them (the
# misspelt "streer_2" is kept on purpose: clients read it).
PROFILE_FIELDS: tuple[str, ...] = (
    "full_name",
    "nick_name",
    "company",
    "department",
    "position",
    "role",
    "street",
    "streer_2",
    "city",
    "state",
    "zip_code",
    "country",
    "about",
    "email",
    "www",
    "phone",
    "birthday",
    "avatar",
)


class UserExists(Conflict):
    """The localpart is already registered."""

    def __init__(self, localpart: str):
        super().__init__(f"user {localpart!r} already exists")


class UnknownUser(XMPPJSONError):
    condition = "item-not-found"


@dataclass(frozen=True)
class ScramKeys:
    """
    The stored form of a password for one SCRAM hash (RFC 5802): never the password itself.
    """

    salt: bytes
    iterations: int
    storedKey: bytes
    serverKey: bytes


@dataclass(frozen=True)
class Credentials:
    """
    Everything needed to check a password: SCRAM keys per mechanism name
    (C{"SCRAM-SHA-1"}, C{"SCRAM-SHA-256"}).
    """

    keys: dict[str, ScramKeys]


@dataclass
class RosterItem:
    """
    One roster entry of a user, per RFC 6121 section 2.1.

    @ivar jid: the contact's bare JID, as a string.
    @ivar subscription: C{"none"}, C{"to"}, C{"from"} or C{"both"}.
    @ivar askOut: the user has sent a subscription request still pending ("ask='subscribe'").
    @ivar pendingIn: the contact has asked to subscribe to the user and has not been answered.
    @ivar approved: the user pre-approved a subscription request from the contact.
    @ivar inRoster: the item is visible in the roster.  An item only known because of a pending
        inbound request is stored with C{inRoster=False} and never shown in roster results.
    """

    jid: str
    name: str | None = None
    subscription: str = "none"
    askOut: bool = False
    pendingIn: bool = False
    approved: bool = False
    inRoster: bool = True
    groups: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class OfflineMessage:
    """
    A stored message for a user who had no available session.

    @ivar stamp: when the server accepted it (UTC, aware).
    @ivar xml: the serialised C{<message/>} element, as the sender's session produced it.
    """

    id: int
    stamp: datetime.datetime
    xml: str


class SessionState(NamedTuple):
    """L{IStore.getSessionState}: what L{IStore.getRoster}, L{IStore.getBlocklist} and
    L{IStore.getProfile} would give, and whether L{IStore.getOffline} would give anything
    (C{offline}: C{False} when the user had no stored message when it was read)."""

    roster: list[RosterItem]
    blocklist: list[str]
    profile: dict[str, Any] | None
    offline: bool = True


class IStore(Interface):
    """
    The database of xmppjson.  Localparts given to it are already nodeprep-normalised.
    All methods return Deferreds.
    """

    backendName = Attribute("short name of the backend: 'sqlite' or 'postgresql'")

    def start() -> Any:
        """
        Connect and upgrade the schema to the current version.  Fires when the store can serve,
        retrying in the background until it can; fires at once if it already can.
        """

    def close() -> Any:
        """Close every connection and stop retrying."""

    def ping() -> Any:
        """Fire with C{True} when a trivial query succeeds; fail with StoreUnavailable otherwise."""

    # users
    def createUser(localpart: str, credentials: Credentials) -> Any:
        """Create an account; fails with L{UserExists}."""

    def userExists(localpart: str) -> Any:
        """Fire with a bool."""

    def getCredentials(localpart: str) -> Any:
        """Fire with the user's L{Credentials}, or C{None} for an unknown user."""

    def setCredentials(localpart: str, credentials: Credentials) -> Any:
        """Replace the user's password keys; fails with L{UnknownUser}."""

    def deleteUser(localpart: str) -> Any:
        """
        Delete the user and everything stored for them (keys, profile, tokens, roster, offline
        messages).  Fires with True if the user existed.
        """

    # profile and last presence
    def getProfile(localpart: str) -> Any:
        """
        Fire with a dict holding every key of L{PROFILE_FIELDS} (C{None} where unset) plus
        C{last_seen} (aware datetime or None), C{presence} and C{status} (strings, C{""} when
        unset); or C{None} for an unknown user.
        """

    def updateProfile(localpart: str, fields: dict[str, str | None]) -> Any:
        """
        Set the given profile fields (keys of L{PROFILE_FIELDS}; C{None} clears one); fails with
        L{UnknownUser}, and with C{ValueError} for any other key.
        """

    def setLastPresence(
        localpart: str, lastSeen: datetime.datetime, presence: str, status: str
    ) -> Any:
        """
        Record the user's live presence (show or C{"unavailable"}), status and time.  Fires with
        C{False}, recording nothing, for an unknown user.
        """

    # tokens
    def addToken(tokenHash: str, localpart: str, expires: datetime.datetime) -> Any:
        """Store a login token by its hash; fails with L{UnknownUser}."""

    def lookupToken(tokenHash: str, now: datetime.datetime) -> Any:
        """
        Fire with the localpart owning the token if it expires after C{now}, or C{None}.
        """

    def revokeToken(tokenHash: str) -> Any:
        """Delete one token.  Fires with True if it existed."""

    def revokeTokens(localpart: str) -> Any:
        """Delete every token of a user; fires with how many."""

    def purgeExpiredTokens(now: datetime.datetime) -> Any:
        """Delete expired tokens; fires with how many."""

    def getSessionState(localpart: str) -> Any:
        """
        Fire with L{SessionState}: what a session needs when it opens (the roster, the
        blocklist, the profile; each as its own getter gives it), read at once: one round trip
        to the database thread on SQLite, three queries in parallel on PostgreSQL.
        """

    # roster
    def getRoster(localpart: str) -> Any:
        """
        Fire with a list of L{RosterItem} (including C{inRoster=False} ones), ordered by JID.
        """

    def setRosterItem(localpart: str, item: RosterItem) -> Any:
        """Insert or replace the item for C{item.jid}; fails with L{UnknownUser}."""

    def removeRosterItem(localpart: str, contact: str) -> Any:
        """Delete the item; fires with True if it existed."""

    # offline messages
    def storeOffline(localpart: str, stamp: datetime.datetime, xml: str) -> Any:
        """Store a message; fires with its id; fails with L{UnknownUser}."""

    def getOffline(localpart: str) -> Any:
        """Fire with the user's L{OfflineMessage}s in the order they were stored."""

    def deleteOffline(localpart: str, ids: list[int]) -> Any:
        """
        Delete delivered offline messages of this user (ids of other users' messages are
        ignored); fires with how many were deleted.
        """

    # ---- message archive (XEP-0313); see ArchiveEntry and ArchiveQuery below ----

    def archiveMessages(messages: list[ArchiveMessage]) -> Any:
        """
        Append messages to the archives of their parties, in the given order, atomically.
        A message whose id is already archived is skipped, and so is a party that no longer
        exists (a message left with neither is skipped); fires with how many messages were
        written.
        """

    def queryArchive(owner: str, query: ArchiveQuery) -> Any:
        """
        Fire with one L{ArchivePage} of the owner's archive; fails with L{UnknownArchiveId}
        when an id the query names is not in that archive.
        """

    def archiveBounds(owner: str) -> Any:
        """
        Fire with C{(first, last)}: the oldest and newest L{ArchiveEntry} of the owner's
        archive, or C{(None, None)} when it is empty.
        """

    def purgeArchive(before: datetime.datetime, limit: int = 10000) -> Any:
        """
        Delete at most C{limit} archived messages stamped before C{before}, from every
        archive; fires with how many (call again while it returns C{limit}).
        """

    # ---- blocklist (XEP-0191), schema version 2 ----

    def getBlocklist(localpart: str) -> Any:
        """
        Fire with the JIDs the user blocks (strings, as stored), sorted; C{[]} for a user
        with none, and for an unknown user.
        """

    def addToBlocklist(localpart: str, jids: list[str]) -> Any:
        """
        Add JIDs to the user's blocklist, atomically; fires with those that were not in it
        yet (in the order given); fails with L{UnknownUser}.
        """

    def removeFromBlocklist(localpart: str, jids: list[str] | None) -> Any:
        """
        Remove JIDs from the user's blocklist (C{None}: every one); fires with those that
        were in it, sorted.
        """


# ---- message archive (XEP-0313) ----------------------------------------------------------


class UnknownArchiveId(XMPPJSONError):
    """A query names an archive id (stanza-id) that is not in the archive."""

    condition = "item-not-found"


@dataclass(frozen=True)
class ArchiveEntry:
    """
    One copy of a message in one user's archive.

    @ivar owner: the localpart whose archive holds the copy.
    @ivar id: the server's stanza-id (XEP-0359), unique within the owner's archive.
    @ivar stamp: when the server routed the message (UTC, aware).
    @ivar withJID: the bare JID of the other party (the domain for server messages).
    @ivar withResource: the other party's resource, C{""} if the address had none.
    @ivar outgoing: the owner sent it (C{False}: the owner received it).
    @ivar xml: the serialised C{<message/>}, as routed.
    """

    owner: str
    id: str
    stamp: datetime.datetime
    withJID: str
    withResource: str
    outgoing: bool
    xml: str


class ArchiveMessage(NamedTuple):
    """
    One message to archive, for one or both of its parties: written once, shown in each
    party's archive as an L{ArchiveEntry} (a tuple because the archive makes one for every
    chat message).

    @ivar id: the server's stanza-id (XEP-0359), unique in the archive.
    @ivar stamp: when the server routed the message, in whole microseconds since the epoch
        (UTC; L{xmppjson.storage.sql.micros} makes it of a datetime): the archive makes one
        for every chat message, and a datetime cost more than the rest of it.
    @ivar recipient: the localpart whose archive holds the message as received, or C{None}.
    @ivar sender: the localpart whose archive holds the message as sent, or C{None} (a
        message to oneself is archived once, as received).
    @ivar senderJID: the sender's bare JID (the domain for server messages).
    @ivar senderResource: the sender's resource, C{""} if none.
    @ivar recipientJID: the recipient's bare JID.
    @ivar recipientResource: the resource the message was addressed to, C{""} if none.
    @ivar xml: the serialised C{<message/>}, as routed.
    """

    id: str
    stamp: int
    recipient: str | None
    sender: str | None
    senderJID: str
    senderResource: str
    recipientJID: str
    recipientResource: str
    xml: str


@dataclass(frozen=True)
class ArchiveQuery:
    """
    What to read from one archive: filters (XEP-0313 form fields) and one page of them
    (XEP-0059 result set management).  Results are always in archive order, oldest first.

    @ivar withJID: only messages with this bare JID.
    @ivar withResource: with C{withJID}, only messages with this resource of it.
    @ivar start: only messages stamped at or after this instant.
    @ivar end: only messages stamped at or before this instant.
    @ivar afterId: only messages after this archive id (filter).
    @ivar beforeId: only messages before this archive id (filter).
    @ivar ids: only the messages with these archive ids.
    @ivar after: the page starts right after this archive id.
    @ivar before: the page ends right before this archive id; C{""} asks for the last page.
        With C{before} and without C{after} the page is counted from its end.
    @ivar max: the most messages on the page (0: only count).
    """

    withJID: str | None = None
    withResource: str | None = None
    start: datetime.datetime | None = None
    end: datetime.datetime | None = None
    afterId: str | None = None
    beforeId: str | None = None
    ids: tuple[str, ...] | None = None
    after: str | None = None
    before: str | None = None
    max: int = 50

    @property
    def backward(self) -> bool:
        """Whether the page is taken from the end of the range (RSM C{before} alone)."""
        return self.before is not None and self.after is None


@dataclass(frozen=True)
class ArchivePage:
    """
    One page of an archive query.

    @ivar entries: the page, oldest first.
    @ivar complete: the page reaches the end of the filtered messages in the paging direction
        (the newest one going forwards, the oldest one going backwards).
    @ivar count: how many messages match the filters, all pages together.
    @ivar index: the position of C{entries[0]} among them (C{None} for an empty page).
    """

    entries: list[ArchiveEntry]
    complete: bool
    count: int
    index: int | None


def openStore(url: str, reactor: Any = None) -> Any:
    """
    Build (not start) the store named by a C{--db} URL.

     - C{sqlite:PATH} (relative to the working directory) or C{sqlite::memory:}
     - C{postgresql://user:pass@host:port/dbname}

    @raise ValueError: for an unknown scheme.
    """
    if url.startswith("sqlite:"):
        from xmppjson.storage.sqlite import SQLiteStore

        return SQLiteStore(url[len("sqlite:"):], reactor=reactor)
    if url.startswith(("postgresql://", "postgres://")):
        from xmppjson.storage.pgsql import PostgreSQLStore

        return PostgreSQLStore(url, reactor=reactor)
    raise ValueError(
        f"unknown database URL {url!r}: use sqlite:FILE, sqlite::memory: or postgresql://..."
    )
