#!/usr/bin/env python3
"""
bench/cluster_bench.py: chat throughput of an xmppjson cluster on one machine, with the clients
spread over 1, 2 and 4 nodes (docs/clustering.md, docs/performance.md).

Each node is its own process (``cluster_bench.py node ...``: the whole server, ``makeServer``,
with the cluster on); all share one PostgreSQL database, in a schema of the benchmark's own that
is dropped and created again for every configuration.  The load is P pairs of JSON WebSocket
clients chatting in a closed loop (each client keeps W messages in flight to its partner); the
two clients of pair i sit on nodes i mod N and (i + 1) mod N, so with more than one node every
message crosses from one node to another through PostgreSQL.  As a reference, the same load
also runs on one node with the cluster off.

  python3 bench/cluster_bench.py                       # 1, 2, 4 nodes + the single-node reference
  python3 bench/cluster_bench.py --nodes 2 --pairs 40 --duration 10

The database is --db, else $XMPPJSON_BENCH_PG, else $XMPPJSON_TEST_PG (`eval "$(bash
.ci/postgres.sh)"` starts a throw-away one).  One JSON line per configuration goes to stdout
(and --json-out), followed by a Markdown table.

Measured per configuration: delivered messages per second (all nodes, and per node: the
messages delivered to the clients of that node), latency percentiles, and the CPU seconds the
node processes and the PostgreSQL server used, so that the figures can be read on a machine
with fewer cores than processes.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DOMAIN = "localhost"
PASSWORD = "benchpass"
SCHEMA = "xj_cluster_bench"
CLK = os.sysconf("SC_CLK_TCK")


def log(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- a node


def runNode(args: argparse.Namespace) -> None:
    """One cluster node in this process, until SIGTERM."""
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor

    sys.path.insert(0, REPO)
    from xmppjson.config import Config
    from xmppjson.service import makeServer

    # The message archive (XEP-0313, on by default) writes every message to the database; it
    # is off here so that the figures show what clustering costs, not what archiving does.
    extra = {"archive": False} if "archive" in Config.__dataclass_fields__ else {}
    config = Config(
        **extra,
        domain=DOMAIN,
        web=f"tcp:{args.web}:interface=127.0.0.1",
        c2s=f"tcp:{args.c2s}:interface=127.0.0.1",
        db=args.db,
        allowPlaintext=True,
        scramIterations=64,
        stanzaRate=0,
        registration="open",
        cluster=args.name != "-",
        nodeName=args.name if args.name != "-" else "",
        clusterHeartbeat=1.0,
        clusterTimeout=5.0,
        clusterChannel="xjbench",
    )
    server = makeServer(config, reactor)
    server.startService()
    reactor.addSystemEventTrigger("before", "shutdown", server.stopService)
    signal.signal(signal.SIGTERM, lambda *_: reactor.callFromThread(reactor.stop))
    reactor.run()


# ---------------------------------------------------------------------------- processes


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def waitPort(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"node exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} not open after {timeout} s")


def cpuSeconds(pid: int) -> float:
    """User + system CPU of a process and its reaped children, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / CLK


APPLICATION = "xjbench"


def postgresCPU(base: str) -> float:
    """
    CPU seconds of the PostgreSQL backends serving the nodes (found by their application name:
    the server may be busy with other clients too).
    """
    import psycopg2

    with psycopg2.connect(base, connect_timeout=10) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", (APPLICATION,))
        pids = [row[0] for row in cursor.fetchall()]
    total = 0.0
    for pid in pids:
        try:
            total += cpuSeconds(pid)
        except OSError:
            continue  # not ours to read (another user), or gone
    return total


def resetSchema(base: str) -> str:
    import psycopg2

    with psycopg2.connect(base, connect_timeout=10) as connection:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
            cursor.execute(f"CREATE SCHEMA {SCHEMA}")
    separator = "&" if "?" in base else "?"
    options = urllib.parse.quote(f"-csearch_path={SCHEMA}")
    return f"{base}{separator}options={options}&application_name={APPLICATION}"


class Nodes:
    """N node processes (or one with the cluster off), started and stopped by their PIDs."""

    def __init__(self, count: int, db: str, cluster: bool):
        self.procs: list[subprocess.Popen[bytes]] = []
        self.web: list[int] = []
        for i in range(count):
            web, c2s = freePort(), freePort()
            name = f"n{i}" if cluster else "-"
            proc = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "node", "--name", name, "--db", db,
                 "--web", str(web), "--c2s", str(c2s)],
                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            self.procs.append(proc)
            self.web.append(web)
            # one at a time: the first creates the schema, the others find it
            waitPort(web, proc)

    def cpu(self) -> list[float]:
        return [cpuSeconds(p.pid) for p in self.procs]

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# ---------------------------------------------------------------------------- clients


