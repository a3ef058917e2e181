#!/usr/bin/env python3
"""
bench/soak.py: a bounded soak test of a real C{twistd -n xmppjson} on loopback.

What it does, in order (every step bounded in time; nothing leaves 127.0.0.1):

 1. starts C{twistd -n xmppjson} in a temporary directory (SQLite there, C{--allow-plaintext},
    C{--stanza-rate 0}), on ports the system picks (read back from its log);
 2. registers the users through REST (C{POST /users});
 3. runs the load for C{--duration} seconds:
     - chatters, half on the XMPP door (raw TCP, SASL PLAIN, bind, presence) and half on the
       JSON door (REST login, then C{/stream}), each sending C{--rate} chat messages a second to
       random users: other chatters on either door, droppers, and users who stay offline;
     - droppers: chatters that now and then send half a stanza (or half a frame), shut their
       side of the connection and reconnect;
     - garbage clients: connect to one of the doors, send something hostile (bad XML, an entity
       bomb, bad JSON, invalid UTF-8, binary and oversized frames, HTTP junk), read what comes
       back and drop the connection, again and again;
 4. drains: the senders stop, the receivers wait until nothing arrives any more, everyone says
    goodbye properly;
 5. asks the server what it stored: every recipient logs in again and counts the offline
    messages delivered to it;
 6. reports, as one JSON object on stdout (progress on stderr): messages sent, delivered live,
    stored offline (delivered at a later login, during the run or at the end), bounced with an
    error, duplicated, and LOST (accepted, yet neither delivered, stored nor bounced: must be
    0), plus the server's RSS before the load, at its peak, and twice after the load stopped.

Every message carries a unique id (C{id} attribute and body), so each one is accounted for.
Exit status: 0 when nothing was lost and the server stayed up, 1 otherwise.

    python3 bench/soak.py                         # 300 clients, 60 s
    python3 bench/soak.py --clients 50 --duration 10
    python3 bench/soak.py --keep                  # keep the temporary directory (log, database)

Standard library only; run from the repository root (the server is this checkout, by
C{PYTHONPATH}).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = "127.0.0.1"
DOMAIN = "localhost"
PASSWORD = "soak-secret"
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def log(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


# -- the server -------------------------------------------------------------------------------


class Server:
    """A C{twistd -n xmppjson} child process in a temporary directory."""

    def __init__(self, workdir: str, extra: list[str]):
        self.workdir = workdir
        self.logPath = os.path.join(workdir, "twistd.log")
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None
        self.webPort = 0
        self.c2sPort = 0

    def start(self, timeout: float = 60.0) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
        args = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                "-n", "--pidfile=", "xmppjson",
                "--web", f"tcp:0:interface={HOST}", "--c2s", f"tcp:0:interface={HOST}",
                "--db", "sqlite:" + os.path.join(self.workdir, "soak.sqlite3"),
                "--allow-plaintext", "--stanza-rate", "0", *self.extra]
        with open(self.logPath, "wb") as out:
            self.process = subprocess.Popen(args, cwd=self.workdir, env=env, stdout=out,
                                            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.logText()
            web = re.search(r"XmppJsonSite starting on (\d+)", text)
            c2s = re.search(r"C2SFactory starting on (\d+)", text)
            if web and c2s and "store ready" in text:
                self.webPort, self.c2sPort = int(web.group(1)), int(c2s.group(1))
                return
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited at start:\n{text[-3000:]}")
            time.sleep(0.1)
        raise SystemExit(f"the server did not start in {timeout}s:\n{self.logText()[-3000:]}")

    def logText(self) -> str:
        with open(self.logPath, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def rssKB(self) -> int:
        assert self.process is not None
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def cpuSeconds(self) -> float:
        assert self.process is not None
        with open(f"/proc/{self.process.pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, as an operator would; the exit status (or None if it had to be killed)."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return None


# -- HTTP, just enough for the REST calls -----------------------------------------------------


async def http(port: int, method: str, path: str, body: Any = None, timeout: float = 30.0) -> tuple[int, Any]:
    """One request on a fresh connection; the status and the decoded JSON body (or None)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
    try:
        data = b"" if body is None else json.dumps(body).encode()
        writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data
        )
        raw = await asyncio.wait_for(reader.read(-1), timeout)
    finally:
        writer.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        chunks = []
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size.split(b";")[0], 16)
            if n == 0:
                break
            chunks.append(rest[:n])
            rest = rest[n + 2:]
        rest = b"".join(chunks)
    try:
        return status, json.loads(rest) if rest else None
    except ValueError:
        return status, None


