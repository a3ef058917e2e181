"""
The server's configuration: one plain object built by C{tap.Options} (or by a test directly).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Config:
    """
    Settings shared by every part of the server.  Defaults are the documented ones
    (C{docs/running.md}, C{docs/limits.md}).
    """

    domain: str = "localhost"
    c2s: str = "tcp:5222"
    web: str = "tcp:8080"
    db: str = "sqlite:xmppjson.sqlite3"
    allowPlaintext: bool = False
    verbose: bool = False
    tlsCert: str | None = None
    tlsKey: str | None = None
    # accounts
    registration: str = "open"  # "open" or "closed"
    tokenTTL: int = 24 * 3600  # seconds
    scramIterations: int = 4096
    minPasswordLength: int = 6
    # limits
    maxStanzaSize: int = 256 * 1024
    maxStanzaSizePreAuth: int = 16 * 1024
    maxFrameSize: int = 256 * 1024
    maxHTTPBody: int = 64 * 1024
    maxAvatarSize: int = 48 * 1024  # base64 characters of a vCard photo; fits in a REST body
    maxSessionsPerUser: int = 20
    maxConnectionsPerAddress: int = 0  # 0 = unlimited
    handshakeTimeout: float = 60.0
    idleTimeout: float = 0.0  # 0 = no idle timeout
    # XMPP door (docs/xmpp.md)
    smResumeTimeout: float = 300.0  # seconds a dropped XEP-0198 session waits; 0 = no resumption
    authFailureLimit: int = 5  # failed logins per account and per address in authFailurePeriod; 0 = off
    authFailurePeriod: float = 60.0  # seconds
    registrationsPerAddress: int = 5  # in-band registrations per address in registrationPeriod; 0 = off
    registrationPeriod: float = 600.0  # seconds
    registrationExempt: tuple[str, ...] = ("127.0.0.1", "::1")  # addresses never throttled
    # web door (docs/limits.md): proxies whose X-Forwarded-For names the client; with none,
    # the peer address is the client's (and everyone behind a proxy shares one address)
    trustedProxies: tuple[str, ...] = ()
    # seconds between attempts to store an offline message while the store is unavailable;
    # after the last one the sender gets resource-constraint/wait (docs/limits.md)
    offlineRetryDelays: tuple[float, ...] = (0.5, 1.0, 2.0)
    # per-session inbound rate (stanzas or frames per second, and burst); 0 disables
    stanzaRate: float = 50.0
    stanzaBurst: float = 200.0
    # WebSocket Origin allow-list (empty: any origin)
    allowedOrigins: tuple[str, ...] = ()
    # clustering (docs/clustering.md): several nodes sharing one PostgreSQL database, which is
    # both their shared state and their message bus; off unless asked for
    cluster: bool = False
    nodeName: str = ""  # unique per node and stable across its restarts; "" = the host name
    clusterHeartbeat: float = 2.0  # seconds between two heartbeats of a node
    clusterTimeout: float = 10.0  # seconds without a heartbeat before a node is declared dead
    clusterChannel: str = "xj"  # NOTIFY channel prefix: clusters sharing one database differ here
    # message archive (XEP-0313): on by default; retention in days, 0 keeps messages forever
    archive: bool = True
    archiveDays: int = 0
