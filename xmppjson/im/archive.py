"""
The message archive (XEP-0313, Message Archive Management) and the queries every door makes of
it: XMPP clients with C{urn:xmpp:mam:2} iqs, web clients with the JSON dialect's C{history} iq
(translated to the same iq by L{xmppjson.jsonstanza}), REST clients with C{GET /me/history}.

Writing is off the delivery path.  L{Archive.observe} is a message observer
(L{xmppjson.im.message.MessageHandler.observers}): it runs after the message was delivered (or
stored offline) and puts it in an in-memory queue (for a message the c2s door wrote, what the
store will write, made at once from the door's text: a few µs).  The queue is written in
batches, one transaction each, when it holds L{Archive.batchSize} messages or
L{Archive.interval} seconds after its first message, whichever comes first; a query writes
what is queued before it reads, so nobody misses what was just sent.  The queue is
bounded (L{Archive.maxQueue}): when the database is away for long the newest messages are not
archived, and a log line says how many.

Archived are messages of type C{chat} or C{normal} with a body or a subject (what offline storage
keeps too), unless they carry a XEP-0334 C{no-store} or C{no-permanent-store} hint.  Each message
between two local users is archived twice, once in each party's archive, under the same id: the
XEP-0359 stanza-id the recipient got in C{<stanza-id by='recipient@domain'/>}.  See
C{docs/history.md} for every decision.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.words.xish import domish

from xmppjson.error import BadRequest, StoreUnavailable, XMPPJSONError
from xmppjson.im.stanzas import (
    NS_CLIENT,
    NS_DELAY,
    NS_SID,
    dropServerMarks,
    firstChild,
    iqResult,
    isServerMark,
    makeElement,
    parseStanza,
    stamp,
    tryJID,
)
from xmppjson.jsonstanza import archivedFrame, archiveText, isArchivedFrame
from xmppjson.storage import ArchiveEntry, ArchiveMessage, ArchivePage, ArchiveQuery
from xmppjson.xmltext import serialize

if TYPE_CHECKING:
    from xmppjson.im.server import IMServer
    from xmppjson.session import Session

_T = TypeVar("_T")

NS_MAM = "urn:xmpp:mam:2"
NS_MAM_EXTENDED = "urn:xmpp:mam:2#extended"
NS_FORWARD = "urn:xmpp:forward:0"
NS_RSM = "http://jabber.org/protocol/rsm"
NS_DATA = "jabber:x:data"
NS_HINTS = "urn:xmpp:hints"

_newTuple = tuple.__new__

#: Messages on one page when the query does not say.
DEFAULT_PAGE = 50
#: The most messages on one page, whatever the query asks for (XEP-0059 lets the server
#: return fewer than C{max}).
MAX_PAGE = 250
#: The most ids one C{ids} filter may name.
MAX_IDS = MAX_PAGE

#: The query form's fields (XEP-0313 4.1 and the C{#extended} ones), in the order the form
#: lists them.
FORM_FIELDS: tuple[tuple[str, str], ...] = (
    ("with", "jid-single"),
    ("start", "text-single"),
    ("end", "text-single"),
    ("after-id", "text-single"),
    ("before-id", "text-single"),
    ("ids", "text-multi"),
)


class FeatureNotImplemented(XMPPJSONError):
    condition = "feature-not-implemented"


# -- parsing queries (shared by every door) -------------------------------------------------


def parseStamp(text: str, name: str) -> datetime.datetime:
    """
    A XEP-0082 DateTime (C{2024-05-17T12:30:15Z}, fractions and offsets allowed) as an aware
    datetime.

    @raise BadRequest: not a date-time with a time zone.
    """
    value = text.strip()
    try:
        if "T" not in value:
            raise ValueError("no time")
        parsed = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"{name}: {text!r} is not a XEP-0082 date-time "
                         "(like 2024-05-17T12:30:15Z)") from None
    if parsed.tzinfo is None:
        raise BadRequest(f"{name}: {text!r} has no time zone (end it with Z)")
    return parsed


def withFilter(text: str) -> tuple[str, str | None]:
    """
    The C{with} filter: a bare JID matches every resource of it, a full JID only that one.

    @return: C{(bare JID, resource or None)}.
    @raise BadRequest: (C{jid-malformed}) not a JID.
    """
    jid = tryJID(text.strip())
    if jid is None:
        raise BadRequest(f"with: {text!r} is not a valid JID", condition="jid-malformed")
    return jid.userhost(), jid.resource or None


def pageSize(value: int | None) -> int:
    """The page size for a requested C{max}: the default when absent, at most L{MAX_PAGE}."""
    if value is None:
        return DEFAULT_PAGE
    if value < 0:
        raise BadRequest("max: must not be negative")
    return min(value, MAX_PAGE)


def _intText(text: str, name: str) -> int:
    value = text.strip()
    if not value.isdigit() or len(value) > 9:
        raise BadRequest(f"{name}: {text!r} is not a whole number")
    return int(value)


def _fieldValues(form: domish.Element) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    for field in form.elements(NS_DATA, "field"):
        var = field.getAttribute("var")
        if not var:
            raise BadRequest("a form field without var")
        fields[var] = [str(value) for value in field.elements(NS_DATA, "value")]
    return fields


def parseMAMQuery(query: domish.Element) -> ArchiveQuery:
    """
    The L{ArchiveQuery} a XEP-0313 C{<query/>} asks for: its data form (C{with}, C{start},
    C{end}, C{after-id}, C{before-id}, C{ids}) and its XEP-0059 C{<set/>} (C{max}, C{after},
    C{before}).

    @raise BadRequest: a malformed form or set, or a field this archive does not know.
    @raise FeatureNotImplemented: an RSM C{<index/>} (jumping to a position).
    """
    if query.getAttribute("node"):
        raise XMPPJSONError("only the user's own archive is here, not nodes",
                            condition="item-not-found")
    arguments: dict[str, Any] = {}
    form = firstChild(query, "x", NS_DATA)
    if form is not None:
        if form.getAttribute("type", "submit") != "submit":
            raise BadRequest("the query form must be of type submit")
        fields = _fieldValues(form)
        formType = fields.pop("FORM_TYPE", [NS_MAM])
        if formType != [NS_MAM]:
            raise BadRequest(f"FORM_TYPE must be {NS_MAM}")
        known = {name for name, _ in FORM_FIELDS}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise BadRequest(f"unknown query field(s): {', '.join(unknown)}")
        single = {name: (values[0] if values else "") for name, values in fields.items()}
        # An empty value is how some clients leave a field unset.
        if single.get("with", "").strip():
            arguments["withJID"], arguments["withResource"] = withFilter(single["with"])
        for name in ("start", "end"):
            if single.get(name, "").strip():
                arguments[name] = parseStamp(single[name], name)
        for name, key in (("after-id", "afterId"), ("before-id", "beforeId")):
            if single.get(name, "").strip():
                arguments[key] = single[name].strip()
        if "ids" in fields:
            ids = tuple(dict.fromkeys(v.strip() for v in fields["ids"] if v.strip()))
            if len(ids) > MAX_IDS:
                raise BadRequest(f"ids: at most {MAX_IDS}")
            arguments["ids"] = ids
    rsm = firstChild(query, "set", NS_RSM)
    requested: int | None = None
    if rsm is not None:
        for child in rsm.elements():
            if child.uri != NS_RSM:
                continue
            if child.name == "max":
                requested = _intText(str(child), "max")
            elif child.name == "after":
                if not str(child).strip():
                    raise BadRequest("after: needs an id")
                arguments["after"] = str(child).strip()
            elif child.name == "before":
                arguments["before"] = str(child).strip()
            elif child.name == "index":
                raise FeatureNotImplemented("paging by index is not supported; use after/before")
    arguments["max"] = pageSize(requested)
    return ArchiveQuery(**arguments)


def archivable(children: list[Any]) -> bool:
    """
    Whether a message with these children is archived for what it holds: a body or a subject
    in C{jabber:client}, and no XEP-0334 C{no-store} or C{no-permanent-store} hint (the
    sender asked for it not to be kept).
    """
    content = False
    for child in children:
        if type(child) is not str:
            name = child.name
            if name == "body" or name == "subject":
                content = content or child.uri == NS_CLIENT or child.uri is None
            elif child.uri == NS_HINTS and (name == "no-store" or name == "no-permanent-store"):
                return False
    return content


def stampedId(children: list[Any], bare: str) -> str | None:
    """
    The id of the stanza-id by C{bare} that the core appended last to a routed message's
    C{children} (L{xmppjson.im.message.MessageHandler._stampId}), or C{None} when the last
    child is not one.
    """
    if not children:
        return None
    stamped = children[-1]
    if type(stamped) is str or stamped.name != "stanza-id" or stamped.uri != NS_SID:
        return None
    attributes = stamped.attributes
    if attributes.get("by") != bare:
        return None
    return attributes.get("id") or None


def doorText(message: domish.Element, bare: str) -> tuple[str, str] | None:
    """
    The recipient's stanza-id and the text the c2s door wrote for C{message}
    (L{xmppjson.c2s.stream.C2SSession.deliver} keeps it as C{_c2sText}), when that text is
    still the message's: written after the server stamped this stanza-id (the id is in it)
    and with nothing added since (the stanza-id, which the core appends just before
    delivering, is still the last child); else C{None}.
    """
    # Read from the instance's dict: domish's __getattr__ would answer a child element named
    # "_c2sText" for a message the door never wrote.
    text = message.__dict__.get("_c2sText")
    if text is None:
        return None
    sid = stampedId(message.children, bare)
    if sid is None or sid not in text:
        return None
    return sid, text


def readText(message: domish.Element, bare: str) -> tuple[str, str] | None:
    """
    The recipient's stanza-id and the text to store for a message the JSON door's reader
    read, when it is still what was read but for the stanza-id the core appended and its
    C{from} (the usual case: nothing else is added to a live message): the frame it was read
    from (L{archiveText}), which costs little to make, where serialising the message as XML
    cost some 5 % of the JSON door's instructions per message; else C{None}.
    """
    children = message.children
    sid = stampedId(children, bare)
    if sid is None:
        return None
    text = archiveText(message, children, 1)
    if text is None:
        return None
    return sid, text


def sessionEntry(sid: str, stamp: int, bare: str, resource: str, sender: Session,
                 xml: str) -> ArchiveMessage:
    """
    The L{ArchiveMessage} of a message C{sender} (a local session) sent to C{bare}'s
    C{resource}: in the recipient's archive, and in the sender's unless it is the same user.
    """
    senderBare = sender.bare
    # Made as a tuple is: this runs for every chat message, and the named tuple's own
    # constructor costs several times more.
    return _newTuple(ArchiveMessage, (
        sid, stamp, bare.partition("@")[0], sender.localpart if senderBare != bare else None,
        senderBare, sender.resource, bare, resource, xml))


def addressedResource(to: str | None, bare: str) -> str:
    """The resource a message's C{to} names: C{""} for C{bare} itself or an unreadable one."""
    if to == bare:
        return ""
    recipient = tryJID(to)
    return (recipient.resource if recipient is not None else None) or ""