# -- the ledger: every message sent and what became of it -------------------------------------


@dataclass
class Ledger:
    sent: dict[str, str] = field(default_factory=dict)  # id -> recipient localpart
    live: dict[str, int] = field(default_factory=dict)  # id -> times received live
    offline: dict[str, int] = field(default_factory=dict)  # id -> times received with a delay
    bounced: dict[str, str] = field(default_factory=dict)  # id -> condition
    lastArrival: float = 0.0

    def received(self, msgid: str, delayed: bool) -> None:
        book = self.offline if delayed else self.live
        book[msgid] = book.get(msgid, 0) + 1
        self.lastArrival = time.monotonic()

    def bounce(self, msgid: str, condition: str) -> None:
        self.bounced[msgid] = condition
        self.lastArrival = time.monotonic()


RE_MESSAGE = re.compile(rb"<message\b[^>]*?(?:/>|>.*?</message>)", re.DOTALL)
RE_ID = re.compile(rb"""\bid=['"]([^'"]+)['"]""")
RE_TYPE = re.compile(rb"""\btype=['"]([^'"]+)['"]""")
RE_CONDITION = re.compile(rb"<([a-z-]+) xmlns=['\"]urn:ietf:params:xml:ns:xmpp-stanzas['\"]")
RE_JID = re.compile(rb"<jid>([^<]+)</jid>")


class Peer:
    """What both kinds of chat client share: the user, the ledger, a counter for ids."""

    def __init__(self, user: str, ledger: Ledger, tag: str):
        self.user = user
        self.ledger = ledger
        self.tag = tag
        self.seq = 0
        self.closed = asyncio.Event()

    def nextId(self, to: str) -> str:
        self.seq += 1
        msgid = f"{self.tag}.{self.seq}"
        self.ledger.sent[msgid] = to
        return msgid


# -- the XMPP door ----------------------------------------------------------------------------


