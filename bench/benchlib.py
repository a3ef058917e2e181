"""
Shared plumbing of bench/run.py and bench/guard.py: starting and stopping the servers under
test (always by the PID we spawned), running the load generators, and medians/ratios.

Nothing here measures anything itself: the numbers come from xmppbench.py (c2s) and wsbench.py
(the JSON door), each printing one JSON line per run.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
SHARED = os.environ.get("XMPPJSON_SHARED_BENCH", "/work/shared/bench")
XMPPBENCH = os.environ.get("XMPPBENCH", os.path.join(SHARED, "xmppbench.py"))
WSBENCH = os.path.join(BENCH, "wsbench.py")
SERVER_SH = os.path.join(BENCH, "servers", "server.sh")
DOMAIN = "bench.local"
PASSWORD = "benchpass"  # xmppjson refuses passwords shorter than 6 (the harness default pw<i> is)

# fixed loopback ports; the peers' ports are those of servers/server.sh
PEER_C2S = {"prosody": 25222, "prosody-hashed": 25222, "prosody-mam": 25222,
            "ejabberd": 29222, "ejabberd-scram": 29222, "ejabberd-mam": 29222}


def log(*a: Any) -> None:
    print(*a, file=sys.stderr, flush=True)


def default_harness_python() -> str:
    """The venv with uvloop (see the shared README) if present, else this interpreter."""
    for cand in (os.environ.get("BENCH_PY"), "/tmp/xmppbench-venv/bin/python", os.path.join(BENCH, ".venv/bin/python")):
        if cand and os.access(cand, os.X_OK):
            return cand
    return sys.executable


def default_server_python() -> str:
    """An interpreter that can import twisted (runs xmppjson and the Twisted echo router)."""
    cands = [os.environ.get("XMPPJSON_PY"), sys.executable, shutil.which("python3")]
    for cand in cands:
        if not cand:
            continue
        r = subprocess.run([cand, "-c", "import twisted, autobahn, sys; print(sys.executable)"],
                           capture_output=True, text=True, check=False)
        if r.returncode == 0:
            return r.stdout.strip()
    raise SystemExit("no python with twisted and autobahn found; set XMPPJSON_PY")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        try:
            s.connect((host, port))
            return True
        except OSError:
            return False


def wait_ports(ports: list[int], proc: subprocess.Popen | None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        if all(port_open(p) for p in ports):
            return
        time.sleep(0.1)
    raise RuntimeError(f"ports {ports} not open after {timeout}s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A server process we spawned ourselves: stopped by its own PID only."""

    def __init__(self, name: str, argv: list[str], cwd: str, env: dict | None, logpath: str, ports: list[int]):
        busy = [p for p in ports if port_open(p)]
        if busy:
            raise RuntimeError(f"cannot start {name}: 127.0.0.1 port(s) {busy} already in use by another process")
        self.name = name
        self.ports = ports
        self.logf = open(logpath, "ab")  # noqa: SIM115 - closed in stop(), outlives this call
        self.logpath = logpath
        self.p = subprocess.Popen(argv, cwd=cwd, env=env, stdout=self.logf, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_ports(ports, self.p)
        except Exception:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self.p.pid

    def stop(self, timeout: float = 15.0) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
        self.logf.close()


def snapshot(rev: str = "HEAD", base: str = "/tmp") -> tuple[str, str]:
    """Export the committed tree at C{rev} (not the working tree, which other people edit while
    a campaign runs) to C{base}/xmppjson-code-<sha>; returns (directory, short sha)."""
    sha = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", rev], capture_output=True, text=True,
                         check=True).stdout.strip()
    dest = os.path.join(base, f"xmppjson-code-{sha}")
    if not os.path.isdir(os.path.join(dest, "xmppjson")):
        os.makedirs(dest, exist_ok=True)
        archive = subprocess.Popen(["git", "-C", REPO, "archive", "--format=tar", sha], stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", dest], stdin=archive.stdout, check=True)
        archive.wait()
    return dest, sha


_options_cache: dict[tuple[str, str], set[str]] = {}


def xmppjson_options(server_py: str, code: str = REPO) -> set[str]:
    """The long option names C{twistd xmppjson} of the code in C{code} accepts."""
    key = (server_py, code)
    if key not in _options_cache:
        src = ("from xmppjson.tap import Options as O; o = O()\n"
               "print(' '.join(f[0] for f in o.optFlags + o.optParameters))")
        env = dict(os.environ, PYTHONPATH=code, PYTHONDONTWRITEBYTECODE="1")
        r = subprocess.run([server_py, "-c", src], capture_output=True, text=True, env=env, check=False, cwd="/")
        _options_cache[key] = set(r.stdout.split())
    return _options_cache[key]


# The peers run without traffic shaping (the shared configs: no ejabberd shaper, no Prosody
# mod_limits), so xmppjson's own per-session rate limit is switched off too when it has one.
UNSHAPED = [("stanza-rate", "0")]


def start_xmppjson(workdir: str, c2s: int, web: int, db: str, iterations: int, server_py: str,
                   extra: list[str] | None = None, name: str = "xmppjson", unshaped: bool = True,
                   code: str = REPO) -> Proc:
    """A fresh xmppjson process (twistd -n) on loopback, running the code in C{code} (the
    repository's working tree by default, or a L{snapshot}); its DB persists in C{db}. With
    C{unshaped}, the limits that would throttle a load generator (L{UNSHAPED}) are off."""
    os.makedirs(workdir, exist_ok=True)
    argv = [server_py, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()",
            "-n", "--pidfile=", "--logfile", os.path.join(workdir, f"{name}.log"),
            "xmppjson", "--c2s", f"tcp:{c2s}:interface=127.0.0.1", "--web", f"tcp:{web}:interface=127.0.0.1",
            "--db", db, "--allow-plaintext", "--domain", DOMAIN, "--scram-iterations", str(iterations)]
    if unshaped:
        known = xmppjson_options(server_py, code)
        argv += [f"--{opt}={val}" for opt, val in UNSHAPED if opt in known]
    argv += extra or []
    env = dict(os.environ)
    env["PYTHONPATH"] = code + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    return Proc(name, argv, workdir, env, os.path.join(workdir, f"{name}.stdout"), [c2s, web])


def start_twisted_echo(workdir: str, port: int, server_py: str) -> Proc:
    """The shared Twisted forwarder (no XML parsing): the guard's same-run baseline."""
    argv = [server_py, os.path.join(SHARED, "twisted_echo_router.py"), "--port", str(port), "--domain", DOMAIN]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    return Proc("twisted-echo", argv, workdir, env, os.path.join(workdir, "twisted-echo.log"), [port])


def peer(cmd: str, name: str, check: bool = True) -> str:
    r = subprocess.run([SERVER_SH, cmd, name], capture_output=True, text=True, check=False)
    if check and r.returncode != 0:
        raise RuntimeError(f"server.sh {cmd} {name}: {r.stdout}{r.stderr}")
    return r.stdout.strip()


def run_json(argv: list[str], timeout: float, json_out: str | None = None, label: str = "") -> dict:
    """Run one load generator invocation; return its JSON line (or an error record)."""
    t0 = time.monotonic()
    res: dict[str, Any]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        res = {"label": label, "error": f"timeout after {timeout}s"}
    else:
        line = next((ln for ln in reversed(r.stdout.splitlines()) if ln.startswith("{")), None)
        if line is None:
            res = {"label": label, "error": f"rc={r.returncode}", "stderr": r.stderr[-600:]}
        else:
            res = json.loads(line)
            if r.returncode != 0 and not res.get("error"):
                res["error"] = f"rc={r.returncode}"
    res["wall_total_s"] = round(time.monotonic() - t0, 1)
    if json_out:
        with open(json_out, "a") as f:
            f.write(json.dumps(res) + "\n")
    return res


def median(vals: list[float]) -> float | None:
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def machine_info() -> dict:
    info: dict = {"nproc": os.cpu_count()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines()
        info["lscpu"] = [ln for ln in out if ln.split(":")[0].strip() in
                         ("Architecture", "CPU(s)", "Model name", "Thread(s) per core", "CPU MHz", "Hypervisor vendor")]
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            info["mem_total_kb"] = int(f.readline().split()[1])
    except OSError:
        pass
    info["python"] = sys.version.split()[0]
    return info