# -- results --------------------------------------------------------------------------------


def archivedMessage(entry: ArchiveEntry, domain: str) -> domish.Element:
    """
    The archived C{<message/>} of an entry as every reader shows it (XEP-0313 results, the
    JSON dialect's history, C{GET /me/history}): parsed back, without the server's own marks
    (L{isServerMark}).  A row keeps them when the archive stored the text the c2s door had
    already written for the recipient (L{Archive._archived}); rows the archive serialised
    itself, and those of earlier versions, never had them and read back unchanged.  A row the
    archive stored as the JSON frame a message was read from (L{readText}) is that frame read
    again, with its C{from}.
    """
    if isArchivedFrame(entry.xml):
        return archivedFrame(entry.xml)
    message = parseStanza(entry.xml)
    dropServerMarks(message, domain)
    return message


def readable(entries: Iterable[ArchiveEntry], read: Callable[[ArchiveEntry], _T],
             log: Logger) -> Iterator[_T]:
    """
    C{read(entry)} for each entry, leaving out (with a logged traceback) one whose stored XML
    cannot be read back: one bad row costs its reader that message, not the page.
    """
    for entry in entries:
        try:
            yield read(entry)
        except Exception:  # noqa: BLE001 -- logged with its traceback, never silent
            log.failure("Leaving out archived message {id} of {owner}: it cannot be read",
                        id=entry.id, owner=entry.owner)


