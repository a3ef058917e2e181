#!/usr/bin/env python3
"""
bench/run.py: xmppjson against Prosody and ejabberd, side by side in one run.

For R rounds, every scenario runs once on every server it applies to, on a freshly started
server process each time (server order rotated per round), and the raw JSON line of each run
is appended to a results file. At the end ONE Markdown table shows medians and same-round
ratios (xmppjson/ejabberd, xmppjson/prosody; the JSON door against the c2s door).

  python3 bench/run.py                      # full campaign: 3 rounds, default scenarios (~35 min)
  python3 bench/run.py --quick              # 1 round, short runs, small counts (~6 min)
  python3 bench/run.py --scenarios chat-50x10,ws-chat-50x10 --rounds 5
  python3 bench/run.py --list               # scenarios and servers
  python3 bench/run.py --table results/x.jsonl   # the table of an earlier results file

Load generators: the shared harness /work/shared/bench/xmppbench.py (c2s, used as is) and
bench/wsbench.py (the JSON door, and the c2s <-> JSON cross-door chat). Peers: Debian's
prosody and ejabberd via bench/servers/server.sh (the shared configs; plus SCRAM-storing
variants for the login comparison at equal PBKDF2 iterations). With XMPPJSON_BENCH_PG set to a
postgresql:// URL, xmppjson also runs on that database as server ``xmppjson-pg`` (and with
XMPPJSON_BENCH_PG_PIDFILE naming its postmaster.pid, the database's CPU is counted too).

Accounts: xmppjson through REST ``POST /users``; the peers by XEP-0077 in-band registration (the
harness's ``provision``); all with one password (``--password``, default ``benchpass``)
because xmppjson refuses the harness's default ``pw<i>`` (shorter than 6).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl

# below the ephemeral port range (32768-60999), and away from the usual 5222/8080 and from
# other engineers' dev servers; checked to be free before every start
XJ_C2S, XJ_WEB = 24222, 24280
XJ_PG_C2S, XJ_PG_WEB = 24322, 24380


@dataclass
class Scenario:
    """One load shape: which tool, which servers, its arguments (full and --quick)."""

    name: str
    tool: str  # "x" = xmppbench (c2s), "w" = wsbench (JSON door / cross)
    servers: list[str]
    args: list[str]
    quick: list[str]
    prefix: str = "bench"
    accounts: int = 0  # accounts needed (full); quick counts are in quick_accounts
    quick_accounts: int = 0
    default: bool = True
    doc: str = ""


def _chat(p, w, d, wu):
    return ["chat", "--pairs", str(p), "--window", str(w), "--duration", str(d), "--warmup", str(wu)]


PEERS = ["ejabberd", "prosody"]
MAM_PEERS = ["ejabberd-mam", "prosody-mam"]  # xmppjson archives every chat message (XEP-0313)
NOARCH = "xmppjson-noarch"  # xmppjson --no-archive, on the same SQLite database
SCENARIOS: OrderedDict[str, Scenario] = OrderedDict((s.name, s) for s in [
    Scenario("chat-50x10", "x", ["xmppjson", NOARCH, *PEERS, *MAM_PEERS], _chat(50, 10, 10, 2), _chat(50, 10, 4, 1),
             accounts=100, quick_accounts=100, doc="100 c2s sessions, 50 pairs, 10 in flight each"),
    Scenario("chat-500x2", "x", ["xmppjson", NOARCH, *PEERS, *MAM_PEERS], _chat(500, 2, 10, 2), _chat(500, 2, 4, 1),
             accounts=1000, quick_accounts=1000, doc="1,000 c2s sessions, 2 in flight each"),
    Scenario("chat-1x1", "x", ["xmppjson", *PEERS], _chat(1, 1, 5, 1), _chat(1, 1, 3, 1),
             accounts=2, quick_accounts=2, default=False, doc="unloaded one-way latency"),
    Scenario("presence-200x10", "x", ["xmppjson", *PEERS],
             ["presence", "--users", "200", "--contacts", "10", "--duration", "10", "--warmup", "2"],
             ["presence", "--users", "200", "--contacts", "10", "--duration", "4", "--warmup", "1"],
             prefix="ring", accounts=200, quick_accounts=200, doc="ring of 200, 10 mutual contacts"),
    Scenario("login-2000", "x", ["xmppjson", "prosody-hashed", "ejabberd-scram"],
             ["login", "--clients", "2000", "--concurrency", "50"],
             ["login", "--clients", "300", "--concurrency", "50"],
             accounts=2000, quick_accounts=300,
             doc="peers storing PBKDF2 keys (Prosody at --iterations, ejabberd at its fixed 4096)"),
    Scenario("login-2000-plain", "x", PEERS,
             ["login", "--clients", "2000", "--concurrency", "50"],
             ["login", "--clients", "300", "--concurrency", "50"],
             accounts=2000, quick_accounts=300, default=False,
             doc="the anchors' plain-password peers (no PBKDF2 at all)"),
    Scenario("idle-5000", "x", ["xmppjson", *PEERS],
             ["idle", "--clients", "5000", "--settle", "5"], ["idle", "--clients", "1000", "--settle", "3"],
             accounts=5000, quick_accounts=1000, doc="RSS per authenticated idle session"),
    Scenario("ws-chat-50x10", "w", ["xmppjson", NOARCH], _chat(50, 10, 10, 2), _chat(50, 10, 4, 1),
             accounts=100, quick_accounts=100, doc="JSON door, same shape as chat-50x10"),
    Scenario("ws-chat-500x2", "w", ["xmppjson", NOARCH], _chat(500, 2, 10, 2), _chat(500, 2, 4, 1),
             accounts=1000, quick_accounts=1000, doc="JSON door, same shape as chat-500x2"),
    Scenario("ws-presence-200x10", "w", ["xmppjson"],
             ["presence", "--users", "200", "--contacts", "10", "--duration", "10", "--warmup", "2"],
             ["presence", "--users", "200", "--contacts", "10", "--duration", "4", "--warmup", "1"],
             prefix="wring", accounts=200, quick_accounts=200, doc="JSON door, rosters set up via the dialect"),
    Scenario("cross-chat-50x10", "w", ["xmppjson", NOARCH],
             ["cross", "--pairs", "50", "--window", "10", "--duration", "10", "--warmup", "2"],
             ["cross", "--pairs", "50", "--window", "10", "--duration", "4", "--warmup", "1"],
             accounts=100, quick_accounts=100, doc="each pair: one c2s client, one WebSocket client"),
    Scenario("ws-login-2000", "w", ["xmppjson"], ["login", "--clients", "2000", "--concurrency", "50"],
             ["login", "--clients", "300", "--concurrency", "50"], accounts=2000, quick_accounts=300,
             default=False, doc="POST /login + WebSocket + session + presence + ping"),
    Scenario("ws-idle-5000", "w", ["xmppjson"], ["idle", "--clients", "5000", "--settle", "5"],
             ["idle", "--clients", "1000", "--settle", "3"], accounts=5000, quick_accounts=1000,
             default=False, doc="RSS per idle WebSocket session"),
])

# The table: one row per (comparison, xmppjson variant). refs name the labels of the ejabberd /
# prosody / JSON-door-vs-c2s columns ({xj} is the row's xmppjson variant); targets: (column, op, x).
@dataclass
class Row:
    what: str
    scenario: str
    metric: str
    p99: str | None
    refs: dict
    targets: list


ROWS = [
    Row("chat 50x10 msgs/CPU-s", "chat-50x10", "msgs_per_server_cpu_s", "lat_p99_ms",
        {"ej": "ejabberd/chat-50x10", "pr": "prosody/chat-50x10"}, [("ej", ">=", 1.0), ("pr", ">=", 1.4)]),
    Row("chat 50x10 msgs/CPU-s, peers archiving too (mod_mam)", "chat-50x10", "msgs_per_server_cpu_s",
        "lat_p99_ms", {"ej": "ejabberd-mam/chat-50x10", "pr": "prosody-mam/chat-50x10"}, []),
    Row("chat 500x2 msgs/CPU-s", "chat-500x2", "msgs_per_server_cpu_s", "lat_p99_ms",
        {"ej": "ejabberd/chat-500x2", "pr": "prosody/chat-500x2"}, [("ej", ">=", 1.0)]),
    Row("chat 500x2 msgs/CPU-s, peers archiving too (mod_mam)", "chat-500x2", "msgs_per_server_cpu_s",
        "lat_p99_ms", {"ej": "ejabberd-mam/chat-500x2", "pr": "prosody-mam/chat-500x2"}, []),
    Row("chat 1x1 p50 latency ms (unloaded)", "chat-1x1", "lat_p50_ms", "lat_p99_ms",
        {"ej": "ejabberd/chat-1x1", "pr": "prosody/chat-1x1"}, []),
    Row("presence 200x10 deliveries/CPU-s", "presence-200x10", "deliveries_per_server_cpu_s", "fanout_p99_ms",
        {"ej": "ejabberd/presence-200x10", "pr": "prosody/presence-200x10"}, [("ej", ">=", 1.0)]),
    Row("login 2000 logins/CPU-s, equal PBKDF2", "login-2000", "logins_per_server_cpu_s", "lat_p99_ms",
        {"ej": "ejabberd-scram/login-2000", "pr": "prosody-hashed/login-2000"}, [("pr", ">=", 1.0)]),
    Row("login 2000 logins/CPU-s, plain-password peers", "login-2000", "logins_per_server_cpu_s", "lat_p99_ms",
        {"ej": "ejabberd/login-2000-plain", "pr": "prosody/login-2000-plain"}, []),
    Row("idle 5000 RSS KB/session", "idle-5000", "rss_per_conn_kb", None,
        {"ej": "ejabberd/idle-5000", "pr": "prosody/idle-5000"}, [("pr", "<=", 1.0)]),
    Row("WS chat 50x10 msgs/CPU-s", "ws-chat-50x10", "msgs_per_server_cpu_s", "lat_p99_ms",
        {"c2s": "{xj}/chat-50x10"}, [("c2s", ">=", 0.8)]),
    Row("WS chat 500x2 msgs/CPU-s", "ws-chat-500x2", "msgs_per_server_cpu_s", "lat_p99_ms",
        {"c2s": "{xj}/chat-500x2"}, [("c2s", ">=", 0.8)]),
    Row("WS presence 200x10 deliveries/CPU-s", "ws-presence-200x10", "deliveries_per_server_cpu_s",
        "fanout_p99_ms", {"c2s": "{xj}/presence-200x10"}, [("c2s", ">=", 0.8)]),
    Row("cross-door chat 50x10 msgs/CPU-s", "cross-chat-50x10", "msgs_per_server_cpu_s", "lat_p99_ms",
        {"c2s": "{xj}/chat-50x10"}, []),
    Row("WS login 2000 logins/CPU-s", "ws-login-2000", "logins_per_server_cpu_s", "lat_p99_ms",
        {"c2s": "{xj}/login-2000"}, []),
    Row("WS idle 5000 RSS KB/session", "ws-idle-5000", "rss_per_conn_kb", None,
        {"c2s": "{xj}/idle-5000"}, []),
]
#: The xmppjson variants, in table order: as shipped (SQLite, archive on), without the archive
#: (the peers' baseline configs archive nothing), and on PostgreSQL (when configured).
XJ_VARIANTS = ["xmppjson", "xmppjson-noarch", "xmppjson-pg"]


# --------------------------------------------------------------------------------------------
# servers


@dataclass
class Ctx:
    args: argparse.Namespace
    harness_py: str
    server_py: str
    workdir: str
    out: str
    results: list = field(default_factory=list)
    xj_servers: list = field(default_factory=list)  # ["xmppjson", "xmppjson-pg"?]
    code: str = bl.REPO  # the xmppjson code that runs: a snapshot of HEAD, or the working tree
    noarch: bool = False  # the code has --no-archive: also run the xmppjson-noarch variant


def xj_conf(ctx: Ctx, server: str) -> dict:
    shift = ctx.args.port_offset
    if server == "xmppjson-pg":
        return {"c2s": XJ_PG_C2S + shift, "web": XJ_PG_WEB + shift, "db": os.environ["XMPPJSON_BENCH_PG"]}
    return {"c2s": XJ_C2S + shift, "web": XJ_WEB + shift,
            "db": f"sqlite:{os.path.join(ctx.workdir, 'bench.sqlite3')}"}


def pg_pids() -> list[int]:
    """The PostgreSQL postmaster (its backends are its children) named by
    XMPPJSON_BENCH_PG_PIDFILE (its data dir's postmaster.pid), so that the database's CPU is
    counted with xmppjson's, as SQLite's is (it runs inside the xmppjson process)."""
    path = os.environ.get("XMPPJSON_BENCH_PG_PIDFILE")
    if not path:
        return []
    with open(path) as f:
        return [int(f.readline().strip())]


class Running:
    """One fresh server process for one run: xmppjson (spawned here) or a peer (server.sh)."""

    def __init__(self, ctx: Ctx, server: str):
        self.ctx, self.server = ctx, server
        self.proc = None
        self.extra_pids: list[int] = []
        if server.startswith("xmppjson"):
            c = xj_conf(ctx, server)
            extra = list(ctx.args.xmppjson_arg) + (["--no-archive"] if server == NOARCH else [])
            self.proc = bl.start_xmppjson(os.path.join(ctx.workdir, server), c["c2s"], c["web"], c["db"],
                                          ctx.args.iterations, ctx.server_py, extra=extra,
                                          name=server, code=ctx.code)
            self.pid = self.proc.pid
            self.c2s, self.web = c["c2s"], c["web"]
            if server == "xmppjson-pg":
                self.extra_pids = pg_pids()
        else:
            bl.peer("stop", server, check=False)
            bl.peer("start", server)
            self.pid = int(bl.peer("pid", server))
            self.c2s, self.web = bl.PEER_C2S[server], None
        time.sleep(ctx.args.settle)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            _prune_logs(os.path.join(self.ctx.workdir, self.server))
        else:
            bl.peer("stop", self.server, check=False)


def _prune_logs(d: str) -> None:
    """twistd rotates its log every 1 MB and keeps every file: keep only the newest few."""
    rotated = sorted((f for f in os.listdir(d) if ".log." in f and f.rsplit(".", 1)[-1].isdigit()),
                     key=lambda f: int(f.rsplit(".", 1)[-1]))
    for f in rotated[3:]:
        os.remove(os.path.join(d, f))


def _tool_argv(ctx: Ctx, run: Running, tool: str, prefix: str, label: str = "") -> list[str]:
    common = ["--host", "127.0.0.1", "--domain", bl.DOMAIN, "--password", ctx.args.password,
              "--prefix", prefix, "--timeout", "60"]
    if label:
        common += ["--label", label]
    for pid in run.extra_pids:
        common += ["--server-pid", str(pid)]
    if tool == "x":
        return [ctx.harness_py, bl.XMPPBENCH, "--port", str(run.c2s), "--server-pid", str(run.pid), *common]
    return [ctx.harness_py, bl.WSBENCH, "--xmppbench", bl.XMPPBENCH, "--port", str(run.web),
            "--c2s-port", str(run.c2s), "--server-pid", str(run.pid), *common]


def provision(ctx: Ctx, servers: list[str], scenarios: list[Scenario]) -> None:
    """Create the accounts every selected scenario needs, on every server (idempotent)."""
    need: dict = defaultdict(lambda: defaultdict(int))  # server -> prefix -> count
    for sc in scenarios:
        n = sc.quick_accounts if ctx.args.quick else sc.accounts
        for s in sc.servers:
            if s == "xmppjson":
                for xs in ctx.xj_servers:
                    need[xs][sc.prefix] = max(need[xs][sc.prefix], n)
            elif s in servers:
                need[s][sc.prefix] = max(need[s][sc.prefix], n)
    for server, prefixes in need.items():
        if server not in servers and not server.startswith("xmppjson"):
            continue
        run = Running(ctx, server)
        try:
            for prefix, n in prefixes.items():
                if server.startswith("xmppjson"):
                    argv = _tool_argv(ctx, run, "w", prefix) + ["--concurrency", "8", "provision", "--users", str(n)]
                else:
                    argv = _tool_argv(ctx, run, "x", prefix) + ["--concurrency", "20", "provision", "--users", str(n)]
                bl.log(f"== provision {server} {prefix}0..{n - 1}")
                res = bl.run_json(argv, timeout=1800)
                res.update({"kind": "provision", "server": server})
                _record(ctx, res)
                if res.get("failed") or res.get("error"):
                    raise SystemExit(f"provisioning {server} failed: {json.dumps(res)[:600]}")
                bl.log(f"   created {res.get('created')} existed {res.get('existed')} in {res.get('seconds')} s")
                if server.startswith("xmppjson") and prefix in ("ring", "wring"):
                    # rosters are door-agnostic: set the ring up once through the dialect (adaptive
                    # polling), so that no measured run (c2s or JSON) spends its setup rounds on it
                    argv = _tool_argv(ctx, run, "w", prefix) + ["rosters", "--users", str(n), "--contacts", "10"]
                    bl.log(f"== rosters {server} {prefix}: ring of {n}, 10 contacts")
                    res = bl.run_json(argv, timeout=900)
                    res.update({"kind": "provision", "server": server})
                    _record(ctx, res)
                    if res.get("error"):
                        raise SystemExit(f"roster setup on {server} failed: {json.dumps(res)[:600]}")
                    bl.log(f"   {res.get('roster_fixed')} users needed work, {res.get('setup_s')} s")
        finally:
            run.stop()


def _record(ctx: Ctx, res: dict) -> None:
    ctx.results.append(res)
    with open(ctx.out, "a") as f:
        f.write(json.dumps(res) + "\n")


def archive_dropped(log: str, start: int = 0) -> int:
    """How many messages the server said it did not archive, in its log from byte C{start}."""
    with open(log, "rb") as f:
        f.seek(start)
        text = f.read().decode("utf-8", "replace")
    found = re.findall(r"Message archive: (\d+) messages were not archived", text)
    return sum(int(n) for n in found)


def one_run(ctx: Ctx, rnd: int, sc: Scenario, server: str) -> dict:
    label = f"{server}/{sc.name}"
    bl.log(f"== {time.strftime('%H:%M:%S')} round {rnd} {label}")
    res: dict[str, Any]
    try:
        run = Running(ctx, server)
    except Exception as e:  # noqa: BLE001
        res = {"label": label, "error": f"server did not start: {e}"}
    else:
        log = os.path.join(ctx.workdir, server, f"{server}.log") if server.startswith("xmppjson") else None
        start = os.path.getsize(log) if log and os.path.exists(log) else 0
        try:
            argv = _tool_argv(ctx, run, sc.tool, sc.prefix, label) + (sc.quick if ctx.args.quick else sc.args)
            res = bl.run_json(argv, timeout=ctx.args.run_timeout, label=label)
        finally:
            run.stop()
        if log and os.path.exists(log):
            # messages the archive could not keep up with (xmppjson logs their count at shutdown)
            res["archive_dropped"] = archive_dropped(log, start)
    res.update({"kind": "run", "round": rnd, "server": server, "scenario_name": sc.name, "label": label,
                "quick": bool(ctx.args.quick)})
    _record(ctx, res)
    key = next((k for k in ("msgs_per_server_cpu_s", "deliveries_per_server_cpu_s", "logins_per_server_cpu_s",
                            "rss_per_conn_kb") if res.get(k) is not None), "result")
    extra = f" lost={res.get('lost')} dup={res.get('duplicated')}" if "lost" in res else ""
    if res.get("archive_dropped"):
        extra += f" NOT ARCHIVED={res['archive_dropped']}"
    bl.log(f"   {label}: {key}={res.get(key)} msgs/s={res.get('msgs_per_s')} server_cpu={res.get('server_cpu_pct')}% harness_cpu={res.get('harness_cpu_pct')}%{extra}"
           + (f" ERROR {res.get('error')} {res.get('first_failures', res.get('stderr', ''))}" if res.get("error") else ""))
    return res


# --------------------------------------------------------------------------------------------
# the table


def _fmt(v, metric=""):
    if v is None:
        return "–"
    if isinstance(v, float) and abs(v) < 10:
        return f"{v:.2f}"
    if isinstance(v, float) and abs(v) < 100:
        return f"{v:.1f}"
    return f"{v:,.0f}"


def table(results: list[dict]) -> str:
    """ONE Markdown table: per row and xmppjson variant, medians over rounds, and ratios taken
    within each round (A_n / B_n) whose median is shown."""
    runs: OrderedDict[str, list] = OrderedDict()
    for r in results:
        if r.get("kind") == "run":
            runs.setdefault(r["label"], []).append(r)
    if not any(lb.startswith("xmppjson") for lb in runs):
        return "(no xmppjson runs in these results)"

    def by_round(label, metric):
        return {r["round"]: r.get(metric) for r in runs.get(label, []) if r.get(metric) is not None}

    def med(label, metric):
        return bl.median(list(by_round(label, metric).values())) if label else None

    def ratio(la, lb, metric):
        a, b = by_round(la, metric), by_round(lb, metric)
        return bl.median([a[k] / b[k] for k in a if b.get(k)])

    def peer_cell(label, metric):
        if not label or label not in runs:
            return "–"
        name = label.split("/")[0]
        return _fmt(med(label, metric)) + (f" ({name})" if "-" in name else "")

    head = ["what (median of rounds)", "xmppjson variant", "xmppjson", "ejabberd", "prosody",
            "xmppjson/ejabberd", "xmppjson/prosody", "JSON door/c2s door", "p99 ms xj / ej / pr",
            "lost / dup", "runs", "target"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    shown: set[tuple[str, str]] = set()
    for xj in XJ_VARIANTS:
        for row in ROWS:
            xl = f"{xj}/{row.scenario}"
            if xl not in runs:
                continue
            refs = {k: v.replace("{xj}", xj) for k, v in row.refs.items()}
            if (("ej" in refs or "pr" in refs) and not any(v in runs for v in refs.values())
                    and (xj, row.scenario) in shown):
                continue  # these runs are already in the table; these peers were not measured
            shown.add((xj, row.scenario))
            ej, pr = refs.get("ej"), refs.get("pr")
            got = {k: ratio(xl, v, row.metric) for k, v in refs.items() if v in runs}
            cells = [row.what, xj, _fmt(med(xl, row.metric)), peer_cell(ej, row.metric), peer_cell(pr, row.metric)]
            cells += [f"{got[k]:.2f}x" if got.get(k) is not None else "–" for k in ("ej", "pr", "c2s")]
            p99s = {}
            if row.p99:
                p99s = {k: med(lb, row.p99) if lb and lb in runs else None for k, lb in (("xj", xl), ("ej", ej),
                                                                                          ("pr", pr))}
                cells.append(" / ".join(_fmt(p99s[k]) for k in ("xj", "ej", "pr")))
            else:
                cells.append("–")
            ok_runs = [r for r in runs[xl] if not r.get("error")]
            errs = len(runs[xl]) - len(ok_runs)
            if any("lost" in r for r in ok_runs):
                unarchived = sum(r.get("archive_dropped") or 0 for r in ok_runs)
                cells.append(f"{sum(r.get('lost') or 0 for r in ok_runs)} / "
                             f"{sum(r.get('duplicated') or 0 for r in ok_runs)}"
                             + (f" ({unarchived} not archived)" if unarchived else ""))
            elif any("incomplete_fanouts_at_end" in r for r in ok_runs):
                cells.append(f"{sum(r.get('incomplete_fanouts_at_end') or 0 for r in ok_runs)} incomplete fan-outs")
            else:
                cells.append("–")
            cells.append(str(len(runs[xl])) + (f" ({errs} failed)" if errs else ""))
            verdicts = []
            for col, op, x in row.targets:
                v = got.get(col)
                if v is None:
                    verdicts.append(f"{op}{x} {col}: ?")
                else:
                    verdicts.append(f"{op}{x} {col}: {'MET' if (v >= x if op == '>=' else v <= x) else 'NOT met'}")
            if p99s.get("xj") is not None and row.targets and (ej or pr):
                for k in ("ej", "pr"):
                    if p99s.get(k) is not None:
                        met = p99s["xj"] <= p99s[k]  # type: ignore[operator]
                        verdicts.append(f"p99 <= {k}: {'MET' if met else 'NOT met'}")
            cells.append("; ".join(verdicts) or "–")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=None, help="rounds (default 3, --quick 1)")
    ap.add_argument("--quick", action="store_true", help="short runs and small counts, 1 round")
    ap.add_argument("--scenarios", default=None, help="comma-separated scenario names, or 'all' (see --list)")
    ap.add_argument("--servers", default=None,
                    help="comma-separated subset of xmppjson,ejabberd,prosody,prosody-hashed,ejabberd-scram,"
                         "prosody-mam,ejabberd-mam (default: all)")
    ap.add_argument("--iterations", type=int, default=4096,
                    help="PBKDF2 iterations: xmppjson --scram-iterations and Prosody's default_iteration_count")
    ap.add_argument("--password", default=bl.PASSWORD)
    ap.add_argument("--out", default=None, help="results file (JSON lines, appended)")
    ap.add_argument("--table-out", default=None, help="also write the Markdown table to this file")
    ap.add_argument("--workdir", default=None, help="xmppjson data and logs (default: a new /tmp dir)")
    ap.add_argument("--port-offset", type=int, default=0, metavar="N",
                    help="add N to xmppjson's ports, so that two campaigns of xmppjson alone can run "
                         "at once (the peers' ports are fixed by their configs)")
    ap.add_argument("--wipe-peers", action="store_true", help="delete the peers' /tmp data first (re-provision)")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds between server start and load")
    ap.add_argument("--run-timeout", type=float, default=600.0, help="hard limit per run, seconds")
    ap.add_argument("--harness-python", default=None, help="python for the load generators (uvloop venv)")
    ap.add_argument("--server-python", default=None, help="python with twisted for xmppjson")
    ap.add_argument("--code", default="HEAD", metavar="REV|worktree",
                    help="xmppjson code to run: a commit exported to /tmp once for the whole campaign "
                         "(default HEAD: the working tree changes under a long campaign), or 'worktree'")
    ap.add_argument("--xmppjson-arg", action="append", default=[], metavar="ARG",
                    help="extra xmppjson option (repeatable), e.g. --xmppjson-arg=--stanza-rate=0 once it exists")
    ap.add_argument("--list", action="store_true", help="list scenarios and exit")
    ap.add_argument("--table", default=None, metavar="RESULTS", help="print the table of a results file and exit")
    return ap


def select(args) -> tuple[list[Scenario], list[str]]:
    if args.scenarios in (None, ""):
        scs = [s for s in SCENARIOS.values() if s.default]
    elif args.scenarios == "all":
        scs = list(SCENARIOS.values())
    else:
        names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
        unknown = [n for n in names if n not in SCENARIOS]
        if unknown:
            raise SystemExit(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}")
        scs = [SCENARIOS[n] for n in names]
    # the login row compares against the plain peers only if that scenario is selected
    all_servers = ["xmppjson", "ejabberd", "prosody", "prosody-hashed", "ejabberd-scram", "prosody-mam",
                   "ejabberd-mam"]
    servers = all_servers if not args.servers else [s.strip() for s in args.servers.split(",")]
    bad = [s for s in servers if s not in all_servers]
    if bad:
        raise SystemExit(f"unknown server(s) {bad}")
    return scs, servers


def run_plan(scs: list[Scenario], servers: list[str], xj_servers: list[str], noarch: bool,
             rounds: int) -> list[tuple[int, Scenario | None, str]]:
    """
    The campaign's runs in order, as (round, scenario, server); a (round, None, "") marks the
    start of each round.  Within a round, scenarios in the given order, each over its servers
    rotated by one per round (so no server is always first).  A JSON door scenario runs right
    after its c2s counterpart on the same xmppjson variant, so that the "JSON door / c2s door"
    ratio compares two runs a minute apart rather than runs minutes apart on a machine whose
    figures drift with other people's work.
    """
    def order(sc: Scenario, rnd: int) -> list[str]:
        servers_ = [x for s in sc.servers for x in (xj_servers if s == "xmppjson" else [s]) if
                    x in xj_servers or (x == NOARCH and noarch) or x in servers]
        k = (rnd - 1) % max(1, len(servers_))
        return servers_[k:] + servers_[:k]

    paired = {sc.name: SCENARIOS["ws-" + sc.name] for sc in scs
              if SCENARIOS.get("ws-" + sc.name) in scs}
    plan: list[tuple[int, Scenario | None, str]] = []
    for rnd in range(1, rounds + 1):
        plan.append((rnd, None, ""))
        for sc in scs:
            if sc in paired.values():
                continue
            partner = paired.get(sc.name)
            partnerServers = order(partner, rnd) if partner else []
            for server in order(sc, rnd):
                plan.append((rnd, sc, server))
                if partner and server in partnerServers:
                    plan.append((rnd, partner, server))
                    partnerServers.remove(server)
            plan.extend((rnd, partner, server) for server in partnerServers)
    return plan


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        for s in SCENARIOS.values():
            print(f"{s.name:20s} {'default' if s.default else 'optional':8s} {', '.join(s.servers):40s} {s.doc}")
        return 0
    if args.table:
        with open(args.table) as f:
            print(table([json.loads(ln) for ln in f if ln.strip()]))
        return 0
    scs, servers = select(args)
    rounds = args.rounds or (1 if args.quick else 3)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or os.path.join(bl.BENCH, "results", f"run-{stamp}{'-quick' if args.quick else ''}.jsonl")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    workdir = args.workdir or f"/tmp/xmppjson-bench-{stamp}"
    os.makedirs(workdir, exist_ok=True)
    if not os.path.exists(bl.XMPPBENCH):
        raise SystemExit(f"harness not found: {bl.XMPPBENCH} (set XMPPBENCH)")
    peers_needed = sorted({s for sc in scs for s in sc.servers if s in servers and not s.startswith("xmppjson")})
    for p in peers_needed:
        exe = "prosody" if p.startswith("prosody") else "ejabberdctl"
        if not shutil.which(exe) and not os.path.exists(f"/usr/sbin/{exe}"):
            raise SystemExit(f"{exe} is not installed: apt-get update && apt-get install -y prosody ejabberd")
    ctx = Ctx(args, args.harness_python or bl.default_harness_python(),
              args.server_python or bl.default_server_python(), workdir, out)
    ctx.xj_servers = ["xmppjson"] + (["xmppjson-pg"] if os.environ.get("XMPPJSON_BENCH_PG") else [])
    if args.code != "worktree":
        ctx.code, code_sha = bl.snapshot(args.code)
        bl.log(f"xmppjson code: {args.code} = {code_sha}, exported to {ctx.code}")
    ctx.noarch = "no-archive" in bl.xmppjson_options(ctx.server_py, ctx.code) and "xmppjson" in servers
    git = subprocess.run(["git", "-C", bl.REPO, "rev-parse", "--short", args.code if args.code != "worktree"
                          else "HEAD"], capture_output=True, text=True, check=False)
    dirty = subprocess.run(["git", "-C", bl.REPO, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, check=False).stdout.splitlines()
    _record(ctx, {"kind": "campaign", "ts": stamp, "rounds": rounds, "quick": args.quick,
                  "scenarios": [s.name for s in scs], "servers": servers, "iterations": args.iterations,
                  "git": git.stdout.strip(), "code": ctx.code,
                  "git_modified_files": len(dirty) if args.code == "worktree" else 0,
                  "xmppjson_options": [f"--{o}={v}" for o, v in bl.UNSHAPED
                                       if o in bl.xmppjson_options(ctx.server_py, ctx.code)]
                  + args.xmppjson_arg, "harness_python": ctx.harness_py, "machine": bl.machine_info()})
    bl.log(f"results -> {out}; xmppjson data -> {workdir}")
    if args.wipe_peers:
        for p in peers_needed:
            bl.peer("wipe", p, check=False)
    for p in peers_needed:
        # Only the peers this campaign runs (and only what server.sh itself started, by its
        # pid files): someone else's campaign may be using the others.
        bl.peer("stop", p, check=False)
    provision(ctx, servers, scs)

    for rnd, sc, server in run_plan(scs, servers, ctx.xj_servers, ctx.noarch, rounds):
        if sc is None:
            bl.log(f"######## round {rnd}/{rounds}")
            continue
        one_run(ctx, rnd, sc, server)
    md = table(ctx.results)
    print(md)
    if args.table_out:
        with open(args.table_out, "w") as f:
            f.write(md + "\n")
    bl.log(f"raw results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
