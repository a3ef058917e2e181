"""
The message archive's storage form since schema version 6: conversation buckets.

A bucket is one row holding many archived messages of one conversation: those between the same
two addresses (bare JIDs) that one batch of the archive writer (a fraction of a second of
traffic) wrote, for the same local users.  Its two sides, C{a} and C{b}, each have an address
(C{jid_a}, C{jid_b}) and, when the bucket is in that user's archive, a local user
(C{party_a}, C{party_b}).  Archiving a message costs a record appended to a string instead of a
row and three index entries (docs/performance.md, item 15); a query reads the owner's buckets
in archive order and decodes them.

Inside a bucket each message is one I{record}, the records in archive order, each::

    id US sid US stamp US resource_a US resource_b US sender US length US xml

(C{US} is the ASCII unit separator, U+001F, which no JID resource, server stanza-id or XML 1.0
document contains; C{sender} is C{a} or C{b}; C{length} is the XML's length in characters,
so that reading never scans the XML.)  C{id} is the message's place in the archive order:
the time of its stanza-id (L{sidMicros}) for the ids this server makes, else one given when
writing and kept in C{archive_sids}.  Records compare by C{(id, sid)}: two cluster nodes may
make stanza-ids in the same microsecond.  A bucket never spans more than L{MAX_SPAN} of ids,
so that a reader going backwards knows when no older bucket can reach its page.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

#: The field separator of a record.
SEP = "\x1f"

#: The widest range of archive ids (microseconds) one bucket covers.
MAX_SPAN = 1_000_000


class Record(NamedTuple):
    """One archived message as one of its parties sees it."""

    id: int
    sid: str
    stamp: int  # microseconds since the epoch (UTC)
    resource: str  # the correspondent's resource, "" if none
    outgoing: bool
    xml: str


class Raw(NamedTuple):
    """One record as stored (see the module docstring)."""

    id: int
    sid: str
    stamp: int
    resourceA: str
    resourceB: str
    sender: str
    xml: str


def sidMicros(sid: str) -> int | None:
    """
    The archive id a stanza-id carries: the time in microseconds at the front of the ids this
    server makes (L{xmppjson.im.stanzas.newStanzaId}: 13 hex digits, then 12 base64url
    characters); C{None} for ids of another length or whose front is not a number.  (Another
    25-character id whose front reads as hexadecimal gets that number: writing and reading go
    by this same rule, so it is found all the same.)
    """
    if len(sid) != 25:
        return None
    try:
        return int(sid[:13], 16)
    except ValueError:
        return None


def recordText(ident: int, sid: str, stamp: int, resourceA: str, resourceB: str, sender: str,
           xml: str) -> str:
    """One record's text (see the module docstring): the one place its layout is written."""
    return (f"{ident}{SEP}{sid}{SEP}{stamp}{SEP}{resourceA}{SEP}{resourceB}{SEP}{sender}"
            f"{SEP}{len(xml)}{SEP}{xml}")


def encode(raw: Raw) -> str:
    """One record, from its fields."""
    return recordText(*raw)


def _fields(data: str) -> Iterator[tuple[str, str, str, str, str, str, str]]:
    """Each record's fields, as text: id, sid, stamp, resource a, resource b, sender, xml."""
    find = data.find
    pos = 0
    end = len(data)
    while pos < end:
        a = find(SEP, pos)
        b = find(SEP, a + 1)
        c = find(SEP, b + 1)
        d = find(SEP, c + 1)
        e = find(SEP, d + 1)
        f = find(SEP, e + 1)
        g = find(SEP, f + 1)
        if min(a, b, c, d, e, f, g) < 0:
            raise ValueError(f"a truncated archive record at {pos}")
        stop = g + 1 + int(data[f + 1:g])
        if stop > end:
            raise ValueError(f"an archive record longer than its bucket at {pos}")
        yield (data[pos:a], data[a + 1:b], data[b + 1:c], data[c + 1:d], data[d + 1:e],
               data[e + 1:f], data[g + 1:stop])
        pos = stop


def decodeRaw(data: str) -> list[Raw]:
    """
    The records of a bucket, in its order.

    @raise ValueError: C{data} is not a sequence of records.
    """
    return [Raw(int(i), sid, int(stamp), a, b, sender, xml)
            for i, sid, stamp, a, b, sender, xml in _fields(data)]


def decode(data: str, side: str) -> list[Record]:
    """The records of a bucket as the party on C{side} (C{"a"} or C{"b"}) sees them."""
    if side == "a":
        return [Record(int(i), sid, int(stamp), b, sender == "a", xml)
                for i, sid, stamp, _, b, sender, xml in _fields(data)]
    return [Record(int(i), sid, int(stamp), a, sender == "b", xml)
            for i, sid, stamp, a, _, sender, xml in _fields(data)]


class _Bucket:
    __slots__ = ("first", "high", "last", "low", "ordered", "records")

    def __init__(self, ident: int, sid: str, stamp: int, text: str):
        self.records = [(ident, sid, text)]
        self.low = self.high = stamp
        self.first = self.last = ident
        self.ordered = True


class BucketRows:
    """
    Turns one batch of messages into bucket rows: L{add} each record in archive order, then
    L{rows}.
    """

    __slots__ = ("_full", "_open")

    def __init__(self) -> None:
        self._open: dict[tuple[str | None, str | None, str, str], _Bucket] = {}
        self._full: list[tuple[tuple[str | None, str | None, str, str], _Bucket]] = []

    def add(self, key: tuple[str | None, str | None, str, str], ident: int, sid: str,
            stamp: int, text: str) -> None:
        """
        A record (L{encode}'s C{text}) of the conversation C{key}: C{(party_a, party_b,
        jid_a, jid_b)}.
        """
        bucket = self._open.get(key)
        if bucket is None:
            self._open[key] = _Bucket(ident, sid, stamp, text)
            return
        if ident > bucket.last:
            if ident - bucket.first > MAX_SPAN:
                self._full.append((key, bucket))
                self._open[key] = _Bucket(ident, sid, stamp, text)
                return
            bucket.last = ident
        else:
            last = bucket.records[-1]
            if ident < last[0] or (ident == last[0] and sid < last[1]):
                if bucket.last - ident > MAX_SPAN:
                    self._full.append((key, bucket))
                    self._open[key] = _Bucket(ident, sid, stamp, text)
                    return
                bucket.ordered = False
                bucket.first = min(bucket.first, ident)
        bucket.records.append((ident, sid, text))
        if stamp < bucket.low:
            bucket.low = stamp
        elif stamp > bucket.high:
            bucket.high = stamp

    def rows(self) -> list[tuple[str | None, str | None, str, str, int, str, int, int, int, int,
                                 str]]:
        """
        C{(party_a, party_b, jid_a, jid_b, first_id, first_sid, last_id, first_stamp,
        last_stamp, messages, data)} per bucket, its records in archive order.
        """
        rows = []
        for key, bucket in [*self._full, *self._open.items()]:
            records = bucket.records
            if not bucket.ordered:
                records.sort(key=lambda r: (r[0], r[1]))
            first = records[0]
            rows.append((*key, first[0], first[1], records[-1][0], bucket.low, bucket.high,
                         len(records), "".join([r[2] for r in records])))
        return rows
