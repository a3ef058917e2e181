"""
The twistd plugin's options and service maker: C{twistd -n xmppjson [options]}.

No logic lives here: L{Options} turns the command line into a L{Config}, and L{makeService}
hands it to L{xmppjson.service.makeServer}, which tests call directly.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet import endpoints
from twisted.python import usage

from xmppjson.config import Config


def _positiveInt(name: str) -> Callable[[str], int]:
    """A coercer for C{--name}: a whole number greater than 0, else a clear L{UsageError}."""

    def convert(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise usage.UsageError(f"--{name} must be a whole number, not {value!r}")
        if number <= 0:
            raise usage.UsageError(f"--{name} must be greater than 0, not {value!r}")
        return number

    return convert


def _nonNegative(name: str, kind: Callable[[str], Any] = float) -> Callable[[str], Any]:
    """A coercer for C{--name}: a number that is 0 (meaning off) or more."""

    def convert(value: str) -> Any:
        try:
            number = kind(value)
        except ValueError:
            raise usage.UsageError(f"--{name} must be a number, not {value!r}")
        if number < 0:
            raise usage.UsageError(f"--{name} must be 0 or more, not {value!r}")
        return number

    return convert


def _iterations(value: str) -> int:
    number = _positiveInt("scram-iterations")(value)
    if number < 4096:
        # RFC 5802 and RFC 7677 ask for at least 4096; clients (slixmpp/scramp among them)
        # refuse to log in against fewer.
        raise usage.UsageError(f"--scram-iterations must be at least 4096, not {value!r}")
    return number


class Options(usage.Options):
    """
    Command-line options of C{twistd xmppjson}.  Every listener is a Twisted endpoint string.
    """

    synopsis = "[options]"
    longdesc = (
        "Run xmppjson: XMPP c2s on --c2s, and the REST API plus the JSON WebSocket dialect "
        "(/stream) on --web, sharing one session router."
    )

    optFlags = [
        ["allow-plaintext", None, "Allow SASL PLAIN on unencrypted streams (loopback, tests)."],
        ["cluster", None, "Run as one node of a cluster sharing the PostgreSQL --db (docs/clustering.md)."],
        ["no-archive", None, "Keep no message archive (XEP-0313 and GET /me/history are then unavailable)."],
        ["verbose", "v", "Log wire traffic."],
    ]

    optParameters = [
        ["domain", None, "localhost", "The XMPP domain served."],
        ["c2s", None, "tcp:5222", "Endpoint for XMPP client connections."],
        ["web", None, "tcp:8080", "Endpoint for the REST API and the WebSocket /stream."],
        ["db", None, "sqlite:xmppjson.sqlite3",
         "Database URL: sqlite:FILE, sqlite::memory: or postgresql://user:pass@host:port/db."],
        ["tls-cert", None, None, "PEM certificate for STARTTLS (default: self-signed, generated)."],
        ["tls-key", None, None, "PEM private key for --tls-cert."],
        ["registration", None, "open", "Account registration: open or closed."],
        ["token-ttl", None, 24 * 3600, "Lifetime of login tokens, in seconds.", _positiveInt("token-ttl")],
        ["scram-iterations", None, 4096, "PBKDF2 iterations for new password keys (4096 or more).",
         _iterations],
        ["max-stanza-size", None, 256 * 1024, "Largest XML stanza, in bytes.",
         _positiveInt("max-stanza-size")],
        ["max-frame-size", None, 256 * 1024, "Largest WebSocket frame, in bytes.",
         _positiveInt("max-frame-size")],
        ["max-sessions-per-user", None, 20, "Concurrent sessions one user may hold.",
         _positiveInt("max-sessions-per-user")],
        ["max-http-body", None, 64 * 1024, "Largest REST request body, in bytes.",
         _positiveInt("max-http-body")],
        ["max-avatar-size", None, 48 * 1024,
         "Largest avatar (vCard photo), in base64 characters; it must fit in --max-http-body over REST.",
         _positiveInt("max-avatar-size")],
        ["max-stanza-size-preauth", None, 16 * 1024,
         "Largest XML stanza before authentication, in bytes.", _positiveInt("max-stanza-size-preauth")],
        ["stanza-rate", None, 50.0,
         "Stanzas (or frames) per second one session may send before it is slowed down; 0: no limit.",
         _nonNegative("stanza-rate")],
        ["stanza-burst", None, 200.0, "How many stanzas a session may send at once above --stanza-rate.",
         _nonNegative("stanza-burst")],
        ["max-connections-per-address", None, 0,
         "Open connections one IP address may hold, per door; 0: no limit.",
         _nonNegative("max-connections-per-address", int)],
        ["handshake-timeout", None, 60.0, "Seconds a new connection has to log in.",
         _nonNegative("handshake-timeout")],
        ["idle-timeout", None, 0.0, "Seconds of silence before an XMPP stream is closed; 0: never.",
         _nonNegative("idle-timeout")],
        ["sm-resume-timeout", None, 300.0,
         "Seconds a dropped XMPP stream (XEP-0198) may be resumed; 0: acks only, no resumption.",
         _nonNegative("sm-resume-timeout")],
        ["auth-failure-limit", None, 5,
         "Failed logins per account and per address within --auth-failure-period before further "
         "attempts are refused for a while; 0: no limit.", _nonNegative("auth-failure-limit", int)],
        ["auth-failure-period", None, 60.0, "Seconds over which failed logins are counted.",
         _nonNegative("auth-failure-period")],
        ["registrations-per-address", None, 5,
         "Registrations per address within --registration-period; 0: no limit.",
         _nonNegative("registrations-per-address", int)],
        ["registration-period", None, 600.0, "Seconds over which registrations are counted.",
         _nonNegative("registration-period")],
        ["registration-exempt", None, "127.0.0.1,::1",
         "Comma-separated addresses never throttled for registration."],
        ["archive-days", None, 0, "Days archived messages are kept; 0: forever.",
         _nonNegative("archive-days", int)],
        ["node-name", None, "", "This node's name in a cluster, unique and stable (default: the host name)."],
        ["cluster-heartbeat", None, 2.0, "Seconds between two heartbeats of a cluster node.",
         _nonNegative("cluster-heartbeat")],
        ["cluster-timeout", None, 10.0, "Seconds without a heartbeat before a node is declared dead.",
         _nonNegative("cluster-timeout")],
        ["cluster-channel", None, "xj", "NOTIFY channel prefix (only when two clusters share a database)."],
    ]

    def opt_trusted_proxy(self, address: str) -> None:
        """A reverse proxy whose X-Forwarded-For names the client (repeatable; default: none)."""
        self.setdefault("trusted-proxies", []).append(address)

    def opt_allowed_origin(self, origin: str) -> None:
        """Accept WebSocket connections only from this Origin (repeatable; default: any)."""
        self.setdefault("allowed-origins", []).append(origin)

    def __init__(self, reactor: Any = None):
        """
        @param reactor: the reactor the endpoint strings are checked against; the global one
            by default (twistd), a memory reactor in tests.
        """
        super().__init__()
        self._reactor = reactor

    def postOptions(self) -> None:
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor

        domain = self["domain"].strip().lower()
        if not domain or any(c in domain for c in "@/ \t") or len(domain) > 1023:
            raise usage.UsageError(f"--domain {self['domain']!r} is not a valid domain name")
        self["domain"] = domain
        for name in ("c2s", "web"):
            try:
                endpoints.serverFromString(reactor, self[name])
            except (ValueError, KeyError, TypeError) as e:
                raise usage.UsageError(f"--{name} {self[name]!r} is not a valid endpoint: {e}")
        db = self["db"]
        if not db.startswith(("sqlite:", "postgresql://", "postgres://")):
            raise usage.UsageError(
                f"--db {db!r}: use sqlite:FILE, sqlite::memory: or postgresql://user:pass@host:port/db"
            )
        if db == "sqlite:":
            raise usage.UsageError("--db sqlite: needs a file name (or sqlite::memory:)")
        if self["registration"] not in ("open", "closed"):
            raise usage.UsageError(
                f"--registration must be open or closed, not {self['registration']!r}"
            )
        if bool(self["tls-cert"]) != bool(self["tls-key"]):
            raise usage.UsageError("--tls-cert and --tls-key go together")
        for name in ("auth-failure-period", "registration-period"):
            if self[name] <= 0:
                raise usage.UsageError(f"--{name} must be greater than 0")
        if self["cluster"]:
            if not db.startswith(("postgresql://", "postgres://")):
                raise usage.UsageError("--cluster needs a postgresql:// --db: the database is what the nodes share")
            if self["node-name"] and not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", self["node-name"]):
                raise usage.UsageError("--node-name must be 1 to 40 letters, digits, '_' or '-'")
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,15}", self["cluster-channel"]):
                raise usage.UsageError("--cluster-channel must be a short lowercase identifier")
            if self["cluster-timeout"] <= self["cluster-heartbeat"]:
                raise usage.UsageError("--cluster-timeout must be greater than --cluster-heartbeat")
        for name in ("tls-cert", "tls-key"):
            if self[name] and not os.path.isfile(self[name]):
                raise usage.UsageError(f"--{name} {self[name]!r}: no such file")

    def toConfig(self) -> Config:
        """The L{Config} for the parsed options."""
        return Config(
            domain=self["domain"],
            c2s=self["c2s"],
            web=self["web"],
            db=self["db"],
            allowPlaintext=bool(self["allow-plaintext"]),
            verbose=bool(self["verbose"]),
            tlsCert=self["tls-cert"],
            tlsKey=self["tls-key"],
            registration=self["registration"],
            tokenTTL=self["token-ttl"],
            scramIterations=self["scram-iterations"],
            maxStanzaSize=self["max-stanza-size"],
            maxFrameSize=self["max-frame-size"],
            maxSessionsPerUser=self["max-sessions-per-user"],
            maxHTTPBody=self["max-http-body"],
            maxStanzaSizePreAuth=self["max-stanza-size-preauth"],
            maxAvatarSize=self["max-avatar-size"],
            stanzaRate=self["stanza-rate"],
            stanzaBurst=self["stanza-burst"],
            maxConnectionsPerAddress=self["max-connections-per-address"],
            handshakeTimeout=self["handshake-timeout"],
            idleTimeout=self["idle-timeout"],
            allowedOrigins=tuple(self.get("allowed-origins", ())),
            trustedProxies=tuple(self.get("trusted-proxies", ())),
            smResumeTimeout=self["sm-resume-timeout"],
            authFailureLimit=self["auth-failure-limit"],
            authFailurePeriod=self["auth-failure-period"],
            registrationsPerAddress=self["registrations-per-address"],
            registrationPeriod=self["registration-period"],
            registrationExempt=tuple(a.strip() for a in self["registration-exempt"].split(",") if a.strip()),
            archive=not self["no-archive"],
            archiveDays=self["archive-days"],
            cluster=bool(self["cluster"]),
            nodeName=self["node-name"],
            clusterHeartbeat=self["cluster-heartbeat"],
            clusterTimeout=self["cluster-timeout"],
            clusterChannel=self["cluster-channel"],
        )


def makeService(options: Options, reactor: Any = None) -> service.MultiService:
    """
    The twistd entry point: the server for the parsed C{options}, built by
    L{xmppjson.service.makeServer} (nothing listens until twistd starts the service).

    @param reactor: the global reactor by default.
    """
    if reactor is None:
        from twisted.internet import reactor

    from xmppjson.service import CollectorService, makeServer

    server = makeServer(options.toConfig(), reactor)
    # A process-wide setting: only for the process twistd runs, not for every server built
    # in one process (tests).
    CollectorService(reactor).setServiceParent(server)
    return server