async def http(port: int, method: str, path: str, body: Any) -> tuple[int, Any]:
    data = json.dumps(body).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n".encode() + data
    )
    raw = await reader.read()
    writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), (json.loads(payload) if payload.strip() else None)


class WS(asyncio.Protocol):
    """A small RFC 6455 client: masked text frames out, text frames in (to C{onText})."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.buffer = b""
        self.handshaken = asyncio.get_running_loop().create_future()
        self.onText: Any = None
        self.pending: list[bytes] = []
        self.mask = os.urandom(4)
        self.maskInt = int.from_bytes(self.mask * 2048, "little")

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        if not self.handshaken.done():
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = buffer
                return
            self.handshaken.set_result(buffer[:end])
            buffer = buffer[end + 4:]
        pos, size = 0, len(buffer)
        texts = []
        while size - pos >= 2:
            length, head = buffer[pos + 1] & 0x7F, 2
            if length == 126:
                if size - pos < 4:
                    break
                length, head = int.from_bytes(buffer[pos + 2:pos + 4], "big"), 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, head = int.from_bytes(buffer[pos + 2:pos + 10], "big"), 10
            if pos + head + length > size:
                break
            if buffer[pos] & 0x0F == 1:
                texts.append(buffer[pos + head:pos + head + length])
            pos += head + length
        self.buffer = buffer[pos:]
        if texts:
            if self.onText is None:
                self.pending.extend(texts)
            else:
                self.onText(texts)

    def handle(self, onText: Any) -> None:
        """Hand every text frame to C{onText} from now on, those that came before first."""
        self.onText = onText
        pending, self.pending = self.pending, []
        if pending:
            onText(pending)

    def send(self, obj: Any) -> None:
        payload = json.dumps(obj).encode()
        n = len(payload)
        if n < 126:
            head = bytes((0x81, 0x80 | n))
        elif n < 65536:
            head = bytes((0x81, 0x80 | 126)) + n.to_bytes(2, "big")
        else:
            head = bytes((0x81, 0x80 | 127)) + n.to_bytes(8, "big")
        mask = self.maskInt & ((1 << (8 * n)) - 1) if n <= 8192 else int.from_bytes((self.mask * (n // 4 + 1))[:n], "little")
        self.transport.write(head + self.mask + (int.from_bytes(payload, "little") ^ mask).to_bytes(n, "little"))


async def connect(port: int, user: str) -> tuple[WS, str]:
    status, body = await http(port, "POST", "/login", {"jid": user, "password": PASSWORD})
    if status != 200:
        raise RuntimeError(f"login {user}: {status} {body}")
    loop = asyncio.get_running_loop()
    _, ws = await loop.create_connection(WS, "127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    ws.transport.write(
        f"GET /stream?token={body['token']} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = await asyncio.wait_for(ws.handshaken, 10)
    if b" 101 " not in head.split(b"\r\n", 1)[0] + b" ":
        raise RuntimeError(f"handshake {user}: {head[:200]!r}")
    session: asyncio.Future[str] = loop.create_future()

    def first(texts: list[bytes]) -> None:
        for text in texts:
            frame = json.loads(text)
            if frame.get("type") == "session" and not session.done():
                session.set_result(frame["payload"]["jid"])

    ws.handle(first)
    jid = await asyncio.wait_for(session, 10)
    ws.send({"type": "presence", "payload": {}})
    return ws, jid


async def chat(ports: list[int], pairs: int, window: int, warmup: float, duration: float,
               prefix: str) -> dict[str, Any]:
    """The closed loop; returns deliveries per receiving node and latencies."""
    n = len(ports)
    users = [f"{prefix}{i}" for i in range(2 * pairs)]
    for user in users:
        status, body = await http(ports[0], "POST", "/users", {"jid": user, "password": PASSWORD})
        if status not in (201, 409):
            raise RuntimeError(f"create {user}: {status} {body}")
    clients = []
    for i in range(pairs):
        a = await connect(ports[i % n], users[2 * i])
        b = await connect(ports[(i + 1) % n], users[2 * i + 1])
        clients.append((a, b, i % n, (i + 1) % n))
    await asyncio.sleep(1.0)  # the cluster hears of every session before the load starts
    state = {"measuring": False, "sending": True}
    delivered = [0] * n
    latencies: list[int] = []

    def install(sender: WS, to: str, receiver: WS, node: int) -> None:
        inflight = [0]

        def more() -> None:
            if not state["sending"]:
                return
            while inflight[0] < window:
                inflight[0] += 1
                sender.send({"type": "message", "payload": {"to": to, "type": "chat",
                                                            "body": str(time.perf_counter_ns())}})

        def received(texts: list[bytes]) -> None:
            now = time.perf_counter_ns()
            got = 0
            for text in texts:
                if b'"message"' not in text:
                    continue
                got += 1
                if state["measuring"]:
                    stamp = json.loads(text)["payload"]["body"]
                    latencies.append(now - int(stamp))
            if got:
                inflight[0] -= got
                if state["measuring"]:
                    delivered[node] += got
                more()

        receiver.handle(received)
        more()

    for (a, aJID), (b, bJID), na, nb in clients:
        install(a, bJID, b, nb)
        install(b, aJID, a, na)
    await asyncio.sleep(warmup)
    state["measuring"] = True
    start = time.monotonic()
    await asyncio.sleep(duration)
    state["measuring"] = False
    wall = time.monotonic() - start
    state["sending"] = False
    await asyncio.sleep(1.0)
    for (a, _), (b, _), _, _ in clients:
        a.transport.close()
        b.transport.close()
    latencies.sort()

    def pct(p: float) -> float | None:
        return round(latencies[int(p / 100 * (len(latencies) - 1))] / 1e6, 2) if latencies else None

    return {"wall": wall, "delivered": delivered, "p50_ms": pct(50), "p99_ms": pct(99)}


def measure(base: str, count: int, cluster: bool, args: argparse.Namespace) -> dict[str, Any]:
    db = resetSchema(base)
    nodes = Nodes(count, db, cluster)
    try:
        time.sleep(1.0 + (2.0 if cluster else 0))  # every node joined and knows the others
        cpu0, pg0, harness0 = nodes.cpu(), postgresCPU(base), time.process_time()
        result = asyncio.run(chat(nodes.web, args.pairs, args.window, args.warmup, args.duration,
                                  prefix="u"))
        cpu1, pg1, harness1 = nodes.cpu(), postgresCPU(base), time.process_time()
    finally:
        nodes.stop()
    wall = result["wall"]
    total = sum(result["delivered"])
    nodeCPU = [round(b - a, 2) for a, b in zip(cpu0, cpu1)]
    return {
        "nodes": count, "cluster": cluster, "pairs": args.pairs, "window": args.window,
        "duration_s": round(wall, 2), "msgs_per_s": round(total / wall),
        "msgs_per_s_per_node": [round(d / wall) for d in result["delivered"]],
        "lat_p50_ms": result["p50_ms"], "lat_p99_ms": result["p99_ms"],
        "node_cpu_s": nodeCPU, "postgres_cpu_s": round(pg1 - pg0, 2),
        "msgs_per_node_cpu_s": round(total / sum(nodeCPU)) if sum(nodeCPU) else None,
        "harness_cpu_s": round(harness1 - harness0, 2), "cores": os.cpu_count(),
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| nodes | cluster | msgs/s (all) | msgs/s per node | p50 ms | p99 ms | node CPU s | PostgreSQL CPU s | msgs per node-CPU-s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['nodes']} | {'on' if r['cluster'] else 'off'} | {r['msgs_per_s']} | "
            f"{', '.join(map(str, r['msgs_per_s_per_node']))} | {r['lat_p50_ms']} | {r['lat_p99_ms']} | "
            f"{', '.join(map(str, r['node_cpu_s']))} | {r['postgres_cpu_s']} | {r['msgs_per_node_cpu_s']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    node = sub.add_parser("node", help="run one node (used by the benchmark itself)")
    node.add_argument("--name", required=True, help="node name, or - for a node without the cluster")
    node.add_argument("--db", required=True)
    node.add_argument("--web", type=int, required=True)
    node.add_argument("--c2s", type=int, required=True)
    parser.add_argument("--db", default=os.environ.get("XMPPJSON_BENCH_PG") or os.environ.get("XMPPJSON_TEST_PG"))
    parser.add_argument("--nodes", type=int, action="append", help="node counts (default 1, 2, 4)")
    parser.add_argument("--no-reference", action="store_true", help="skip the single node without cluster")
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()
    if args.command == "node":
        runNode(args)
        return
    if not args.db:
        raise SystemExit("no database: pass --db or set XMPPJSON_BENCH_PG / XMPPJSON_TEST_PG")
    configurations = [] if args.no_reference else [(1, False)]
    configurations += [(n, True) for n in (args.nodes or [1, 2, 4])]
    rows = []
    for count, cluster in configurations:
        log(f"== {count} node(s), cluster {'on' if cluster else 'off'}")
        row = measure(args.db, count, cluster, args)
        rows.append(row)
        line = json.dumps(row)
        print(line, flush=True)
        if args.json_out:
            with open(args.json_out, "a") as f:
                f.write(line + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