class XMPPPeer(Peer):
    """A raw XMPP client: SASL PLAIN, bind, presence; messages matched with regular expressions."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def connect(self, port: int, timeout: float = 30.0) -> None:
        self.closed = asyncio.Event()
        self.reader, self.writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
        self.buffer = b""
        await asyncio.wait_for(self._login(), timeout)
        self.task = asyncio.create_task(self._read())

    def _header(self) -> None:
        self.writer.write(f"<?xml version='1.0'?><stream:stream to='{DOMAIN}' version='1.0' xmlns='jabber:client' "
                          "xmlns:stream='http://etherx.jabber.org/streams'>".encode())

    async def _until(self, pattern: bytes) -> re.Match[bytes]:
        regex = re.compile(pattern, re.DOTALL)
        while True:
            match = regex.search(self.buffer)
            if match:
                self.buffer = self.buffer[match.end():]
                return match
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError(f"closed during login: {self.buffer[-300:]!r}")
            self.buffer += data

    async def _login(self) -> None:
        self._header()
        await self._until(rb"</stream:features>")
        token = base64.b64encode(f"\0{self.user}\0{PASSWORD}".encode()).decode()
        self.writer.write(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>".encode())
        await self._until(rb"<success")
        self._header()
        await self._until(rb"</stream:features>")
        self.writer.write(b"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
        await self._until(rb"<jid>[^<]+</jid>")
        self.writer.write(b"<presence/>")

    async def _read(self) -> None:
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                self.buffer += data
                self._scan()
        except (ConnectionError, OSError):
            pass
        finally:
            self.closed.set()

    def _scan(self) -> None:
        end = 0
        for match in RE_MESSAGE.finditer(self.buffer):
            end = match.end()
            stanza = match.group(0)
            found = RE_ID.search(stanza)
            if found is None:
                continue
            msgid = found.group(1).decode()
            kind = RE_TYPE.search(stanza)
            if kind is not None and kind.group(1) == b"error":
                condition = RE_CONDITION.search(stanza)
                self.ledger.bounce(msgid, condition.group(1).decode() if condition else "?")
            else:
                self.ledger.received(msgid, b"urn:xmpp:delay" in stanza)
        if end:
            self.buffer = self.buffer[end:]
        elif len(self.buffer) > 1 << 20:
            self.buffer = self.buffer[-65536:]

    def send(self, to: str) -> None:
        msgid = self.nextId(to)
        self.writer.write(f"<message to='{to}@{DOMAIN}' id='{msgid}' type='chat'><body>{msgid}</body></message>".encode())

    async def dropMidStanza(self) -> None:
        """Half a stanza, then our side shut; read what the server still sends until it closes."""
        self.writer.write(f"<message to='{self.user}@{DOMAIN}' id='half'><bo".encode())
        with contextlib.suppress(OSError):
            self.writer.write_eof()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.closed.wait(), 10)
        self.writer.close()

    async def close(self) -> None:
        with contextlib.suppress(OSError):
            self.writer.write(b"</stream:stream>")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.closed.wait(), 10)
        self.writer.close()


# -- the JSON door ----------------------------------------------------------------------------


def wsFrame(payload: bytes, opcode: int = 1, declared: int | None = None) -> bytes:
    """A masked client frame (RFC 6455).  C{declared} lies about the length (for droppers)."""
    length = len(payload) if declared is None else declared
    head = bytes([0x80 | opcode])
    if length < 126:
        head += bytes([0x80 | length])
    elif length < 65536:
        head += bytes([0x80 | 126]) + length.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + length.to_bytes(8, "big")
    mask = os.urandom(4)
    n = len(payload)
    if n:
        stream = (mask * (n // 4 + 1))[:n]
        payload = (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")
    return head + mask + payload


async def wsOpen(port: int, path: str, timeout: float = 30.0) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int]:
    """The WebSocket handshake; the HTTP status (101 on success)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
    key = base64.b64encode(os.urandom(16))
    writer.write(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\n"
                 b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                 b"Sec-WebSocket-Key: " + key + b"\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    status = int(head.split(b" ", 2)[1])
    if status == 101:
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        if accept not in head:
            raise ConnectionError("bad Sec-WebSocket-Accept")
    return reader, writer, status


async def wsRead(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One (unfragmented, unmasked) server frame: opcode and payload."""
    b0, b1 = await reader.readexactly(2)
    length = b1 & 0x7F
    if length == 126:
        length = int.from_bytes(await reader.readexactly(2), "big")
    elif length == 127:
        length = int.from_bytes(await reader.readexactly(8), "big")
    return b0 & 0x0F, await reader.readexactly(length)


class WSPeer(Peer):
    """A JSON-door client: REST login, C{/stream}, one JSON object per text frame."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    webPort = 0

    async def connect(self, port: int, timeout: float = 30.0) -> None:
        self.closed = asyncio.Event()
        self.webPort = port
        status, body = await http(port, "POST", "/login", {"jid": self.user, "password": PASSWORD})
        if status != 200:
            raise ConnectionError(f"login {self.user}: {status} {body}")
        self.reader, self.writer, status = await wsOpen(port, f"/stream?token={body['token']}")
        if status != 101:
            raise ConnectionError(f"upgrade {self.user}: {status}")
        _opcode, payload = await asyncio.wait_for(wsRead(self.reader), timeout)
        if json.loads(payload).get("type") != "session":
            raise ConnectionError(f"no session frame: {payload[:200]!r}")
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                opcode, payload = await wsRead(self.reader)
                if opcode == 8:
                    with contextlib.suppress(OSError):
                        self.writer.write(wsFrame(payload[:2], opcode=8))
                    break
                if opcode == 9:
                    self.writer.write(wsFrame(payload, opcode=10))
                    continue
                if opcode != 1:
                    continue
                frame = json.loads(payload)
                if frame.get("type") != "message":
                    continue
                body = frame["payload"]
                msgid = body.get("id")
                if not msgid:
                    continue
                if body.get("type") == "error":
                    self.ledger.bounce(msgid, body.get("error", {}).get("condition", "?"))
                else:
                    self.ledger.received(msgid, "delay" in body)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self.closed.set()

    def send(self, to: str) -> None:
        msgid = self.nextId(to)
        frame = {"type": "message", "payload": {"to": f"{to}@{DOMAIN}", "id": msgid, "type": "chat",
                                                "body": msgid}}
        self.writer.write(wsFrame(json.dumps(frame).encode()))

    async def dropMidStanza(self) -> None:
        """A frame header announcing 200 bytes, 20 of them, then our side shut."""
        self.writer.write(wsFrame(b'{"type": "message", ', declared=200)[:26])
        with contextlib.suppress(OSError):
            self.writer.write_eof()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.closed.wait(), 10)
        self.writer.close()

    async def close(self) -> None:
        with contextlib.suppress(OSError):
            self.writer.write(wsFrame((1000).to_bytes(2, "big"), opcode=8))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.closed.wait(), 10)
        self.writer.close()