def forwarded(entry: ArchiveEntry, domain: str) -> domish.Element:
    """
    The XEP-0297 C{<forwarded/>} of an entry: its archive stamp as a XEP-0203 delay in the
    server's name, and the message.
    """
    wrapper = domish.Element((NS_FORWARD, "forwarded"))
    delay = wrapper.addElement((NS_DELAY, "delay"))
    delay["stamp"] = stamp(entry.stamp)
    delay["from"] = domain
    wrapper.addChild(archivedMessage(entry, domain))
    return wrapper


def resultMessage(entry: ArchiveEntry, to: str, frm: str, queryid: str | None,
                  domain: str) -> domish.Element:
    """One XEP-0313 result: a C{<message/>} carrying C{<result/>} with the forwarded entry."""
    message = makeElement("message", to=to, **{"from": frm})
    result = message.addElement((NS_MAM, "result"))
    if queryid is not None:
        result["queryid"] = queryid
    result["id"] = entry.id
    result.addChild(forwarded(entry, domain))
    return message


def finElement(page: ArchivePage, backward: bool = False) -> domish.Element:
    """
    The C{<fin/>} that ends a query: whether it is complete, and the XEP-0059 C{<set/>}.

    @param backward: the page was counted from its end (C{<before/>}).  Its C{<first/>} then
        has no C{index} (optional in XEP-0059): clients that page backwards must go on until
        C{complete}, and some (slixmpp) stop as soon as C{index} plus the page reaches the
        count, which going backwards is the very first page.
    """
    fin = domish.Element((NS_MAM, "fin"))
    fin["complete"] = "true" if page.complete else "false"
    rsm = fin.addElement((NS_RSM, "set"))
    if page.entries:
        first = rsm.addElement("first", content=page.entries[0].id)
        if page.index is not None and not backward:
            first["index"] = str(page.index)
        rsm.addElement("last", content=page.entries[-1].id)
    rsm.addElement("count", content=str(page.count))
    return fin


