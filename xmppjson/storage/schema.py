"""
The versioned database schema, shared by every SQL backend.

The schema is an ordered list of L{MIGRATIONS}, each a version number and the statements that take
a database from the previous version to it.  L{xmppjson.storage.sql.SQLStore.start} creates the
C{schema_version} table when missing, reads the highest version applied, and applies every later
migration, each in one transaction together with the row that records it.

Rules for changing the schema:
 - never edit a migration that has been released: append a new one with the next version number;
 - spell column lists out literally here, never derive them from Python constants that may change
   later (such as L{xmppjson.storage.PROFILE_FIELDS}), or an old migration would change meaning;
 - write statements with the dialect placeholders of L{DIALECTS} (C{{serial}}, C{{blob}},
   C{{timestamp}}, C{{bool}}, C{{false}}, C{{true}}) where SQLite and PostgreSQL differ;
 - a statement only some backends need is a C{dict} from dialect to statement: the dialects it
   does not name skip it.

Storage conventions: timestamps are UTC (TEXT in a fixed-width sortable form on SQLite,
TIMESTAMPTZ on PostgreSQL), booleans are 0/1 on SQLite, binary values are BLOB/BYTEA, roster
groups are a JSON array in text.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

# The table that records which migrations have been applied.  It is not itself a migration,
# because reading it is how a store learns which migrations it needs.
VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_version ("
    " version INTEGER PRIMARY KEY,"
    " applied {timestamp} NOT NULL)"
)

# Type names and literals that differ between the backends.
DIALECTS: dict[str, dict[str, str]] = {
    "sqlite": {
        # AUTOINCREMENT so that an id is never reused after deletion: offline message ids are
        # handed to sessions, and a reused id could delete the wrong message.
        "serial": "INTEGER PRIMARY KEY AUTOINCREMENT",
        "blob": "BLOB",
        # ISO 8601 text, always UTC, always with microseconds: sorts like the instant it names.
        "timestamp": "TEXT",
        "bool": "INTEGER",
        "false": "0",
        "true": "1",
        # A 64-bit primary key given by the application; on SQLite it must be spelt INTEGER
        # to be the table's rowid (the table itself then is the B-tree in id order).
        "bigid": "INTEGER PRIMARY KEY",
        # Version 3's archive stamp (text, see "timestamp") as microseconds since the epoch.
        # julianday() because strftime's seconds format would collide with the placeholders.
        "v3_stamp_micros": (
            "CAST(ROUND((julianday(substr(stamp, 1, 19)) - 2440587.5) * 86400) AS INTEGER)"
            " * 1000000 + CAST(substr(stamp, 21, 6) AS INTEGER)"
        ),
        # The archive records' field separator (xmppjson.storage.buckets.SEP).
        "sep": "char(31)",
    },
    "postgresql": {
        "serial": "BIGSERIAL PRIMARY KEY",
        "blob": "BYTEA",
        "timestamp": "TIMESTAMPTZ",
        "bool": "BOOLEAN",
        "false": "FALSE",
        "true": "TRUE",
        "bigid": "BIGINT PRIMARY KEY",
        "v3_stamp_micros": "ROUND(EXTRACT(EPOCH FROM stamp) * 1000000)::BIGINT",
        "sep": "chr(31)",
    },
}

_V1_PROFILE_COLUMNS = (
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

# A statement every backend runs, or one per dialect (the dialects not named skip it).
Migration = str | Mapping[str, str]

MIGRATIONS: list[tuple[int, list[Migration]]] = [
    (
        1,
        [
            (
                "CREATE TABLE users ("
                " localpart TEXT PRIMARY KEY,"
                " created {timestamp} NOT NULL,"
                + "".join(f" {column} TEXT," for column in _V1_PROFILE_COLUMNS)
                + " last_seen {timestamp},"
                " presence TEXT,"
                " status TEXT)"
            ),
            (
                "CREATE TABLE scram_keys ("
                " localpart TEXT NOT NULL REFERENCES users (localpart) ON DELETE CASCADE,"
                " mechanism TEXT NOT NULL,"
                " salt {blob} NOT NULL,"
                " iterations INTEGER NOT NULL,"
                " stored_key {blob} NOT NULL,"
                " server_key {blob} NOT NULL,"
                " PRIMARY KEY (localpart, mechanism))"
            ),
            (
                "CREATE TABLE tokens ("
                " hash TEXT PRIMARY KEY,"
                " localpart TEXT NOT NULL REFERENCES users (localpart) ON DELETE CASCADE,"
                " expires {timestamp} NOT NULL)"
            ),
            # revokeTokens and the cascade look tokens up by user, the purge by expiry.
            "CREATE INDEX tokens_localpart ON tokens (localpart)",
            "CREATE INDEX tokens_expires ON tokens (expires)",
            (
                "CREATE TABLE roster ("
                " localpart TEXT NOT NULL REFERENCES users (localpart) ON DELETE CASCADE,"
                " contact TEXT NOT NULL,"
                " name TEXT,"
                " subscription TEXT NOT NULL DEFAULT 'none',"
                " ask_out {bool} NOT NULL DEFAULT {false},"
                " pending_in {bool} NOT NULL DEFAULT {false},"
                " approved {bool} NOT NULL DEFAULT {false},"
                " in_roster {bool} NOT NULL DEFAULT {true},"
                # "groups" is a keyword in both dialects (window frames), hence the suffix.
                " groups_json TEXT NOT NULL DEFAULT '[]',"
                " PRIMARY KEY (localpart, contact))"
            ),
            # Finding every user who has a given contact (account deletion, presence probes).
            "CREATE INDEX roster_contact ON roster (contact)",
            (
                "CREATE TABLE offline ("
                " id {serial},"
                " localpart TEXT NOT NULL REFERENCES users (localpart) ON DELETE CASCADE,"
                " stamp {timestamp} NOT NULL,"
                " xml TEXT NOT NULL)"
            ),
            "CREATE INDEX offline_localpart ON offline (localpart, id)",
        ],
    ),
    # Version 2 and later (the message archive, ...) are appended here.
    (
        2,
        [
            # The blocklist (XEP-0191): one row per blocked address, as the normalised JID
            # string the client named (a bare or full JID, a domain, or domain/resource).
            # The primary key serves the only lookup, "every item of one user".
            (
                "CREATE TABLE blocklist ("
                " localpart TEXT NOT NULL REFERENCES users (localpart) ON DELETE CASCADE,"
                " jid TEXT NOT NULL,"
                " PRIMARY KEY (localpart, jid))"
            ),
        ],
    ),
    (
        3,
        [
            # The message archive (XEP-0313): one row per copy, so a message between two local
            # users is two rows, one in each party's archive.  "id" orders the archive (the
            # order messages were routed in); "sid" is the XEP-0359 stanza-id clients see and
            # page with, unique within one archive.
            (
                "CREATE TABLE archive ("
                " id {serial},"
                " owner TEXT NOT NULL REFERENCES users (localpart) ON DELETE CASCADE,"
                " sid TEXT NOT NULL,"
                " stamp {timestamp} NOT NULL,"
                " with_jid TEXT NOT NULL,"
                " with_resource TEXT NOT NULL DEFAULT '',"
                " outgoing {bool} NOT NULL,"
                " xml TEXT NOT NULL)"
            ),
            "CREATE UNIQUE INDEX archive_owner_sid ON archive (owner, sid)",
            # Paging through one archive, whole or with one contact; the purge goes by time.
            "CREATE INDEX archive_owner_id ON archive (owner, id)",
            "CREATE INDEX archive_owner_with ON archive (owner, with_jid, id)",
            "CREATE INDEX archive_stamp ON archive (stamp)",
        ],
    ),
    (
        4,
        [
            # Clustering (xmppjson.cluster, docs/clustering.md): only nodes started with the
            # cluster on ever touch these tables.  A node's row is its heartbeat; a node whose
            # last_seen is too old is declared dead by the first survivor that deletes the row.
            (
                "CREATE TABLE cluster_nodes ("
                " node TEXT PRIMARY KEY,"
                " epoch TEXT NOT NULL,"
                " started {timestamp} NOT NULL,"
                " last_seen {timestamp} NOT NULL)"
            ),
            # Every live session of every node, so that a node starting up can load them and
            # the survivors of a dead node know whose contacts must see them go.  "serial" tells
            # one session from a later one with the same full JID on the same node.
            (
                "CREATE TABLE cluster_sessions ("
                " jid TEXT PRIMARY KEY,"
                " node TEXT NOT NULL,"
                " serial BIGINT NOT NULL,"
                " priority INTEGER NOT NULL,"
                " presence TEXT,"
                " receives {bool} NOT NULL,"
                " interested {bool} NOT NULL,"
                " updated {timestamp} NOT NULL)"
            ),
            "CREATE INDEX cluster_sessions_node ON cluster_sessions (node)",
            # Notification payloads too big for NOTIFY (8000 bytes): the notification carries
            # the row's id.  Rows for one node are deleted as it reads them, the others by age.
            (
                "CREATE TABLE cluster_stanzas ("
                " id {serial},"
                " channel TEXT NOT NULL,"
                " created {timestamp} NOT NULL,"
                " payload TEXT NOT NULL)"
            ),
            "CREATE INDEX cluster_stanzas_created ON cluster_stanzas (created)",
        ],
    ),
]

MIGRATIONS.append(
    (
        5,
        [
            # The message archive, cheaper to write (docs/history.md, "Storage"): ONE row per
            # message, whoever's archives hold it, instead of one row per copy.  "owner_in" is
            # the user whose archive holds it as received, "owner_out" the one who holds it as
            # sent (NULL: not archived for that party; never the same user twice).  "id" is
            # given by the server: increasing, and never below "stamp" (so ids follow routing
            # time and the purge goes by id); on SQLite it is the rowid, so the table is
            # appended to.  "stamp" is the routing time in microseconds since the epoch (UTC).
            # A party's bare JID and resource are "" where the message came from version 3
            # without that party's copy.
            (
                "CREATE TABLE archive_messages ("
                " id {bigid},"
                " sid TEXT NOT NULL,"
                " stamp BIGINT NOT NULL,"
                " owner_in TEXT REFERENCES users (localpart) ON DELETE SET NULL,"
                " owner_out TEXT REFERENCES users (localpart) ON DELETE SET NULL,"
                " sender_jid TEXT NOT NULL,"
                " sender_resource TEXT NOT NULL,"
                " recipient_jid TEXT NOT NULL,"
                " recipient_resource TEXT NOT NULL,"
                " xml TEXT NOT NULL)"
            ),
            # The stanza-id: one message is archived once, and ids named by queries are found.
            "CREATE UNIQUE INDEX archive_messages_sid ON archive_messages (sid)",
            # One party's archive in id order (also what the foreign keys' SET NULL uses).  No
            # index for "with" and none for the time: every index costs each message written,
            # and a query already counts through the owner's part of these (see history.md).
            "CREATE INDEX archive_messages_in ON archive_messages (owner_in, id)",
            "CREATE INDEX archive_messages_out ON archive_messages (owner_out, id)",
            # Version 3's rows: the received copy joined with the sent copy of the same id (the
            # v3 serial of the received copy keeps each archive's order), then sent copies
            # whose received copy was not archived.
            "CREATE INDEX archive_v5_sid ON archive (sid, outgoing)",
            (
                "INSERT INTO archive_messages (id, sid, stamp, owner_in, owner_out, sender_jid,"
                " sender_resource, recipient_jid, recipient_resource, xml)"
                " SELECT r.id, r.sid, r.stamp_micros, r.owner, s.owner, r.with_jid,"
                " r.with_resource, COALESCE(s.with_jid, ''), COALESCE(s.with_resource, ''), r.xml"
                " FROM (SELECT *, {v3_stamp_micros} AS stamp_micros FROM archive) AS r"
                " LEFT JOIN archive s"
                " ON s.sid = r.sid AND s.outgoing = {true} AND s.owner <> r.owner"
                " WHERE r.outgoing = {false}"
                " ON CONFLICT (sid) DO NOTHING"
            ),
            (
                "INSERT INTO archive_messages (id, sid, stamp, owner_in, owner_out, sender_jid,"
                " sender_resource, recipient_jid, recipient_resource, xml)"
                " SELECT s.id, s.sid, s.stamp_micros, NULL, s.owner, '', '', s.with_jid,"
                " s.with_resource, s.xml"
                " FROM (SELECT *, {v3_stamp_micros} AS stamp_micros FROM archive) AS s"
                " WHERE s.outgoing = {true} AND NOT EXISTS (SELECT 1 FROM archive r"
                " WHERE r.sid = s.sid AND r.outgoing = {false} AND r.owner <> s.owner)"
                " ON CONFLICT (sid) DO NOTHING"
            ),
            "DROP TABLE archive",
        ],
    )
)

MIGRATIONS.append(
    (
        6,
        [
            # The message archive in conversation buckets (xmppjson.storage.buckets;
            # docs/history.md, "Storage"): one row per conversation and batch of the archive
            # writer, holding that batch's messages between two addresses as records, instead
            # of one row per message with an entry in three indexes.  "party_a"/"party_b" are
            # the users whose archives hold the bucket (NULL: nobody's on that side), "jid_a"/
            # "jid_b" the two bare JIDs; ids and stamps are microseconds; "messages" counts the
            # records.  A message is in one bucket, so its first stanza-id names a bucket.
            (
                "CREATE TABLE archive_buckets ("
                " party_a TEXT REFERENCES users (localpart) ON DELETE SET NULL,"
                " party_b TEXT REFERENCES users (localpart) ON DELETE SET NULL,"
                " jid_a TEXT NOT NULL,"
                " jid_b TEXT NOT NULL,"
                " first_id BIGINT NOT NULL,"
                " first_sid TEXT NOT NULL UNIQUE,"
                " last_id BIGINT NOT NULL,"
                " first_stamp BIGINT NOT NULL,"
                " last_stamp BIGINT NOT NULL,"
                " messages INTEGER NOT NULL,"
                " data TEXT NOT NULL)"
            ),
            # One user's archive in order (either side); the other side's address is in the
            # index so that a query with one correspondent skips the others' buckets without
            # reading them (an index of its own per side would be two more entries, in the
            # middle of an index, per bucket written).  The purge goes by time.
            "CREATE INDEX archive_buckets_a ON archive_buckets (party_a, first_id, first_sid, jid_b)",
            "CREATE INDEX archive_buckets_b ON archive_buckets (party_b, first_id, first_sid, jid_a)",
            "CREATE INDEX archive_buckets_stamp ON archive_buckets (first_stamp)",
            # The archive id of each stanza-id that does not carry it (see buckets.sidMicros):
            # those of the messages archived before this version, and any other.  A stanza-id
            # is archived once: a message written again is found here or in its bucket.
            "CREATE TABLE archive_sids (sid TEXT PRIMARY KEY, id BIGINT NOT NULL)",
            "INSERT INTO archive_sids (sid, id) SELECT sid, id FROM archive_messages",
            # Every message of version 5 becomes a bucket of one record: side a the recipient,
            # side b the sender.
            (
                "INSERT INTO archive_buckets (party_a, party_b, jid_a, jid_b, first_id,"
                " first_sid, last_id, first_stamp, last_stamp, messages, data)"
                " SELECT owner_in, owner_out, recipient_jid, sender_jid, id, sid, id, stamp,"
                " stamp, 1,"
                " CAST(id AS TEXT) || {sep} || sid || {sep} || CAST(stamp AS TEXT) || {sep}"
                " || recipient_resource || {sep} || sender_resource || {sep} || 'b' || {sep}"
                " || CAST(LENGTH(xml) AS TEXT) || {sep} || xml"
                " FROM archive_messages WHERE owner_in IS NOT NULL OR owner_out IS NOT NULL"
            ),
            "DROP TABLE archive_messages",
        ],
    )
)

MIGRATIONS.append(
    (
        7,
        [
            # PostgreSQL compresses a bucket's records (a few KB to tens of KB of XML) when it
            # writes them; with its default method, pglz, that was half of the database's CPU
            # under a chat load: lz4 compresses about as well for a fraction of the work
            # (docs/performance.md, item 17).  Buckets written before keep pglz, read as ever.
            # A server built without lz4 (or older than 14, without the clause) keeps pglz.
            {
                "postgresql": (
                    "DO $$ BEGIN"
                    " EXECUTE 'ALTER TABLE archive_buckets ALTER COLUMN data SET COMPRESSION lz4';"
                    " EXCEPTION WHEN feature_not_supported OR syntax_error THEN NULL;"
                    " END $$"
                ),
            },
        ],
    )
)

# The highest version, whatever order the list was appended in.
CURRENT_VERSION: int = max(number for number, _ in MIGRATIONS)


def render(statement: str, dialect: str) -> str:
    """
    Replace the dialect placeholders of a schema statement.

    @param statement: a statement from L{MIGRATIONS} or L{VERSION_TABLE}.
    @param dialect: a key of L{DIALECTS}.
    @return: the statement as the backend must run it.
    """
    return statement.format(**DIALECTS[dialect])


def _rendered(statements: list[Migration], dialect: str) -> list[str]:
    """A migration's statements for C{dialect}, without those of other dialects alone."""
    rendered = []
    for statement in statements:
        if not isinstance(statement, str):
            only = statement.get(dialect)
            if only is None:
                continue
            statement = only
        rendered.append(render(statement, dialect))
    return rendered


def migrationsMissing(applied: Collection[int], dialect: str) -> list[tuple[int, list[str]]]:
    """
    The migrations a database that recorded the versions C{applied} still needs, oldest first,
    rendered for C{dialect}.  Versions are independent of each other (each creates its own
    tables), so one missing below the highest applied is applied too.

    @param applied: the versions in the database's C{schema_version} table.
    @param dialect: a key of L{DIALECTS}.
    """
    done = set(applied)
    return [
        (number, _rendered(statements, dialect))
        for number, statements in sorted(MIGRATIONS, key=lambda migration: migration[0])
        if number not in done
    ]


def migrationsAfter(version: int, dialect: str) -> list[tuple[int, list[str]]]:
    """
    The migrations a database at C{version} still needs, oldest first, rendered for C{dialect}.

    @param version: the highest version already applied (0 for an empty database).
    @param dialect: a key of L{DIALECTS}.
    """
    return [
        (number, _rendered(statements, dialect))
        for number, statements in sorted(MIGRATIONS, key=lambda migration: migration[0])
        if number > version
    ]