# -- garbage ------------------------------------------------------------------------------------


def garbageFor(door: str) -> bytes:
    """Something hostile for one door."""
    if door == "c2s":
        return random.choice([
            os.urandom(random.randint(1, 4096)),
            (b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'aaaaaaaaaa'><!ENTITY b '&a;&a;&a;&a;'>]>"
            b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>&b;"),
            b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
            b"to='localhost' version='1.0'>" + b"<a>" * 5000,
            (b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
            b"to='localhost' version='1.0'><auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' "
            b"mechanism='PLAIN'>!!!notbase64</auth>"),
            b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
            b"to='localhost' version='1.0'><message><body>" + b"x" * 100_000,
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        ])
    return random.choice([
        b"\x16\x03\x01" + os.urandom(200),  # a TLS hello on a plain port
        b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n{",
        b"POST /users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n{\"jid\": [",
        b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n",
        os.urandom(random.randint(1, 2048)),
    ])


def wsGarbage() -> bytes:
    """Hostile frames for an open JSON-door session."""
    return random.choice([
        wsFrame(b"{not json"),
        wsFrame(b'{"type": "message", "payload": {"body": "\xc3\x28"}}'),  # invalid UTF-8: 1007
        wsFrame(b"\x00\x01binary", opcode=2),
        wsFrame(b'{"type": "message", "payload": {"to": "x@localhost", "xml": '
                b'["<!DOCTYPE a [<!ENTITY b \'c\'>]><a>&b;</a>"]}}'),
        wsFrame(b"[" * 5000 + b"]" * 5000),
        wsFrame(b'{"type": "telepathy", "payload": {}}'),
        wsFrame(b"x" * 300_000),  # over the frame limit: 1009
    ])


async def garbageLoop(door: str, ports: dict[str, int], token: str, until: float, stats: dict[str, int]) -> None:
    while time.monotonic() < until:
        try:
            if door == "ws" and token:
                reader, writer, status = await wsOpen(ports["web"], f"/stream?token={token}", 10)
                if status == 101:
                    for _ in range(random.randint(1, 5)):
                        writer.write(wsGarbage())
            else:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, ports[door]), 10)
                writer.write(garbageFor(door))
            with contextlib.suppress(asyncio.TimeoutError, OSError, asyncio.IncompleteReadError):
                await asyncio.wait_for(reader.read(65536), 1.0)
            stats["garbage"] += 1
            transport = writer.transport
            transport.abort()  # an abrupt drop: no goodbye of any kind
        except (TimeoutError, OSError, ConnectionError) as e:
            stats["garbageErrors"] += 1
            stats.setdefault("garbageLastError", 0)
            log(f"garbage client on {door}: {e!r}")
        await asyncio.sleep(random.uniform(0.05, 0.3))


# -- the run ------------------------------------------------------------------------------------


async def chatLoop(peer: Peer, pool: list[str], offline: list[str], rate: float, until: float,
                   offlineShare: float) -> None:
    while time.monotonic() < until and not peer.closed.is_set():
        if offline and random.random() < offlineShare:
            to = random.choice(offline)
        else:
            to = random.choice(pool)
        try:
            peer.send(to)
        except (OSError, RuntimeError):
            return
        await asyncio.sleep(random.expovariate(rate))


async def dropperLoop(peer: Peer, pool: list[str], offline: list[str], rate: float, until: float,
                      ports: dict[str, int], stats: dict[str, int], offlineShare: float) -> None:
    port = ports["c2s"] if isinstance(peer, XMPPPeer) else ports["web"]
    while time.monotonic() < until:
        await chatLoop(peer, pool, offline, rate, min(until, time.monotonic() + random.uniform(2, 6)),
                       offlineShare)
        if time.monotonic() >= until:
            return
        await peer.dropMidStanza()
        stats["drops"] += 1
        await asyncio.sleep(random.uniform(0.2, 1.0))
        for _attempt in range(5):
            try:
                await peer.connect(port)
                stats["reconnects"] += 1
                break
            except (TimeoutError, OSError, ConnectionError) as e:
                log(f"dropper {peer.user} could not reconnect: {e!r}")
                await asyncio.sleep(1)
        else:
            return


async def connectAll(peers: list[Peer], ports: dict[str, int], concurrency: int = 20) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(peer: Peer) -> None:
        async with gate:
            await peer.connect(ports["c2s"] if isinstance(peer, XMPPPeer) else ports["web"])

    await asyncio.gather(*(one(p) for p in peers))