def queryForm() -> domish.Element:
    """The C{<query/>} answering a form request: every field a query may use."""
    query = domish.Element((NS_MAM, "query"))
    form = query.addElement((NS_DATA, "x"))
    form["type"] = "form"
    formType = form.addElement("field")
    formType["var"], formType["type"] = "FORM_TYPE", "hidden"
    formType.addElement("value", content=NS_MAM)
    for name, kind in FORM_FIELDS:
        field = form.addElement("field")
        field["var"], field["type"] = name, kind
    return query


# -- the archive ----------------------------------------------------------------------------


class Archive:
    """
    The message archive of every local user: writes routed messages in batches and answers
    queries.

    @ivar enabled: archiving is on (C{config.archive}); when off, nothing is written and
        C{urn:xmpp:mam:2} is not offered.
    @ivar days: retention in days (C{config.archiveDays}); 0 keeps messages forever.
    @ivar batchSize: write as soon as this many messages are queued.
    @ivar interval: write at the latest this many seconds after a message was queued.
    @ivar maxQueue: the most messages waiting to be written; more are not archived (logged).
    @ivar purgeInterval: seconds between two purges of messages older than C{days}.
    @ivar written: messages written so far (each once, whether one or both parties keep it).
    @ivar dropped: messages that could not be archived (queue full, or a failed write).
    """

    log = Logger()

    # Under load the writer waits for 5000 messages, or half a second: each transaction
    # rewrites the pages it touches in every index (one bucket per conversation, each with
    # its index entries), so fewer, larger transactions cost less per message
    # (docs/performance.md, "archive write cost" and item 16: at 500 conversations, 2500 and
    # 0.25 s made buckets of about four messages).
    batchSize = 5000
    interval = 0.5
    maxQueue = 20000
    #: With this many messages waiting while the database is up (the writer is behind, not
    #: failing), the doors stop reading from clients until the queue is down to
    #: C{lowWater}: overload slows senders down rather than leave their messages out.
    highWater = 10000
    lowWater = 2500
    #: The most messages one transaction writes.
    maxBatch = 10000
    #: Seconds to wait before writing again after the database was unavailable.
    retryDelay = 1.0
    purgeInterval = 3600.0
    #: Rows one purge statement deletes, so that a big purge never holds the database long.
    purgeChunk = 10000

    def __init__(self, server: IMServer):
        self.server = server
        self.store = server.store
        self.domain = server.domain
        self.clock = server.reactor
        self.enabled = server.config.archive
        self.days = server.config.archiveDays
        # What the store writes (ArchiveMessage), made as each message was routed (observe).
        self._queue: list[ArchiveMessage] = []
        self._timer: Any = None
        self._lock = defer.DeferredLock()
        # One warning per episode of trouble, and one line when it is over.
        self._troubleLogged = False
        self._droppedSinceLog = 0
        self._unavailable = False
        self._closed = False
        self.written = 0
        self.dropped = 0
        self._purger: task.LoopingCall | None = None
        if not self.enabled:
            return
        server.messages.observers.append(self.observe)
        server.iq.register(NS_MAM, self.handleIQ, account=True)
        # Not an iq namespace but a disco feature of the account (before-id, after-id, ids,
        # metadata); registering it is how the account's disco#info lists it.
        server.iq.register(NS_MAM_EXTENDED, self._noSuchPayload, account=True)
        if self.days > 0:
            self._purger = task.LoopingCall(self._purgeInBackground)
            self._purger.clock = self.clock
            self._purger.start(self.purgeInterval, now=False)

    # -- writing ------------------------------------------------------------------------

    def observe(self, message: domish.Element, bare: str, delivered: Sequence[Session],
                sender: Session | None) -> None:
        """
        A message was routed to C{bare} (delivered, or stored offline): queue what the store
        writes of it for both parties' archives (L{_entry}), made now.  For a message the
        c2s door wrote, that is its text (nothing to serialise).  Any other is serialised now,
        while it is still in the processor's caches, rather than by the batch writer: a queue
        of messages kept alive until the writer runs made every collection of the young
        generation walk them all, and the writer's loop over thousands of them stalled the
        reactor (docs/performance.md, item 21).
        """
        mtype = message.attributes.get("type", "normal")
        if mtype != "chat" and mtype != "normal":
            return
        entry = self._entry(self.clock.seconds(), bare, message, sender)
        if entry is None:
            return
        queue = self._queue
        if len(queue) >= self.maxQueue:
            self._drop(1, "the write queue is full")
            return
        queue.append(entry)
        if len(queue) >= self.highWater and not self._unavailable and not self.server.intakeHeld:
            self.server.holdIntake()
        if self._lock.locked:
            # A write is under way: it goes on while a full batch waits, and sets the timer
            # for the rest when it ends.  (A timer per message here started a writer per
            # message, each waiting for the lock and then writing the few messages queued.)
            return
        if len(queue) >= self.batchSize and not self._unavailable:
            # Soon, not now: this call is still inside the route of a message.  (While the
            # database is away the retry timer stands.)
            self._schedule(0)
        elif self._timer is None:
            self._schedule(self.interval)

    def _schedule(self, delay: float) -> None:
        if self._closed:
            return
        if self._timer is not None:
            if self._timer.getTime() <= self.clock.seconds() + delay:
                return
            self._timer.cancel()
        self._timer = self.clock.callLater(delay, self._onTimer)

    def _onTimer(self) -> None:
        self._timer = None
        if self._lock.locked:
            return  # the write under way (a flush) sets the timer again when it ends
        # What is queued now, and then only full batches: messages that arrive while this
        # batch is written wait for the next timer (or for a full batch), so that a busy
        # server writes a few large transactions rather than one per write's duration of
        # traffic (docs/performance.md, item 16).
        d = defer.Deferred.fromCoroutine(self._drain(everything=False))
        d.addErrback(lambda f: self.log.failure("Writing the message archive failed", f))

    def _drop(self, n: int, why: str) -> None:
        self.dropped += n
        self._droppedSinceLog += n
        if not self._troubleLogged:
            self._troubleLogged = True
            self.log.warn(  # noqa: G010 -- twisted.logger has no warning()
                "Message archive: {why}; messages are not being archived", why=why)

    def _archived(self, message: domish.Element, bare: str) -> tuple[str, str] | None:
        """
        Whether a routed message is archived, and how: its archive id (the stanza-id by
        C{bare}) and the XML to store; C{None} when it is not archived (no body or subject in
        C{jabber:client}, a XEP-0334 no-store hint, no stanza-id).

        The XML is the text the c2s door wrote when it delivered the message, when that text
        is still the message's (L{doorText}).  It still holds the server's marks
        (L{isServerMark}), which L{archivedMessage} drops on reading.  For a message the JSON
        door's reader read and nothing but the stanza-id and C{from} was added to, it is not
        XML but the frame it was read from (L{readText}).  Otherwise (offline storage, a
        message changed since, a stanza no fast reader took) it is the serialisation of the
        message without those marks, by L{xmppjson.xmltext} (L{serialize}: C{jabber:client}
        implied, as L{parseStanza} reads it back).
        """
        if not archivable(message.children):
            return None
        door = doorText(message, bare)
        if door is not None:
            return door
        read = readText(message, bare)
        if read is not None:
            return read
        domain = self.domain
        sid = None
        children = message.children
        kept = []
        for child in children:
            if type(child) is not str:
                name = child.name
                if (name == "stanza-id" or name == "delay") and isServerMark(
                        name, child.uri, child.attributes, domain):
                    if name == "stanza-id" and child.attributes.get("by") == bare:
                        sid = child.attributes.get("id")
                    continue
            kept.append(child)
        if not sid:
            return None
        return sid, serialize(message, kept)

    def _entry(self, routedAt: float, bare: str, message: domish.Element,
               session: Session | None = None) -> ArchiveMessage | None:
        """
        What the store writes for one routed message: serialised once (L{_archived}),
        archived for the recipient and, when the sender is another local user, for the
        sender; C{None} when it is not archived.  The sender's addresses are C{session}'s
        when it sent the message (its C{from} is the session's: every message a local
        session sends), else read from C{from}.
        """
        archived = self._archived(message, bare)
        if archived is None:
            return None
        sid, xml = archived
        when = round(routedAt * 1_000_000)
        attributes = message.attributes
        resource = addressedResource(attributes.get("to"), bare)
        if session is not None and attributes.get("from") == session.full:
            return sessionEntry(sid, when, bare, resource, session, xml)
        owner = bare.partition("@")[0]
        sender = tryJID(attributes.get("from"))
        domain = self.domain
        if sender is None:
            # Not from a JID (the core always sets one): the recipient's copy only.
            return ArchiveMessage(sid, when, owner, None, domain, "", bare, resource, xml)
        senderBare = sender.userhost()
        archivedFor = (sender.user if sender.user and sender.host == domain
                       and senderBare != bare else None)
        return ArchiveMessage(sid, when, owner, archivedFor, senderBare, sender.resource or "",
                              bare, resource, xml)

    async def _drain(self, everything: bool) -> None:
        """
        Write queued messages, a batch per transaction, one writer at a time (so the archive
        order is the routing order).  Without C{everything} (the timer), write what is queued
        and then go on only while a full batch waits: messages that arrive during a write
        wait for the next timer, so a busy server still writes in batches.
        """
        async with self._lock:
            first = True
            while self._queue and (first or everything or len(self._queue) >= self.batchSize):
                first = False
                batch = self._queue[: self.maxBatch]
                del self._queue[: self.maxBatch]
                try:
                    written = await self.store.archiveMessages(batch)
                except StoreUnavailable:
                    # Keep them for a later attempt, oldest first, within the bound; live
                    # chat goes on meanwhile (no back-pressure while the database is away).
                    self._unavailable = True
                    if self.server.intakeHeld:
                        self.server.releaseIntake()
                    self._queue[:0] = batch
                    excess = len(self._queue) - self.maxQueue
                    if excess > 0:
                        del self._queue[self.maxQueue:]
                        self._drop(excess, "the database is unavailable and the queue is full")
                    elif not self._troubleLogged:
                        self._troubleLogged = True
                        self.log.warn(  # noqa: G010 -- twisted.logger has no warning()
                            "Message archive: the database is unavailable; {n} messages wait",
                            n=len(self._queue))
                    self._schedule(self.retryDelay)
                    return
                except Exception:  # noqa: BLE001 -- logged with its traceback, never silent
                    # A bug, not the database being away: retrying would fail again.
                    self.log.failure("Message archive: could not write {n} messages",
                                     n=len(batch))
                    self._drop(len(batch), "a write failed")
                    if self.server.intakeHeld and len(self._queue) <= self.lowWater:
                        self.server.releaseIntake()
                    continue
                self.written += written
                self._unavailable = False
                if self.server.intakeHeld and len(self._queue) <= self.lowWater:
                    self.server.releaseIntake()
                if self._troubleLogged:
                    self.log.info("Message archive: writing again ({n} messages were lost)",
                                  n=self._droppedSinceLog)
                    self._troubleLogged = False
                    self._droppedSinceLog = 0
        if self._queue and self._timer is None:
            self._schedule(self.interval)

    async def flush(self) -> None:
        """Write everything queued now (before a query, and at shutdown)."""
        if self._queue or self._lock.locked:
            await self._drain(everything=True)

    async def close(self) -> None:
        """Stop the timers and write what is queued.  Called by the core at shutdown."""
        self._closed = True
        if self.server.intakeHeld:
            self.server.releaseIntake()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._purger is not None and self._purger.running:
            self._purger.stop()
        await self.flush()
        if self.dropped:
            self.log.warn(  # noqa: G010 -- twisted.logger has no warning()
                "Message archive: {dropped} messages were not archived since the server started"
                " ({written} were)", dropped=self.dropped, written=self.written)

    # -- retention ----------------------------------------------------------------------

    async def purge(self) -> int:
        """
        Delete every archived message older than the retention (C{archiveDays}); fires with
        how many.  Nothing happens when messages are kept forever.
        """
        if self.days <= 0:
            return 0
        cut = datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.UTC)
        cut -= datetime.timedelta(days=self.days)
        total = 0
        while True:
            deleted = await self.store.purgeArchive(cut, self.purgeChunk)
            total += deleted
            if deleted < self.purgeChunk:
                break
        if total:
            self.log.info("Message archive: purged {n} messages older than {days} days",
                          n=total, days=self.days)
        return total

    def _purgeInBackground(self) -> defer.Deferred[Any]:
        d = defer.Deferred.fromCoroutine(self.purge())
        # A failed purge is retried at the next interval; the loop must keep running.
        d.addErrback(lambda f: self.log.failure("Message archive: purge failed", f))
        return d

    # -- reading ------------------------------------------------------------------------

    async def query(self, localpart: str, query: ArchiveQuery) -> ArchivePage:
        """One page of a user's archive, including what is still waiting to be written."""
        await self.flush()
        return await self.store.queryArchive(localpart, query)

    # -- XEP-0313 -----------------------------------------------------------------------

    def _noSuchPayload(self, session: Session, iq: domish.Element, child: domish.Element) -> Any:
        raise XMPPJSONError("no payload lives in this namespace", condition="service-unavailable")

    def handleIQ(self, session: Session, iq: domish.Element, child: domish.Element) -> Any:
        """
        C{urn:xmpp:mam:2} on the user's own account: C{get} of C{<query/>} (the form) or
        C{<metadata/>}; C{set} of C{<query/>} (the results, then C{<fin/>}).
        """
        itype = iq.getAttribute("type")
        if child.name == "query" and itype == "get":
            reply = iqResult(iq)
            reply.addChild(queryForm())
            return reply
        if child.name == "metadata" and itype == "get":
            return self._metadata(session, iq)
        if child.name == "query" and itype == "set":
            return self._query(session, iq, child)
        raise BadRequest(f"no MAM {child.name} {itype} here")

    async def _metadata(self, session: Session, iq: domish.Element) -> domish.Element:
        await self.flush()
        first, last = await self.store.archiveBounds(session.localpart)
        reply = iqResult(iq)
        metadata = reply.addElement((NS_MAM, "metadata"))
        for name, entry in (("start", first), ("end", last)):
            if entry is not None:
                bound = metadata.addElement(name)
                bound["id"] = entry.id
                bound["timestamp"] = stamp(entry.stamp)
        return reply

    async def _query(self, session: Session, iq: domish.Element,
                     child: domish.Element) -> domish.Element:
        query = parseMAMQuery(child)
        queryid = child.getAttribute("queryid")
        page = await self.query(session.localpart, query)
        for result in readable(page.entries, lambda entry: resultMessage(
                entry, session.full, session.bare, queryid, self.domain), self.log):
            if not session.active:
                break
            session.deliver(result)
        reply = iqResult(iq)
        reply.addChild(finElement(page, query.backward))
        return reply
