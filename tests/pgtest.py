"""
Finding the PostgreSQL database the tests may use.

The tests never guess: the database comes from the environment variable L{ENV}, a
C{postgresql://user:password@host:port/dbname} URL naming a database whose tables the tests may
drop.  C{.ci/postgres.sh} starts a throw-away server and prints the line that sets it.

Without it, PostgreSQL tests are skipped with a reason, except under CI (C{CI=true}), where a
missing database is an error: CI must never go green having silently tested SQLite only.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SkipTest

ENV = "XMPPJSON_TEST_PG"


class PostgreSQLRequired(RuntimeError):
    """CI runs without a PostgreSQL database for the tests."""


def postgresDSN() -> str:
    """
    The URL of the test database.

    @raise SkipTest: when L{ENV} is unset outside CI.
    @raise PostgreSQLRequired: when L{ENV} is unset and C{CI=true}.
    """
    dsn = os.environ.get(ENV, "").strip()
    if dsn:
        return dsn
    if os.environ.get("CI", "").strip().lower() == "true":
        raise PostgreSQLRequired(
            f"{ENV} is not set, but the PostgreSQL tests are required in CI (CI=true): "
            f'run `eval "$(bash .ci/postgres.sh)"` before the tests'
        )
    raise SkipTest(
        f"PostgreSQL tests skipped: {ENV} is not set (a postgresql://user:pass@host:port/db URL "
        f"of a database the tests may wipe; .ci/postgres.sh starts one)"
    )


def resetDatabase(dsn: str) -> None:
    """
    Drop every table of the test database's current schema, so that each test starts from an
    empty database as a fresh install would.  Dropping tables rather than the schema needs no
    more privilege than owning them.

    Blocking, which is fine between tests and keeps the helper free of the reactor.
    """
    import psycopg2

    connection = psycopg2.connect(dsn, connect_timeout=10)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT quote_ident(tablename) FROM pg_tables WHERE schemaname = current_schema()"
            )
            tables = [name for (name,) in cursor.fetchall()]
            if tables:
                cursor.execute(f"DROP TABLE IF EXISTS {', '.join(tables)} CASCADE")
    finally:
        connection.close()
