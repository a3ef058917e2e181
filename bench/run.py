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
SCENARIOS: OrderedDict[str, Scenario] = OrderedDict((s.name, s) for s in [
    Scenario("chat-50x10", "x", ["xmppjson", *PEERS, *MAM_PEERS], _chat(50, 10, 10, 2), _chat(50, 10, 4, 1),
             accounts=100, quick_accounts=100, doc="100 c2s sessions, 50 pairs, 10 in flight each"),
    Scenario("chat-500x2", "x", ["xmppjson", *PEERS, *MAM_PEERS], _chat(500, 2, 10, 2), _chat(500, 2, 4, 1),
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
    Scenario("ws-chat-50x10", "w", ["xmppjson"], _chat(50, 10, 10, 2), _chat(50, 10, 4, 1),
             accounts=100, quick_accounts=100, doc="JSON door, same shape as chat-50x10"),
    Scenario("ws-chat-500x2", "w", ["xmppjson"], _chat(500, 2, 10, 2), _chat(500, 2, 4, 1),
             accounts=1000, quick_accounts=1000, doc="JSON door, same shape as chat-500x2"),
    Scenario("ws-presence-200x10", "w", ["xmppjson"],
             ["presence", "--users", "200", "--contacts", "10", "--duration", "10", "--warmup", "2"],
             ["presence", "--users", "200", "--contacts", "10", "--duration", "4", "--warmup", "1"],
             prefix="wring", accounts=200, quick_accounts=200, doc="JSON door, rosters set up via the dialect"),
    Scenario("cross-chat-50x10", "w", ["xmppjson"],
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

# The table: (row, scenario, metric, higher_is_better, p99 metric, refs, targets).
# refs name the labels in the ejabberd / prosody / "other" columns; targets: (column, op, x).
ROWS = [
    ("chat 50x10 msgs/CPU-s", "chat-50x10", "msgs_per_server_cpu_s", "lat_p99_ms",
     {"ej": "ejabberd/chat-50x10", "pr": "prosody/chat-50x10"}, [("ej", ">=", 1.0), ("pr", ">=", 1.4)]),
    ("chat 500x2 msgs/CPU-s", "chat-500x2", "msgs_per_server_cpu_s", "lat_p99_ms",
     {"ej": "ejabberd/chat-500x2", "pr": "prosody/chat-500x2"}, [("ej", ">=", 1.0)]),
    ("chat 50x10 msgs/CPU-s, peers archiving too (mod_mam)", "chat-50x10", "msgs_per_server_cpu_s", "lat_p99_ms",
     {"ej": "ejabberd-mam/chat-50x10", "pr": "prosody-mam/chat-50x10"}, []),
    ("chat 500x2 msgs/CPU-s, peers archiving too (mod_mam)", "chat-500x2", "msgs_per_server_cpu_s", "lat_p99_ms",
     {"ej": "ejabberd-mam/chat-500x2", "pr": "prosody-mam/chat-500x2"}, []),
    ("chat 1x1 p50 latency ms", "chat-1x1", "lat_p50_ms", "lat_p99_ms",
     {"ej": "ejabberd/chat-1x1", "pr": "prosody/chat-1x1"}, []),
    ("presence 200x10 deliveries/CPU-s", "presence-200x10", "deliveries_per_server_cpu_s", "fanout_p99_ms",
     {"ej": "ejabberd/presence-200x10", "pr": "prosody/presence-200x10"}, [("ej", ">=", 1.0)]),
    ("login 2000 logins/CPU-s, equal PBKDF2", "login-2000", "logins_per_server_cpu_s", "lat_p99_ms",
     {"ej": "ejabberd-scram/login-2000", "pr": "prosody-hashed/login-2000"}, [("pr", ">=", 1.0)]),
    ("login 2000 logins/CPU-s, plain-password peers", "login-2000", "logins_per_server_cpu_s", "lat_p99_ms",
     {"ej": "ejabberd/login-2000-plain", "pr": "prosody/login-2000-plain"}, []),
    ("idle 5000 RSS KB/session", "idle-5000", "rss_per_conn_kb", None,
     {"ej": "ejabberd/idle-5000", "pr": "prosody/idle-5000"}, [("pr", "<=", 1.0)]),
    ("WS chat 50x10 msgs/CPU-s", "ws-chat-50x10", "msgs_per_server_cpu_s", "lat_p99_ms",
     {"c2s": "{xj}/chat-50x10"}, [("c2s", ">=", 0.8)]),
    ("WS chat 500x2 msgs/CPU-s", "ws-chat-500x2", "msgs_per_server_cpu_s", "lat_p99_ms",
     {"c2s": "{xj}/chat-500x2"}, [("c2s", ">=", 0.8)]),
    ("WS presence 200x10 deliveries/CPU-s", "ws-presence-200x10", "deliveries_per_server_cpu_s", "fanout_p99_ms",
     {"c2s": "{xj}/presence-200x10"}, [("c2s", ">=", 0.8)]),
    ("cross-door chat 50x10 msgs/CPU-s", "cross-chat-50x10", "msgs_per_server_cpu_s", "lat_p99_ms",
     {"c2s": "{xj}/chat-50x10"}, []),
    ("WS login 2000 logins/CPU-s", "ws-login-2000", "logins_per_server_cpu_s", "lat_p99_ms",
     {"c2s": "{xj}/login-2000"}, []),
    ("WS idle 5000 RSS KB/session", "ws-idle-5000", "rss_per_conn_kb", None,
     {"c2s": "{xj}/idle-5000"}, []),
]


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


def xj_conf(ctx: Ctx, server: str) -> dict:
    if server == "xmppjson-pg":
        return {"c2s": XJ_PG_C2S, "web": XJ_PG_WEB, "db": os.environ["XMPPJSON_BENCH_PG"]}
    return {"c2s": XJ_C2S, "web": XJ_WEB, "db": f"sqlite:{os.path.join(ctx.workdir, 'bench.sqlite3')}"}


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
            self.proc = bl.start_xmppjson(os.path.join(ctx.workdir, server), c["c2s"], c["web"], c["db"],
                                          ctx.args.iterations, ctx.server_py, extra=ctx.args.xmppjson_arg,
                                          name=server)
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


def one_run(ctx: Ctx, rnd: int, sc: Scenario, server: str) -> dict:
    label = f"{server}/{sc.name}"
    bl.log(f"== {time.strftime('%H:%M:%S')} round {rnd} {label}")
    res: dict[str, Any]
    try:
        run = Running(ctx, server)
    except Exception as e:  # noqa: BLE001
        res = {"label": label, "error": f"server did not start: {e}"}
    else:
        try:
            argv = _tool_argv(ctx, run, sc.tool, sc.prefix, label) + (sc.quick if ctx.args.quick else sc.args)
            res = bl.run_json(argv, timeout=ctx.args.run_timeout, label=label)
        finally:
            run.stop()
    res.update({"kind": "run", "round": rnd, "server": server, "scenario_name": sc.name, "label": label,
                "quick": bool(ctx.args.quick)})
    _record(ctx, res)
    key = next((k for k in ("msgs_per_server_cpu_s", "deliveries_per_server_cpu_s", "logins_per_server_cpu_s",
                            "rss_per_conn_kb") if res.get(k) is not None), "result")
    extra = f" lost={res.get('lost')} dup={res.get('duplicated')}" if "lost" in res else ""
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
    runs: OrderedDict[str, list] = OrderedDict()
    for r in results:
        if r.get("kind") == "run":
            runs.setdefault(r["label"], []).append(r)
    xjs = [x for x in ("xmppjson", "xmppjson-pg") if any(lb.startswith(x + "/") for lb in runs)]
    if not xjs:
        return "(no xmppjson runs in these results)"

    def by_round(label, metric):
        return {r["round"]: r.get(metric) for r in runs.get(label, []) if r.get(metric) is not None}

    def med(label, metric):
        return bl.median(list(by_round(label, metric).values()))

    def ratio(la, lb, metric):
        a, b = by_round(la, metric), by_round(lb, metric)
        vals = [a[k] / b[k] for k in a if b.get(k)]
        return bl.median(vals), len(vals)

    head = ["what (median of rounds)", "scenario"] + xjs + ["ejabberd", "prosody"]
    head += [f"{xjs[0]}/ejabberd", f"{xjs[0]}/prosody", "JSON door/c2s door", "p99 ms xj / ej / pr",
             "lost / dup", "n", "target"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    shown = set()
    for row, scn, metric, p99, refs, targets in ROWS:
        xl = f"{xjs[0]}/{scn}"
        if xl not in runs:
            continue
        present = [r.replace("{xj}", xjs[0]) in runs for r in refs.values()]
        if scn in shown and not any(present):
            continue  # a second comparison of the same runs, against peers not measured
        shown.add(scn)
        cells = [row, scn]
        cells += [_fmt(med(f"{x}/{scn}", metric)) for x in xjs]
        ej = refs.get("ej")
        pr = refs.get("pr")
        c2s = refs.get("c2s", "").replace("{xj}", xjs[0]) or None
        cells.append(f"{_fmt(med(ej, metric))}" + (f" ({ej.split('/')[0]})" if ej and "-" in ej.split("/")[0] else "") if ej else "–")
        cells.append(f"{_fmt(med(pr, metric))}" + (f" ({pr.split('/')[0]})" if pr and "-" in pr.split("/")[0] else "") if pr else "–")
        got = {}
        for col, ref in (("ej", ej), ("pr", pr), ("c2s", c2s)):
            if ref and ref in runs:
                v, _ = ratio(xl, ref, metric)
                got[col] = v
                cells.append(f"{v:.2f}x" if v is not None else "–")
            else:
                cells.append("–")
        p99s = {}
        if p99:
            p99s = {k: med(lb, p99) if lb and lb in runs else None for k, lb in (("xj", xl), ("ej", ej), ("pr", pr))}
            cells.append(" / ".join(_fmt(p99s[k]) for k in ("xj", "ej", "pr")))
        else:
            cells.append("–")
        ok_runs = [r for r in runs[xl] if not r.get("error")]
        errs = len(runs[xl]) - len(ok_runs)
        if any("lost" in r for r in ok_runs):
            lost = sum(r.get("lost") or 0 for r in ok_runs)
            dup = sum(r.get("duplicated") or 0 for r in ok_runs)
            cells.append(f"{lost} / {dup}")
        elif any("incomplete_fanouts_at_end" in r for r in ok_runs):
            cells.append(f"{sum(r.get('incomplete_fanouts_at_end') or 0 for r in ok_runs)} incomplete fan-outs")
        else:
            cells.append("–")
        cells.append(str(len(runs[xl])) + (f" ({errs} failed)" if errs else ""))
        verdicts = []
        for col, op, x in targets:
            v = got.get(col)
            name = {"ej": "ej", "pr": "pr", "c2s": "c2s"}[col]
            if v is None:
                verdicts.append(f"{op}{x} {name}: ?")
            else:
                ok = v >= x if op == ">=" else v <= x
                verdicts.append(f"{op}{x} {name}: {'MET' if ok else 'NOT met'}")
        if p99s.get("xj") is not None and (ej or pr) and targets:
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
    ap.add_argument("--wipe-peers", action="store_true", help="delete the peers' /tmp data first (re-provision)")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds between server start and load")
    ap.add_argument("--run-timeout", type=float, default=600.0, help="hard limit per run, seconds")
    ap.add_argument("--harness-python", default=None, help="python for the load generators (uvloop venv)")
    ap.add_argument("--server-python", default=None, help="python with twisted for xmppjson")
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
    git = subprocess.run(["git", "-C", bl.REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         check=False)
    dirty = subprocess.run(["git", "-C", bl.REPO, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, check=False).stdout.splitlines()
    _record(ctx, {"kind": "campaign", "ts": stamp, "rounds": rounds, "quick": args.quick,
                  "scenarios": [s.name for s in scs], "servers": servers, "iterations": args.iterations,
                  "git": git.stdout.strip(), "git_modified_files": len(dirty),
                  "xmppjson_options": [f"--{o}={v}" for o, v in bl.UNSHAPED
                                       if o in bl.xmppjson_options(ctx.server_py)] + args.xmppjson_arg, "harness_python": ctx.harness_py, "machine": bl.machine_info()})
    bl.log(f"results -> {out}; xmppjson data -> {workdir}")
    if args.wipe_peers:
        for p in peers_needed:
            bl.peer("wipe", p, check=False)
    for p in ("prosody", "prosody-hashed", "prosody-mam", "ejabberd", "ejabberd-scram", "ejabberd-mam"):
        bl.peer("stop", p, check=False)  # only what server.sh itself started (by its pid files)
    provision(ctx, servers, scs)
    for rnd in range(1, rounds + 1):
        bl.log(f"######## round {rnd}/{rounds}")
        for sc in scs:
            order = [x for s in sc.servers for x in (ctx.xj_servers if s == "xmppjson" else [s]) if
                     x.startswith("xmppjson") or x in servers]
            k = (rnd - 1) % max(1, len(order))
            for server in order[k:] + order[:k]:
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
