#!/usr/bin/env python3
"""wsbench: a load generator for xmppjson's JSON WebSocket door, with the shapes of xmppbench.

It speaks the dialect of docs/json-dialect.md: a token from ``POST /login``, then
``ws://HOST:PORT/stream?token=...``, one JSON object per text frame. Scenarios print ONE line of
JSON on stdout (progress on stderr) with xmppbench's field names, so the same tables and
ratios apply to both doors.

  provision  create accounts PREFIX0..N-1 through REST ``POST /users`` (201 created, 409 existed)
  login      N clients: POST /login + WebSocket + session frame + presence + ping round trip
  idle       hold N authenticated idle sockets; server RSS delta per session
  chat       P pairs on the WebSocket door exchange messages in a closed loop (window W)
  presence   U users in a ring with K mutual contacts (set up once through the dialect)
  rosters    only that one-time roster setup (rosters are door-agnostic: it also prepares the
             ring accounts for xmppbench's c2s presence scenario)
  cross      P pairs, each one c2s client (raw XMPP, xmppbench's client) and one WebSocket
             client, chatting across the doors
  c2s-chat   P pairs of c2s clients (xmppbench's client) in the same closed loop as chat;
             with --carbons each enables message carbons first (XEP-0280), as every WebSocket
             session has them: the c2s door doing the same work in the core as the JSON door

The c2s client, the /proc probe and the statistics helpers are imported from the shared
harness (``--xmppbench``, default /work/shared/bench/xmppbench.py), so both doors are measured
by the same code. The WebSocket client is a small RFC 6455 client on an asyncio Protocol
(hand-built frames, regex on frame payloads in the hot path, masking with a random
per-connection key) so that the harness stays far below the server's cost per message.

Every load loop is bounded by --duration (plus --warmup and --drain) and by --timeout per step;
only loopback targets are expected (--host defaults to 127.0.0.1).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from types import SimpleNamespace
from typing import Any

perf_ns = time.perf_counter_ns
DEFAULT_XMPPBENCH = os.environ.get("XMPPBENCH", "/work/shared/bench/xmppbench.py")
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

RE_BODY = re.compile(rb'"body":\s*"(\d+):(\d+)')
RE_ERROR = re.compile(rb'"type":\s*"error"')
RE_STATUS = re.compile(rb'"status":\s*"p(\d+):(\d+):(\d+)')

xb = None  # the shared harness module, loaded by load_xmppbench()


def load_xmppbench(path: str = DEFAULT_XMPPBENCH):
    """Import the shared harness from its file (it is a script, not a package)."""
    global xb
    if xb is not None:
        return xb
    if not os.path.exists(path):
        raise SystemExit(f"xmppbench.py not found at {path}: pass --xmppbench PATH or set XMPPBENCH")
    spec = importlib.util.spec_from_file_location("xmppbench", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {path}")
    mod = importlib.util.module_from_spec(spec)
    sys.dont_write_bytecode = True  # the harness may live in a read-only folder
    spec.loader.exec_module(mod)
    xb = mod
    return mod


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def username(cfg, i):
    return f"{cfg.prefix}{i}"


def password(cfg, i):
    return cfg.password or f"pw{i}"


# --------------------------------------------------------------------------
# minimal HTTP/1.0 client (REST: /users, /login)


async def http_json(cfg, method: str, path: str, body=None, token: str | None = None):
    """One request on its own connection; returns (status, parsed JSON body or None)."""
    data = b"" if body is None else json.dumps(body).encode()
    head = [f"{method} {path} HTTP/1.0", f"Host: {cfg.host}:{cfg.port}", "Accept: application/json"]
    if body is not None:
        head += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
    if token:
        head.append(f"Authorization: Bearer {token}")
    req = ("\r\n".join(head) + "\r\n\r\n").encode() + data

    async def go():
        reader, writer = await asyncio.open_connection(cfg.host, cfg.port)
        try:
            writer.write(req)
            raw = await reader.read()  # HTTP/1.0: the server closes after the answer
        finally:
            writer.close()
        return raw

    raw = await asyncio.wait_for(go(), cfg.timeout)
    head_, _, payload = raw.partition(b"\r\n\r\n")
    try:
        status = int(head_.split(b" ", 2)[1])
    except (IndexError, ValueError):
        raise WSError(f"bad HTTP answer to {method} {path}: {raw[:200]!r}")
    try:
        parsed = json.loads(payload) if payload.strip() else None
    except ValueError:
        parsed = None
    return status, parsed


async def get_token(cfg, i):
    status, body = await http_json(cfg, "POST", "/login", {"jid": username(cfg, i), "password": password(cfg, i)})
    if status != 200 or not isinstance(body, dict) or "token" not in body:
        raise WSError(f"POST /login for {username(cfg, i)}: HTTP {status} {str(body)[:200]}")
    return body["token"]


# --------------------------------------------------------------------------
# WebSocket client


class WSError(Exception):
    pass


_mask_cache: dict = {}


def ws_frame(payload: bytes, mask: bytes, opcode: int = 1) -> bytes:
    """A client frame (FIN, masked with the connection's key) holding C{payload}."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    key = (mask, n)
    m = _mask_cache.get(key)
    if m is None:
        m = int.from_bytes((mask * (n // 4 + 1))[:n], "little")
        if len(_mask_cache) > 100000:
            _mask_cache.clear()
        _mask_cache[key] = m
    return head + mask + (int.from_bytes(payload, "little") ^ m).to_bytes(n, "little")


class WSClient(asyncio.Protocol):
    """
    One WebSocket session. Setup is coroutine-driven (expect() on parsed frames); a scenario
    then installs C{fast}, a callable receiving the raw payloads of every text frame.
    """

    def __init__(self, cfg, user: str, pw: str):
        self.cfg = cfg
        self.user = user
        self.password = pw
        self.bare = f"{user}@{cfg.domain}"
        self.jid = None
        self.transport: Any = None
        self.mask = os.urandom(4)
        self.handshaking = True
        self.hbuf = b""
        self.buf = b""
        self.frag = None
        self.fast = None  # callable(list[bytes])
        self.on_frame = None  # callable(dict), slow path hook
        self.waiters: list[tuple[Any, Any]] = []  # [(predicate, future)]
        self.inbox: list[dict] = []  # parsed frames nobody waited for (bounded)
        self.hs_future: Any = None
        self.closed = asyncio.get_event_loop().create_future()

    # asyncio.Protocol
    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        if not self.closed.done():
            self.closed.set_result(exc)
        err = WSError(f"connection lost ({exc})")
        if self.hs_future is not None and not self.hs_future.done():
            self.hs_future.set_exception(err)
        for _, fut in self.waiters:
            if not fut.done():
                fut.set_exception(err)
        self.waiters = []

    def data_received(self, data):
        if self.handshaking:
            self.hbuf += data
            i = self.hbuf.find(b"\r\n\r\n")
            if i < 0:
                return
            head, data = self.hbuf[:i], self.hbuf[i + 4:]
            self.hbuf = b""
            self.handshaking = False
            if self.hs_future is not None and not self.hs_future.done():
                self.hs_future.set_result(head)
            if not data:
                return
        buf = self.buf + data if self.buf else data
        pos, n = 0, len(buf)
        texts = []
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            ln, hl = b1 & 0x7F, 2
            if ln == 126:
                if n - pos < 4:
                    break
                ln, hl = int.from_bytes(buf[pos + 2:pos + 4], "big"), 4
            elif ln == 127:
                if n - pos < 10:
                    break
                ln, hl = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
            if b1 & 0x80:  # a server must not mask, but be lenient
                hl += 4
            end = pos + hl + ln
            if end > n:
                break
            payload = buf[pos + hl:end]
            if b1 & 0x80:
                mk = buf[pos + hl - 4:pos + hl]
                m = int.from_bytes((mk * (ln // 4 + 1))[:ln], "little")
                payload = (int.from_bytes(payload, "little") ^ m).to_bytes(ln, "little")
            pos = end
            op = b0 & 0x0F
            fin = b0 & 0x80
            if op == 1 or op == 2:
                if fin:
                    texts.append(payload)
                else:
                    self.frag = [payload]
            elif op == 0:
                if self.frag is not None:
                    self.frag.append(payload)
                    if fin:
                        texts.append(b"".join(self.frag))
                        self.frag = None
            elif op == 9:  # ping
                self.transport.write(ws_frame(payload, self.mask, 10))
            elif op == 8:  # close: answer and drop
                with contextlib.suppress(Exception):  # the peer may be gone already
                    self.transport.write(ws_frame(payload[:2], self.mask, 8))
                self.transport.close()
                break
        self.buf = buf[pos:] if pos < n else b""
        if not texts:
            return
        f = self.fast
        if f is not None:
            f(texts)
            return
        for t in texts:
            try:
                obj = json.loads(t)
            except ValueError:
                continue
            self._dispatch(obj)

    def _dispatch(self, obj):
        if self.on_frame is not None:
            self.on_frame(obj)
        for k, (pred, fut) in enumerate(self.waiters):
            if not fut.done() and pred(obj):
                del self.waiters[k]
                fut.set_result(obj)
                return
        if len(self.inbox) < 2000:
            self.inbox.append(obj)

    async def expect(self, pred, timeout=None):
        for k, obj in enumerate(self.inbox):
            if pred(obj):
                del self.inbox[k]
                return obj
        fut = asyncio.get_event_loop().create_future()
        self.waiters.append((pred, fut))
        try:
            return await asyncio.wait_for(fut, timeout or self.cfg.timeout)
        finally:
            self.waiters = [w for w in self.waiters if w[1] is not fut]

    def send_obj(self, obj):
        self.transport.write(ws_frame(json.dumps(obj).encode(), self.mask))

    def send_raw(self, data: bytes):
        self.transport.write(data)

    async def connect(self, token: str):
        loop = asyncio.get_event_loop()
        await asyncio.wait_for(loop.create_connection(lambda: self, self.cfg.host, self.cfg.port), self.cfg.timeout)
        key = base64.b64encode(os.urandom(16))
        self.hs_future = loop.create_future()
        self.transport.write(
            b"GET /stream?token=" + token.encode() + b" HTTP/1.1\r\n"
            b"Host: " + f"{self.cfg.host}:{self.cfg.port}".encode() + b"\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
        head = await asyncio.wait_for(self.hs_future, self.cfg.timeout)
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            raise WSError(f"WebSocket handshake refused for {self.user}: {head[:300]!r}")
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        if accept.lower() not in head.lower():
            raise WSError(f"bad Sec-WebSocket-Accept for {self.user}")

    async def login(self, token: str, presence=True, roster=False):
        """WebSocket handshake with a token from POST /login, session frame, (roster), presence,
        then a ping round trip proving the server processed everything before it."""
        await self.connect(token)
        sess = await self.expect(lambda o: o.get("type") == "session")
        self.jid = sess["payload"]["jid"]
        if roster:
            self.send_obj({"type": "iq", "payload": {"type": "get", "id": "roster1", "query": "jabber:iq:roster"}})
            self.roster = await self.expect(_iq_id("roster1"))
        if presence:
            self.send_obj({"type": "presence", "payload": {}})
        await self.sync("sync1")

    async def sync(self, iq_id: str):
        """Round trip through the server: XEP-0199 ping; any answer proves the order."""
        self.send_obj({"type": "iq", "payload": {"type": "get", "id": iq_id, "to": self.cfg.domain, "ping": {}}})
        await self.expect(_iq_id(iq_id))

    def close(self):
        if self.transport is not None and not self.transport.is_closing():
            with contextlib.suppress(Exception):  # the peer may be gone already
                self.transport.write(ws_frame((1000).to_bytes(2, "big"), self.mask, 8))
            self.transport.close()


def _iq_id(iq_id):
    def pred(o):
        p = o.get("payload")
        return o.get("type") in ("iq", "error") and isinstance(p, dict) and p.get("id") == iq_id
    return pred


async def ws_login_many(cfg, indices, presence=True, roster=False):
    """Log in WebSocket clients with bounded concurrency: (clients, latencies_ns, failures, t0, t1)."""
    sem = asyncio.Semaphore(cfg.concurrency)
    lat, fails, clients = [], [], []

    async def one(i):
        async with sem:
            c = WSClient(cfg, username(cfg, i), password(cfg, i))
            c.idx = i
            t = perf_ns()
            try:
                token = await get_token(cfg, i)
                await c.login(token, presence=presence, roster=roster)
            except Exception as e:  # noqa: BLE001
                fails.append(f"{c.user}: {e!r}"[:300])
                c.close()
                return
            lat.append(perf_ns() - t)
            clients.append(c)

    t0 = perf_ns()
    await asyncio.gather(*(one(i) for i in indices))
    t1 = perf_ns()
    return clients, lat, fails, t0, t1


async def close_all(clients, wait=2.0):
    for c in clients:
        c.close()
    if clients:
        await asyncio.wait([c.closed for c in clients], timeout=wait)


def base_result(cfg, scenario):
    return {"scenario": scenario, "door": "websocket", "label": cfg.label, "target": f"{cfg.host}:{cfg.port}",
            "domain": cfg.domain, "loop": cfg.loop_name, "ts": time.strftime("%Y-%m-%dT%H:%M:%S")}


def pct(v, p):
    return xb.pct(v, p)


def ms(ns):
    return xb.ms(ns)


# --------------------------------------------------------------------------
# scenarios


async def sc_provision(cfg, probe):
    created = existed = 0
    fails = []
    sem = asyncio.Semaphore(cfg.concurrency)

    async def one(i):
        nonlocal created, existed
        async with sem:
            try:
                status, body = await http_json(cfg, "POST", "/users",
                                               {"jid": username(cfg, i), "password": password(cfg, i)})
            except Exception as e:  # noqa: BLE001
                fails.append(f"{username(cfg, i)}: {e!r}"[:300])
                return
            if status == 201:
                created += 1
            elif status == 409:
                existed += 1
            else:
                fails.append(f"{username(cfg, i)}: HTTP {status} {str(body)[:200]}")

    t0 = perf_ns()
    await asyncio.gather(*(one(i) for i in range(cfg.start, cfg.start + cfg.users)))
    res = base_result(cfg, "provision")
    res.update({"method": "rest", "users": cfg.users, "created": created, "existed": existed,
                "failed": len(fails), "seconds": round((perf_ns() - t0) / 1e9, 3)})
    if fails:
        res["first_failures"] = fails[:3]
        res["error"] = "provisioning failures"
    return res


async def sc_login(cfg, probe):
    n = cfg.clients
    cpu0 = probe.cpu() if probe else None
    rss0 = probe.rss_kb() if probe else None
    hc0 = time.process_time()
    clients, lat, fails, t0, t1 = await ws_login_many(cfg, range(cfg.start, cfg.start + n), roster=cfg.roster)
    hc1 = time.process_time()
    cpu1 = probe.cpu() if probe else None
    rss1 = probe.rss_kb() if probe else None
    await close_all(clients)
    lat.sort()
    wall = (t1 - t0) / 1e9
    res = base_result(cfg, "login")
    res.update({"clients": n, "ok": len(lat), "failed": len(fails), "concurrency": cfg.concurrency,
                "roster_get": cfg.roster, "wall_s": round(wall, 3),
                "logins_per_s": round(len(lat) / wall, 1) if wall > 0 else None,
                "lat_p50_ms": ms(pct(lat, 50)), "lat_p99_ms": ms(pct(lat, 99)),
                "lat_max_ms": ms(lat[-1] if lat else None),
                "harness_cpu_pct": round(100 * (hc1 - hc0) / wall, 1) if wall > 0 else None})
    if probe:
        scpu = cpu1 - cpu0
        res.update({"server_cpu_s": round(scpu, 3), "server_cpu_pct": round(100 * scpu / wall, 1),
                    "logins_per_server_cpu_s": round(len(lat) / scpu, 1) if scpu > 0 else None,
                    "server_rss_kb_before": rss0, "server_rss_kb_after": rss1})
    if fails:
        res["first_failures"] = fails[:3]
    return res


async def sc_idle(cfg, probe):
    if not probe:
        raise SystemExit("idle needs --server-pid")
    n = cfg.clients
    rss0 = probe.rss_kb()
    cpu0 = probe.cpu()
    clients, _, fails, t0, t1 = await ws_login_many(cfg, range(cfg.start, cfg.start + n))
    cpu1 = probe.cpu()
    samples = []
    for _ in range(int(cfg.settle)):
        await asyncio.sleep(1.0)
        samples.append(probe.rss_kb())
    cpu2 = probe.cpu()
    rss_held = samples[-1] if samples else probe.rss_kb()
    alive = sum(1 for c in clients if not c.closed.done())
    await close_all(clients, wait=5.0)
    await asyncio.sleep(cfg.settle_after)
    ok = len(clients)
    res = base_result(cfg, "idle")
    res.update({"clients": n, "ok": ok, "alive_at_end": alive, "failed": len(fails),
                "rss_kb_before": rss0, "rss_kb_held": rss_held,
                "rss_kb_peak_sample": max(samples) if samples else None,
                "rss_kb_after_close": probe.rss_kb(), "rss_delta_kb": rss_held - rss0,
                "rss_per_conn_kb": round((rss_held - rss0) / ok, 2) if ok else None,
                "settle_s": cfg.settle, "login_wall_s": round((t1 - t0) / 1e9, 3),
                "server_cpu_login_s": round(cpu1 - cpu0, 3), "server_cpu_idle_s": round(cpu2 - cpu1, 3)})
    if fails:
        res["first_failures"] = fails[:3]
    return res


# ---- chat (both doors) ----------------------------------------------------------


class ChatState:
    def __init__(self, window, pad, to_full):
        self.window = window
        self.pad = pad
        self.to_full = to_full
        self.sending = False
        self.measuring = False
        self.delivered_in_window = 0
        self.lat = []
        self.errors = 0


def _account(state, a, uniq_hits, now, errors):
    """Book-keeping shared by both doors when C{a} received messages (seq, ts) from its peer."""
    if errors:
        state.errors += errors
    seen = a.seen
    uniq = 0
    measuring = state.measuring
    lat = state.lat
    for sb, tb in uniq_hits:
        s = int(sb)
        if s >= len(seen):
            seen.extend(bytes(s - len(seen) + 65536))
        if seen[s]:
            a.dups += 1
            continue
        seen[s] = 1
        uniq += 1
        if measuring:
            lat.append(now - int(tb))
    if measuring:
        state.delivered_in_window += uniq
    a.received += uniq
    p = a.peer
    p.inflight -= uniq
    if state.sending:
        p.send_more()


def install_chat(state, a, b):
    """Make C{a} send to C{b} in a closed loop (the caller installs b -> a too). Either may be a
    WSClient or an xmppbench Client; what each sends and parses follows its own door."""
    to = b.jid if state.to_full else b.bare
    a.peer = b
    a.next_seq = 0
    a.inflight = 0
    a.sent = 0
    a.received = 0
    a.dups = 0
    a.seen = bytearray(65536)
    a.rbuf = b""
    pad = ("x" * state.pad) if state.pad else ""
    if isinstance(a, WSClient):
        pre = ('{"type":"message","payload":{"to":' + json.dumps(to) + ',"type":"chat","body":"').encode()
        post = ((":" + pad) if pad else "").encode() + b'"}}'
        mask = a.mask

        def send_more():
            k = state.window - a.inflight
            if k <= 0 or not state.sending:
                return
            t = perf_ns()
            s0 = a.next_seq
            a.transport.write(b"".join([ws_frame(pre + b"%d:%d" % (s, t) + post, mask) for s in range(s0, s0 + k)]))
            a.next_seq = s0 + k
            a.inflight += k
            a.sent += k

        def on_texts(texts):
            data = b"\n".join(texts) if len(texts) > 1 else texts[0]
            now = perf_ns()
            errors = len(RE_ERROR.findall(data)) if b"error" in data else 0
            _account(state, a, RE_BODY.findall(data), now, errors)

        a.send_more = send_more
        a.fast = on_texts
    else:
        pre = f"<message to='{xb.xml_escape(to)}' type='chat'><body>".encode()
        post = ((":" + pad) if pad else "").encode() + b"</body></message>"

        def send_more():
            k = state.window - a.inflight
            if k <= 0 or not state.sending:
                return
            t = perf_ns()
            s0 = a.next_seq
            a.transport.write(b"".join([pre + b"%d:%d" % (s, t) + post for s in range(s0, s0 + k)]))
            a.next_seq = s0 + k
            a.inflight += k
            a.sent += k

        def on_data(data):
            if a.rbuf:
                data = a.rbuf + data
            end = data.rfind(b"</message>")
            if end < 0:
                a.rbuf = data
                return
            end += 10
            if end < len(data):
                a.rbuf = data[end:]
                data = data[:end]
            else:
                a.rbuf = b""
            now = perf_ns()
            errors = len(xb.RE_MSG_ERROR.findall(data)) if b"error" in data else 0
            _account(state, a, xb.RE_MSG_BODY.findall(data), now, errors)

        a.send_more = send_more
        a.handler = on_data


async def run_chat(cfg, probe, pairs_of_clients, extra):
    """The measured closed loop over (a, b) pairs of logged-in clients of either door."""
    clients = [c for pr in pairs_of_clients for c in pr]
    await asyncio.sleep(0.5)  # let presence echoes arrive before switching to the fast path
    st = ChatState(cfg.window, cfg.body_pad, cfg.to == "full")
    for a, b in pairs_of_clients:
        install_chat(st, a, b)
        install_chat(st, b, a)
    st.sending = True
    for c in clients:
        c.send_more()
    await asyncio.sleep(cfg.warmup)
    hc0 = time.process_time()
    cpu0 = probe.cpu() if probe else None
    st.measuring = True
    m0 = perf_ns()
    await asyncio.sleep(cfg.duration)
    st.measuring = False
    m1 = perf_ns()
    cpu1 = probe.cpu() if probe else None
    hc1 = time.process_time()
    rss = probe.rss_kb() if probe else None
    st.sending = False
    deadline = time.monotonic() + cfg.drain
    while time.monotonic() < deadline:
        if all(c.inflight <= 0 for c in clients):
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)  # late duplicates
    sent = sum(c.sent for c in clients)
    received = sum(c.received for c in clients)
    dups = sum(c.dups for c in clients)
    per_client = sorted(c.received for c in clients)
    alive = sum(1 for c in clients if not c.closed.done())
    for c in clients:
        c.close()
    await asyncio.wait([c.closed for c in clients], timeout=2.0)
    wall = (m1 - m0) / 1e9
    lat = st.lat
    lat.sort()
    res = base_result(cfg, "chat")
    res.update(extra)
    res.update({"pairs": len(pairs_of_clients), "window": cfg.window, "to": cfg.to, "body_pad": cfg.body_pad,
                "duration_s": round(wall, 3), "delivered": st.delivered_in_window,
                "msgs_per_s": round(st.delivered_in_window / wall, 1),
                "lat_p50_ms": ms(pct(lat, 50)), "lat_p99_ms": ms(pct(lat, 99)),
                "lat_max_ms": ms(lat[-1] if lat else None),
                "sent_total": sent, "received_total": received, "lost": sent - received, "duplicated": dups,
                "error_stanzas": st.errors, "alive_at_end": alive,
                "min_per_client_received": per_client[0] if per_client else None,
                "harness_cpu_pct": round(100 * (hc1 - hc0) / wall, 1)})
    if probe:
        scpu = cpu1 - cpu0
        per = round(st.delivered_in_window / scpu, 1) if scpu > 0 else None
        res.update({"server_cpu_s": round(scpu, 3), "server_cpu_pct": round(100 * scpu / wall, 1),
                    "msgs_per_server_cpu_s": per, "msgs_per_cpu_s": per, "server_rss_kb": rss})
    return res


async def sc_chat(cfg, probe):
    n = 2 * cfg.pairs
    clients, _, fails, _, _ = await ws_login_many(cfg, range(cfg.start, cfg.start + n))
    if fails:
        await close_all(clients)
        return dict(base_result(cfg, "chat"), error="login failures", failed=len(fails), first_failures=fails[:3])
    clients.sort(key=lambda c: c.idx)
    pairs = [(clients[i], clients[i + 1]) for i in range(0, n, 2)]
    return await run_chat(cfg, probe, pairs, {})


async def sc_cross(cfg, probe):
    """Pairs of one c2s client (even index) and one WebSocket client (odd index)."""
    n = 2 * cfg.pairs
    c2s_cfg = SimpleNamespace(**vars(cfg))
    c2s_cfg.port = cfg.c2s_port
    xclients, _, fails1, _, _ = await xb.login_many(c2s_cfg, range(cfg.start, cfg.start + n, 2))
    wclients, _, fails2, _, _ = await ws_login_many(cfg, range(cfg.start + 1, cfg.start + n, 2))
    fails = fails1 + fails2
    if fails:
        for c in xclients + wclients:
            c.close()
        return dict(base_result(cfg, "chat"), door="cross", error="login failures", failed=len(fails),
                    first_failures=fails[:3])
    xclients.sort(key=lambda c: c.idx)
    wclients.sort(key=lambda c: c.idx)
    pairs = list(zip(xclients, wclients))
    res = await run_chat(cfg, probe, pairs, {"door": "cross", "c2s_target": f"{cfg.host}:{cfg.c2s_port}"})
    return res


CARBONS_ENABLE = "<iq type='set' id='carbons-on'><enable xmlns='urn:xmpp:carbons:2'/></iq>"


async def enable_carbons(clients):
    """XEP-0280 on for every c2s client (every JSON door session has carbons on from the start)."""
    for c in clients:
        c.send(CARBONS_ENABLE)
    answers = await asyncio.gather(*(c.expect(xb.re_iq("carbons-on")) for c in clients))
    refused = [a.group(0)[:200] for a in answers if b"type='result'" not in a.group(0)
               and b'type="result"' not in a.group(0)]
    if refused:
        raise WSError(f"carbons refused: {refused[0]!r}")


async def sc_c2s_chat(cfg, probe):
    """The closed loop of L{sc_chat} between c2s clients, optionally with carbons on."""
    n = 2 * cfg.pairs
    c2s_cfg = SimpleNamespace(**vars(cfg))
    c2s_cfg.port = cfg.c2s_port
    clients, _, fails, _, _ = await xb.login_many(c2s_cfg, range(cfg.start, cfg.start + n))
    extra = {"door": "c2s", "carbons": cfg.carbons, "c2s_target": f"{cfg.host}:{cfg.c2s_port}"}
    if fails:
        for c in clients:
            c.close()
        return dict(base_result(cfg, "chat"), **extra, error="login failures", failed=len(fails),
                    first_failures=fails[:3])
    if cfg.carbons:
        await enable_carbons(clients)
    clients.sort(key=lambda c: c.idx)
    pairs = [(clients[i], clients[i + 1]) for i in range(0, n, 2)]
    return await run_chat(cfg, probe, pairs, extra)


# ---- presence fan-out over the dialect ------------------------------------------


def ring_contacts(i, u, k, start):
    return xb.ring_contacts(i, u, k, start)


def _both(roster_frame):
    p = (roster_frame or {}).get("payload") or {}
    out = set()
    for it in p.get("items") or []:
        if isinstance(it, dict) and it.get("subscription") == "both":
            out.add(it.get("jid"))
    return out


async def setup_rosters(cfg, clients, k):
    """Idempotently give every ring user mutual ('both') subscriptions through the dialect.

    Every client approves incoming 'subscribe' requests; for each missing pair, BOTH ends send
    'subscribe' (a one-sided 'to' is completed by the other end asking). Roster gets are then
    polled every 2 s; requests are re-sent only when two polls in a row made no progress, so a
    server that processes subscriptions slowly is not flooded with duplicates. Bounded by
    --setup-timeout. Returns (users that needed work, seconds it took)."""
    u = len(clients)
    by_bare = {c.bare: c for c in clients}
    for c in clients:
        c.want = {f"{username(cfg, j)}@{cfg.domain}" for j in ring_contacts(c.idx, u, k, cfg.start)}
    missing = {c: c.want - _both(getattr(c, "roster", None)) for c in clients}
    missing = {c: m for c, m in missing.items() if m}
    fixed = len(missing)
    if not missing:
        return 0, 0.0
    log(f"roster setup: {len(missing)} users need subscriptions")
    t0 = time.monotonic()

    def approver(c):
        def on_frame(o):
            p = o.get("payload")
            if o.get("type") == "presence" and isinstance(p, dict) and p.get("type") == "subscribe":
                frm = (p.get("from") or "").split("/")[0]
                if frm:
                    c.send_obj({"type": "presence", "payload": {"to": frm, "type": "subscribed"}})
        return on_frame

    def ask(missing):
        pairs = set()
        for c, miss in missing.items():
            for j in miss:
                pairs.add((c.bare, j))
                pairs.add((j, c.bare))
        for a, b in sorted(pairs):
            if a in by_bare:
                by_bare[a].send_obj({"type": "presence", "payload": {"to": b, "type": "subscribe"}})

    def item(r, jid):
        items = ((r.get("payload") or {}).get("items") or []) if isinstance(r, dict) else []
        return next((it for it in items if isinstance(it, dict) and it.get("jid") == jid), None)

    for c in clients:
        c.on_frame = approver(c)
        for o in list(c.inbox):  # requests that arrived during login
            c.on_frame(o)
        c.inbox = []
    ask(missing)
    deadline = time.monotonic() + cfg.setup_timeout
    best, stalls, poll = len(missing), 0, 0
    while missing and time.monotonic() < deadline:
        await asyncio.sleep(2.0)
        poll += 1
        qid = f"rv{poll}"
        for c in clients:
            c.send_obj({"type": "iq", "payload": {"type": "get", "id": qid, "query": "jabber:iq:roster"}})
        res = await asyncio.gather(*(c.expect(_iq_id(qid)) for c in clients), return_exceptions=True)
        rosters = {c.bare: r for c, r in zip(clients, res)}
        missing, detail = {}, None
        for c, r in zip(clients, res):
            got = _both(r) if isinstance(r, dict) else set()
            if c.want - got:
                missing[c] = c.want - got
                if detail is None:
                    x = min(missing[c])
                    detail = f"{c.bare} has {item(r, x)}; {x} has {item(rosters.get(x), c.bare)}"
        if not missing:
            break
        if len(missing) < best:
            best, stalls = len(missing), 0
        else:
            stalls += 1
        log(f"roster setup poll {poll} ({time.monotonic() - t0:.0f} s): {len(missing)} users incomplete, "
            f"e.g. {detail}{'; asking again' if stalls >= 2 else ''}")
        if stalls >= 2:
            ask(missing)
            stalls = 0
    for c in clients:
        c.on_frame = None
        c.inbox = []
    took = time.monotonic() - t0
    if missing:
        raise WSError(f"roster setup failed for {len(missing)} users after {took:.0f} s")
    log(f"roster setup done in {took:.1f} s")
    return fixed, took


async def sc_rosters(cfg, probe):
    """Only the (idempotent) roster setup of the presence scenario: U users, K ring contacts.
    Rosters are door-agnostic, so this also prepares the ring for xmppbench's c2s presence."""
    u, k = cfg.users, cfg.contacts
    if k >= u or k % 2:
        raise SystemExit("--contacts must be even and < --users")
    clients, _, fails, _, _ = await ws_login_many(cfg, range(cfg.start, cfg.start + u), presence=True, roster=True)
    if fails:
        await close_all(clients)
        return dict(base_result(cfg, "rosters"), error="login failures", first_failures=fails[:3])
    clients.sort(key=lambda c: c.idx)
    try:
        fixed, took = await setup_rosters(cfg, clients, k)
    finally:
        await close_all(clients)
    return dict(base_result(cfg, "rosters"), users=u, contacts=k, roster_fixed=fixed, setup_s=round(took, 1))


async def sc_presence(cfg, probe):
    u, k = cfg.users, cfg.contacts
    if k >= u or k % 2:
        raise SystemExit("--contacts must be even and < --users")
    clients, _, fails, _, _ = await ws_login_many(cfg, range(cfg.start, cfg.start + u), presence=True, roster=True)
    if fails:
        await close_all(clients)
        return dict(base_result(cfg, "presence"), error="login failures", first_failures=fails[:3])
    clients.sort(key=lambda c: c.idx)
    try:
        fixed, setup_s = await setup_rosters(cfg, clients, k)
    finally:
        await close_all(clients)
    await asyncio.sleep(0.5)
    cpu_a = probe.cpu() if probe else None
    clients, lat, fails, t0, t1 = await ws_login_many(cfg, range(cfg.start, cfg.start + u), presence=True)
    cpu_b = probe.cpu() if probe else None
    if fails:
        await close_all(clients)
        return dict(base_result(cfg, "presence"), error="login failures", first_failures=fails[:3])
    clients.sort(key=lambda c: c.idx)
    await asyncio.sleep(1.0)
    by_idx = {c.idx: c for c in clients}
    st = {"sending": False, "measuring": False, "deliv": 0, "changes": 0, "lat": []}
    for c in clients:
        c.contacts = set(ring_contacts(c.idx, u, k, cfg.start))
        c.pseq = 0
        c.pending = 0
        c.t_sent = 0
        c.inbox = []

    def send_change(c):
        c.pseq += 1
        c.pending = k
        c.t_sent = perf_ns()
        show = "away" if c.pseq % 2 else "dnd"
        c.send_raw(ws_frame(b'{"type":"presence","payload":{"show":"%s","status":"p%d:%d:%d"}}'
                            % (show.encode(), c.idx, c.pseq, c.t_sent), c.mask))

    def make_handler(c):
        def h(texts):
            data = b"\n".join(texts) if len(texts) > 1 else texts[0]
            now = perf_ns()
            for ib, sb, _tb in RE_STATUS.findall(data):
                src = by_idx.get(int(ib))
                if src is None or c.idx not in src.contacts or int(sb) != src.pseq:
                    continue
                src.pending -= 1
                if st["measuring"]:
                    st["deliv"] += 1
                if src.pending == 0:
                    if st["measuring"]:
                        st["changes"] += 1
                        st["lat"].append(now - src.t_sent)
                    if st["sending"]:
                        send_change(src)
        return h

    for c in clients:
        c.fast = make_handler(c)
    st["sending"] = True
    for c in clients:
        send_change(c)
    await asyncio.sleep(cfg.warmup)
    cpu0 = probe.cpu() if probe else None
    hc0 = time.process_time()
    st["measuring"] = True
    m0 = perf_ns()
    await asyncio.sleep(cfg.duration)
    st["measuring"] = False
    m1 = perf_ns()
    hc1 = time.process_time()
    cpu1 = probe.cpu() if probe else None
    st["sending"] = False
    stuck = 0
    for _ in range(50):
        await asyncio.sleep(0.1)
        stuck = sum(1 for c in clients if c.pending > 0)
        if not stuck:
            break
    await close_all(clients)
    wall = (m1 - m0) / 1e9
    lat = sorted(st["lat"])
    res = base_result(cfg, "presence")
    res.update({"users": u, "contacts": k, "roster_fixed": fixed, "roster_setup_s": round(setup_s, 1),
                "duration_s": round(wall, 3),
                "presence_changes_per_s": round(st["changes"] / wall, 1),
                "deliveries_per_s": round(st["deliv"] / wall, 1),
                "fanout_p50_ms": ms(pct(lat, 50)), "fanout_p99_ms": ms(pct(lat, 99)),
                "incomplete_fanouts_at_end": stuck,
                "initial_login_wall_s": round((t1 - t0) / 1e9, 3),
                "harness_cpu_pct": round(100 * (hc1 - hc0) / wall, 1)})
    if probe:
        scpu = cpu1 - cpu0
        res.update({"server_cpu_s": round(scpu, 3), "server_cpu_pct": round(100 * scpu / wall, 1),
                    "deliveries_per_server_cpu_s": round(st["deliv"] / scpu, 1) if scpu > 0 else None,
                    "server_cpu_initial_login_s": round(cpu_b - cpu_a, 3)})
    return res


# --------------------------------------------------------------------------
# CLI


def build_parser():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080, help="the web port (REST + /stream)")
    ap.add_argument("--c2s-port", type=int, default=5222, help="the XMPP c2s port (cross scenario)")
    ap.add_argument("--domain", default="localhost")
    ap.add_argument("--prefix", default="bench")
    ap.add_argument("--password", default=None, help="same password for all accounts (default: pw<i>)")
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--server-pid", action="append", default=[], help="server PID (repeatable; children included)")
    ap.add_argument("--server-pid-cmd", default=None)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--label", default="")
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--no-uvloop", action="store_true")
    ap.add_argument("--xmppbench", default=DEFAULT_XMPPBENCH, help="path of the shared harness to import")
    sub = ap.add_subparsers(dest="scenario", required=True)
    common = argparse.ArgumentParser(add_help=False)
    for flag, typ in (("--concurrency", int), ("--timeout", float), ("--label", str), ("--json-out", str),
                      ("--prefix", str), ("--password", str), ("--start", int)):
        common.add_argument(flag, type=typ, default=argparse.SUPPRESS)

    p = sub.add_parser("provision", parents=[common], help="create accounts through REST POST /users")
    p.add_argument("--users", type=int, required=True)

    p = sub.add_parser("login", parents=[common], help="login rate and latency (POST /login + WebSocket)")
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--roster", action="store_true")

    p = sub.add_parser("idle", parents=[common], help="RSS per idle WebSocket session")
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--settle", type=float, default=5.0)
    p.add_argument("--settle-after", type=float, default=2.0)

    for name, hlp in (("chat", "one-to-one chat over the WebSocket door"),
                      ("cross", "one-to-one chat, c2s client <-> WebSocket client"),
                      ("c2s-chat", "one-to-one chat over the c2s door, in the loop of chat")):
        p = sub.add_parser(name, parents=[common], help=hlp)
        if name == "c2s-chat":
            p.add_argument("--carbons", action="store_true",
                           help="enable message carbons on every client, as the JSON door does")
        p.add_argument("--pairs", type=int, default=50)
        p.add_argument("--duration", type=float, default=10.0)
        p.add_argument("--warmup", type=float, default=2.0)
        p.add_argument("--drain", type=float, default=10.0)
        p.add_argument("--window", type=int, default=10)
        p.add_argument("--body-pad", type=int, default=0)
        p.add_argument("--to", choices=["full", "bare"], default="full")

    p = sub.add_parser("presence", parents=[common], help="presence broadcast over the dialect")
    p.add_argument("--users", type=int, default=200)
    p.add_argument("--contacts", type=int, default=10)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--setup-timeout", type=float, default=300.0, help="limit for the one-time roster setup, s")

    p = sub.add_parser("rosters", parents=[common], help="only set up the ring rosters (idempotent)")
    p.add_argument("--users", type=int, default=200)
    p.add_argument("--contacts", type=int, default=10)
    p.add_argument("--setup-timeout", type=float, default=300.0)
    return ap


def main(argv=None):
    cfg = build_parser().parse_args(argv)
    load_xmppbench(cfg.xmppbench)
    xb.raise_nofile()
    cfg.loop_name = "asyncio"
    if not cfg.no_uvloop:
        try:
            import uvloop  # type: ignore

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
            cfg.loop_name = "uvloop"
        except ImportError:
            pass
    pids = list(cfg.server_pid)
    if cfg.server_pid_cmd:
        pids += subprocess.run(cfg.server_pid_cmd, shell=True, capture_output=True, text=True,
                               check=False).stdout.split()[:1]
    probe = xb.ServerProbe(pids)
    fn = {"provision": sc_provision, "login": sc_login, "idle": sc_idle, "chat": sc_chat,
          "cross": sc_cross, "c2s-chat": sc_c2s_chat, "presence": sc_presence,
          "rosters": sc_rosters}[cfg.scenario]
    res = asyncio.run(fn(cfg, probe))
    if pids:
        res["server_pids"] = probe.pids()
    line = json.dumps(res)
    print(line, flush=True)
    if cfg.json_out:
        with open(cfg.json_out, "a") as f:
            f.write(line + "\n")
    return 0 if not res.get("error") else 1


if __name__ == "__main__":
    sys.exit(main())