async def sampleRSS(server: Server, samples: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        if server.alive():
            samples.append(server.rssKB())
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


async def soak(args: argparse.Namespace, server: Server) -> dict[str, Any]:
    ports = {"web": server.webPort, "c2s": server.c2sPort}
    garbage = min(args.garbage, args.clients // 5)
    droppers = min(args.droppers, (args.clients - garbage) // 4)
    chatters = args.clients - garbage - droppers
    names = [f"u{i}" for i in range(chatters + droppers)]
    offlineUsers = [f"off{i}" for i in range(args.offline)]
    log(f"registering {len(names) + len(offlineUsers) + 1} users")
    gate = asyncio.Semaphore(16)

    async def register(name: str) -> None:
        async with gate:
            status, body = await http(ports["web"], "POST", "/users", {"jid": name, "password": PASSWORD})
            if status not in (201, 409):
                raise SystemExit(f"registering {name}: {status} {body}")

    await asyncio.gather(*(register(n) for n in [*names, *offlineUsers, "mallory"]))
    status, body = await http(ports["web"], "POST", "/login", {"jid": "mallory", "password": PASSWORD})
    malloryToken = body["token"] if status == 200 else ""
    await asyncio.sleep(2)  # let the registrations' writes settle before the baseline
    result: dict[str, Any] = {
        "clients": args.clients, "chatters": chatters, "droppers": droppers, "garbage_clients": garbage,
        "offline_users": len(offlineUsers), "duration_s": args.duration, "rounds": args.rounds,
        "rate_per_client": args.rate, "rss_kb_before": server.rssKB(), "per_round": [],
    }
    totals = {"sent": 0, "delivered_live": 0, "stored_offline": 0, "bounced": 0, "duplicated": 0, "LOST": 0}
    for round_ in range(1, args.rounds + 1):
        report = await soakRound(args, server, ports, round_, names, offlineUsers, chatters,
                                 garbage, malloryToken)
        result["per_round"].append(report)
        for key in totals:
            totals[key] += report[key]
    result.update(totals)
    await asyncio.sleep(args.settle)
    result["rss_kb_after"] = server.rssKB()
    await asyncio.sleep(args.settle)
    result[f"rss_kb_after_{2 * args.settle:g}s"] = server.rssKB()
    result["rss_kb_peak"] = max(r["rss_kb_peak"] for r in result["per_round"])
    result["server_alive"] = server.alive()
    return result


async def soakRound(args: argparse.Namespace, server: Server, ports: dict[str, int], round_: int,
                    names: list[str], offlineUsers: list[str], chatters: int, garbage: int,
                    malloryToken: str) -> dict[str, Any]:
    """One round: connect, chat for C{args.duration}, drain, say goodbye, collect offline."""
    ledger = Ledger()
    peers: list[Peer] = []
    for i, name in enumerate(names):
        cls = XMPPPeer if i % 2 == 0 else WSPeer
        peers.append(cls(name, ledger, f"{name}.{cls.__name__[0]}{round_}"))
    stats = {"garbage": 0, "garbageErrors": 0, "drops": 0, "reconnects": 0}
    rssBefore = server.rssKB()
    cpuBefore = server.cpuSeconds()
    log(f"round {round_}: connecting {len(peers)} chat clients ({chatters} chatters, "
        f"{len(peers) - chatters} droppers; {garbage} garbage clients); server RSS {rssBefore} kB")
    started = time.monotonic()
    await connectAll(peers, ports)
    log(f"connected in {time.monotonic() - started:.1f}s; chatting for {args.duration}s")

    samples: list[int] = []
    stopSampling = asyncio.Event()
    sampler = asyncio.create_task(sampleRSS(server, samples, stopSampling))
    until = time.monotonic() + args.duration
    tasks = []
    for i, peer in enumerate(peers):
        if i < chatters:
            tasks.append(chatLoop(peer, names, offlineUsers, args.rate, until, args.offline_share))
        else:
            tasks.append(dropperLoop(peer, names, offlineUsers, args.rate, until, ports, stats,
                                     args.offline_share))
    for i in range(garbage):
        tasks.append(garbageLoop(("c2s", "web", "ws")[i % 3], ports, malloryToken, until, stats))
    await asyncio.gather(*tasks)
    loadCPU = server.cpuSeconds() - cpuBefore

    log(f"load over: {len(ledger.sent)} messages sent; draining")
    drainStart = time.monotonic()
    ledger.lastArrival = time.monotonic()
    while time.monotonic() - ledger.lastArrival < args.quiet and time.monotonic() - drainStart < args.drain:
        await asyncio.sleep(0.2)
    for peer in peers:
        if not peer.closed.is_set():
            await peer.close()
    stopSampling.set()
    await sampler
    rssPeak = max(samples) if samples else server.rssKB()

    # Ask the server what it stored: every recipient logs in again (on the JSON door: offline
    # messages arrive right after the session frame) and counts what is delivered with a delay.
    log("collecting what the server stored offline")
    collectors: list[Peer] = [WSPeer(name, ledger, f"{name}.collect{round_}")
                              for name in [*names, *offlineUsers]]
    await connectAll(collectors, ports)
    ledger.lastArrival = time.monotonic()
    while time.monotonic() - ledger.lastArrival < args.quiet:
        await asyncio.sleep(0.2)
    for peer in collectors:
        await peer.close()

    sent = set(ledger.sent)
    live = sent & set(ledger.live)
    offline = (sent & set(ledger.offline)) - live
    bounced = (sent & set(ledger.bounced)) - live - offline
    lost = sorted(sent - live - offline - bounced)
    duplicated = sorted(m for m in sent if ledger.live.get(m, 0) + ledger.offline.get(m, 0) > 1)
    conditions: dict[str, int] = {}
    for m in bounced:
        conditions[ledger.bounced[m]] = conditions.get(ledger.bounced[m], 0) + 1
    report = {
        "round": round_, "sent": len(sent), "delivered_live": len(live), "stored_offline": len(offline),
        "bounced": len(bounced), "bounce_conditions": conditions, "duplicated": len(duplicated),
        "LOST": len(lost), "lost_examples": [(m, ledger.sent[m]) for m in lost[:10]],
        "msgs_per_s": round(len(sent) / args.duration, 1),
        "garbage_connections": stats["garbage"], "garbage_connect_errors": stats["garbageErrors"],
        "drops_mid_stanza": stats["drops"], "reconnects": stats["reconnects"],
        "server_cpu_s_during_load": round(loadCPU, 1),
        "rss_kb_round_start": rssBefore, "rss_kb_peak": rssPeak, "rss_kb_round_end": server.rssKB(),
    }
    log(f"round {round_}: " + json.dumps({k: report[k] for k in ("sent", "LOST", "rss_kb_peak")}))
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=300, help="all clients together (default 300)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load per round (default 60)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="rounds of load on the same server: RSS should level off, not climb")
    parser.add_argument("--rate", type=float, default=1.0, help="messages per second per chat client")
    parser.add_argument("--garbage", type=int, default=20, help="garbage clients (at most a fifth)")
    parser.add_argument("--droppers", type=int, default=30, help="chat clients that drop mid-stanza")
    parser.add_argument("--offline", type=int, default=20, help="users who stay offline during the load")
    parser.add_argument("--offline-share", type=float, default=0.05,
                        help="share of messages sent to offline users")
    parser.add_argument("--drain", type=float, default=30.0, help="longest wait for the last deliveries")
    parser.add_argument("--quiet", type=float, default=3.0, help="seconds without arrivals that end a wait")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds between the RSS samples after")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--server-arg", action="append", default=[], help="extra twistd xmppjson option")
    args = parser.parse_args()
    if args.clients < 10 or not 0 < args.duration <= 3600 or not 1 <= args.rounds <= 10:
        parser.error("--clients at least 10, --duration in (0, 3600], --rounds 1 to 10")
    workdir = tempfile.mkdtemp(prefix="xmppjson-soak-")
    server = Server(workdir, args.server_arg)
    log(f"starting twistd in {workdir}")
    server.start()
    result: dict[str, Any] = {}
    try:
        result = asyncio.run(soak(args, server))
    finally:
        code = server.stop()
        text = server.logText()
        # twistd ends itself with the signal it received once it has stopped: -15 is normal.
        result["server_exit"] = code
        result["clean_shutdown"] = "Server Shut Down." in text
        result["tracebacks_in_log"] = text.count("Traceback")
        result["unhandled_errors_in_log"] = text.count("Unhandled Error")
        if args.keep:
            result["workdir"] = workdir
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        print(json.dumps(result, indent=1))
    ok = result.get("LOST") == 0 and result.get("server_alive")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
