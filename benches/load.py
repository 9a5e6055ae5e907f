#!/usr/bin/env python3
"""easehook's load benchmark: one run, one machine, three servers.

  baseline   a bare warp server that reads and parses the same JSON body and
             answers 200 (examples/baseline.rs): the ceiling of the stack here
  easehook   the real daemon, durable commits on (synchronous=FULL), 100
             realistic rules, an HTTP action to a fast local sink
  webhook    adnanh/webhook (Debian package `webhook`) with an equivalent hook:
             match payload.operation, run /bin/true

Load comes from wrk (Debian package `wrk`) with a Lua script that cycles
through pre-signed callbacks with unique callIds, so no request is a
duplicate.

Scenarios:
  (a) maximum acknowledged throughput at 64 connections, beside the durable
      floor at the same load (the baseline syncing each body to a journal
      file before answering: what a durable answer alone leaves here)
  (b) a fixed ~1,000 requests/s while the destination takes 2 s per request,
      beside the floor of a durable answer here: the baseline syncing each
      body to a journal file before answering
  (c) drain: 20,000 queued deliveries sent to a fast local sink
  (d) start-up time to READY with 1,000 rules
  (e) idle RSS
  (f) a restart under ~1,000 callbacks/s (a new connection each), once on
      a socket held for the daemon as systemd's easehook.socket holds it,
      once with the daemon binding its own port: errors and the longest
      wait a client sees
  (i) history: a store holding 1,000,000 events and 2,000,000 deliveries
      (with their attempts), on the embedded store and on PostgreSQL: p50
      and p99 of 100 requests each of the console's events page filtered
      by event and user, a delivery's page and the dead-letter list, and
      the matching API calls; the store's size per event; and (a)'s load on
      that store beside an empty one, round by round
  (v) (a)'s load with two builds in turn (--binary BEFORE,AFTER), round by
      round, on the embedded store; (w) the same on PostgreSQL: what a
      change costs the request path
  (p) the PostgreSQL store (a server started here: initdb + pg_ctl, fsync
      and synchronous_commit on): (a)'s load on the embedded store, on
      PostgreSQL with one replica and with two replicas sharing the
      database, in turn; (b)'s p99 on PostgreSQL; (c)'s drain through two
      replicas, every delivery counted once at the sink

  (m) the pre-send endpoint (SPEC §16) with a 10,000-word list and the
      example moderation rules beside the bare pre-send server (examples/
      baseline with BASELINE_PRESEND_SECRET: the signature checked,
      {"valid":true}), in turn: saturation at 64 connections, p99 at 16,
      answers over budget; a 100,000-word list's start-up beside none;
      callbacks at a fixed rate alone and beside a saturating pre-send load

usage: python3 benches/load.py [--duration SECONDS] [--rounds N] [--skip-build] [--only abcdefghimpvw]
                              [--binary PATH] [--callgrind [--binary PATH,PATH…]]
Run from the repository root. Installs wrk, webhook and PostgreSQL with
apt-get when missing. Every request goes to 127.0.0.1.
"""
import argparse
import glob
import hashlib
import json
import os
import shutil
import signal
import statistics
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET = "load-secret-0123456789"
APPKEY = "bench#app"
OPS = ["add", "remove", "accept", "remote_accept", "decline", "remote_decline", "ban", "allow"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, timeout=30.0, want=200):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == want:
                    return True
        except Exception:
            pass
        time.sleep(0.002)
    raise RuntimeError(f"{url} not ready")


def wait_port(port, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.002)
    raise RuntimeError(f"port {port} not listening")


def get_json(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def rss_kib(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def written(pid):
    """Bytes the process has written with write(2) and friends so far."""
    with open(f"/proc/{pid}/io") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("wchar:"))


class LargestSize:
    """The largest size a file reaches while the `with` block runs, sampled
    every 20 ms from a thread of its own (0 while it does not exist)."""

    def __init__(self, path):
        self.path, self.largest = path, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.wait(0.02):
            try:
                self.largest = max(self.largest, os.path.getsize(self.path))
            except OSError:
                pass

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def pg_bindir():
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


def ensure_tools():
    missing = [p for p, b in (("wrk", "wrk"), ("webhook", "webhook")) if not shutil.which(b)]
    if not pg_bindir():
        missing.append("postgresql")
    if missing:
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], check=True)


def build(skip):
    if not skip:
        subprocess.run(["cargo", "build", "--release", "--bin", "easehook", "--example", "baseline"], cwd=ROOT, check=True)
    return os.path.join(ROOT, "target/release/easehook"), os.path.join(ROOT, "target/release/examples/baseline")


def signed_triples(path, n):
    """callId, security, timestamp, msg_id per line: unique, pre-signed."""
    ts = str(int(time.time() * 1000))
    with open(path, "w") as f:
        for i in range(n):
            msg_id = f"9{i:017d}"
            call_id = f"{APPKEY}_{msg_id}"
            sec = hashlib.md5((call_id + SECRET + ts).encode()).hexdigest()
            f.write(f"{call_id} {sec} {ts} {msg_id}\n")


LUA = r"""
local lines = {}
local i = 0
local delay_ms = tonumber(os.getenv("WRK_DELAY_MS") or "0")
for line in io.lines(os.getenv("WRK_CALLS")) do lines[#lines + 1] = line end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local ops = {"ban", "add", "remove", "accept", "ban", "decline", "ban", "allow"}

function init(args)
  -- Each thread starts elsewhere in the list, so no two send the same event.
  i = (offset or 0) % #lines
end

request = function()
  i = i + 1
  if i > #lines then i = 1 end
  local call_id, sec, ts, msg_id = lines[i]:match("(%S+) (%S+) (%S+) (%S+)")
  local op = ops[(i % #ops) + 1]
  local body = '{"chat_type":"roster","callId":"' .. call_id .. '","security":"' .. sec ..
    '","payload":{"operation":"' .. op .. '","status":{"error_code":"ok"}},"host":"msync@ebs-ali-beijing-msync43",' ..
    '"appkey":"bench#app","from":"bench#app_user' .. (i % 997) .. '@easemob.com","to":"peer' .. (i % 991) ..
    '","eventType":"chat","msg_id":"' .. msg_id .. '","timestamp":' .. ts .. '}'
  return wrk.format(nil, nil, nil, body)
end

if delay_ms > 0 then
  delay = function() return delay_ms end
end

local base = tonumber(os.getenv("WRK_OFFSET") or "0")
local started = 0
setup = function(thread)
  thread:set("offset", base + started * 200000)
  started = started + 1
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %f %d %d %d %d %d %d %d %d\n",
    summary.requests, summary.duration / 1e6,
    latency:percentile(50), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


PRESEND_LUA = r"""
local lines = {}
local i = 0
for line in io.lines(os.getenv("WRK_CALLS")) do lines[#lines + 1] = line end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
-- One message in twenty is a contact ad, one in twenty is masked abuse.
local texts = {}
for k = 1, 20 do texts[k] = "明天下午三点在公司楼下见面，记得带上合同和发票，谢谢 ok " .. k end
texts[7] = "想了解详情请加 微 信 abc123 联系我"
texts[13] = "你这个傻逼 别再发了"
function init(args)
  i = (offset or 0) % #lines
end
request = function()
  i = i + 1
  if i > #lines then i = 1 end
  local call_id, sec, ts, msg_id = lines[i]:match("(%S+) (%S+) (%S+) (%S+)")
  -- As many senders as a busy app has in ten seconds: the flood rule
  -- holds the odd fast one, not everyone.
  local body = '{"callId":"' .. call_id .. '","timestamp":' .. ts .. ',"chat_type":"chat","from":"user' ..
    (i % 100003) .. '","to":"peer' .. (i % 991) .. '","msg_id":"' .. msg_id ..
    '","securityVersion":"1.0.0","security":"' .. sec .. '","payload":{"msg":"' .. texts[(i % 20) + 1] .. '","type":"txt"}}'
  return wrk.format(nil, nil, nil, body)
end
local base = tonumber(os.getenv("WRK_OFFSET") or "0")
local started = 0
setup = function(thread)
  thread:set("offset", base + started * 200000)
  started = started + 1
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %f %d %d %d %d %d %d %d %d\n",
    summary.requests, summary.duration / 1e6,
    latency:percentile(50), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def run_wrk(url, calls, duration, connections=64, threads=2, delay_ms=0, pid=None, offset=0, lua=None):
    """Runs wrk; returns a dict of figures. Samples the server's peak RSS."""
    env = dict(os.environ, WRK_CALLS=calls, WRK_DELAY_MS=str(delay_ms), WRK_OFFSET=str(offset))
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(lua or LUA)
        script = f.name
    written_before = written(pid) if pid else 0
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s", "--timeout", "10s", "-s", script, url]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    os.unlink(script)
    line = next((l for l in p.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {p.stdout}\n{p.stderr}")
    v = line.split()[1:]
    reqs, secs = int(v[0]), float(v[1])
    errors = sum(int(x) for x in v[5:])
    return {
        "rps": reqs / secs,
        "p50_ms": int(v[2]) / 1000,
        "p99_ms": int(v[3]) / 1000,
        "max_ms": int(v[4]) / 1000,
        "errors": errors,
        "requests": reqs,
        "peak_rss_mb": rss_kib(pid, "VmHWM") / 1024 if pid else 0,
        # Store writes (WAL frames, checkpoints) and log lines, per request.
        "written_kb": (written(pid) - written_before) / max(reqs, 1) / 1024 if pid else 0,
    }


# (g): the rule that replaces the first routing rule, so that the set still
# holds 100 rules and every ban counts toward it besides what it did before.
MANY_EVENT_RULES = {
    "digest": "{name: ban-digest, when: {event: roster:ban}, digest: {window: 10m, by: [appkey]}, actions: [audit]}",
    "threshold": "{name: likely-spammer, when: {event: roster:ban}, threshold: {count: 5, within: 1h, by: [to], distinct: from}, actions: [audit]}",
}


def rules_yaml(n, sink_url, extra_action="", routine="note", first=None):
    """100 realistic rules; `routine` is the action of the routing rules (a
    log line by default; the drain scenario sends everything to the sink);
    `first` replaces the first routing rule (a digest or threshold rule)."""
    s = "actions:\n"
    s += f"  audit:\n    type: http\n    url: '{sink_url}/audit/{{{{event}}}}'\n    json: {{event: '{{{{event}}}}', user: '{{{{from_user}}}}', target: '{{{{to_user}}}}', at: '{{{{time}}}}'}}\n"
    s += "  note: {type: log, level: debug, message: '{{event}} {{from_user}}'}\n"
    s += extra_action
    s += "rules:\n"
    for i in range(n - 2):
        op = OPS[i % len(OPS)]
        k = i % 4
        if k == 0:
            when = f"{{event: 'roster:{op}', from: user{i}}}"
        elif k == 1:
            when = f"{{event: 'roster:{op}', appkey: 'org{i}#app'}}"
        elif k == 2:
            when = f"{{event: 'roster:{op}', to: [peer{i}, vip{i}], payload.status.error_code: ok}}"
        else:
            when = f"{{event: fam{i}, eventType: [chat, chat_offline]}}"
        if i == 0 and first:
            s += f"  - {first}\n"
            continue
        s += f"  - {{name: r{i}, when: {when}, actions: [{routine}]}}\n"
    s += "  - {name: ban-audit, when: {event: roster:ban, eventType: [chat, chat_offline]}, unless: {from: 'test_*'}, actions: [audit]}\n"
    s += f"  - {{name: roster-all, when: {{event: roster}}, actions: [{routine}]}}\n"
    return s


class Easehook:
    def __init__(self, binary, workdir, rules, extra_config=""):
        self.dir = workdir
        self.port, self.admin = free_port(), free_port()
        os.makedirs(os.path.join(workdir, "rules"), exist_ok=True)
        os.makedirs(os.path.join(workdir, "templates"), exist_ok=True)
        with open(os.path.join(workdir, "rules", "rules.yaml"), "w") as f:
            f.write(rules)
        self.config = os.path.join(workdir, "easehook.yaml")
        with open(self.config, "w") as f:
            f.write(
                f'listen: 127.0.0.1:{self.port}\nadmin_listen: 127.0.0.1:{self.admin}\n'
                f'secrets: {{"{APPKEY}": ["{SECRET}"]}}\nstate_dir: {workdir}/data\nlog_format: json\n{extra_config}'
            )
        self.binary = binary
        self.proc = None

    def start(self, socket_fd=None):
        """Starts the daemon; with `socket_fd`, passes that socket as fd 3
        the way systemd does (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES)
        instead of letting it bind `listen`. Returns the time to READY."""
        t0 = time.monotonic()
        cmd = [self.binary, "--config", self.config, "run"]
        env = dict(os.environ, RUST_LOG="warn")
        extra = {}
        if socket_fd is not None:
            # LISTEN_PID must be the daemon's own pid: the shell sets it to
            # its own, then becomes the daemon.
            cmd = ["/bin/sh", "-c", 'LISTEN_PID=$$ exec "$0" "$@"'] + cmd
            env.update(LISTEN_FDS="1", LISTEN_FDNAMES="callback")
            extra = dict(pass_fds=(socket_fd,), preexec_fn=lambda: os.dup2(socket_fd, 3))
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, **extra)
        wait_http(f"http://127.0.0.1:{self.admin}/readyz")
        return time.monotonic() - t0

    def stop(self):
        if self.proc:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
            self.proc = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/easemob/callback"

    def status(self):
        return get_json(f"http://127.0.0.1:{self.admin}/api/v1/status")


class Postgres:
    """A PostgreSQL server of the benchmark's own: initdb into a temporary
    directory and pg_ctl start on a free loopback port, as the tests do. As
    root it runs as the postgres user (PostgreSQL refuses root). Durable as
    installed: fsync and synchronous_commit on."""

    def __init__(self):
        self.bin = pg_bindir()
        self.dir = tempfile.mkdtemp(prefix="easehook-bench-pg-")
        self.port = free_port()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.dir, "postgres", "postgres")
        data = os.path.join(self.dir, "data")
        subprocess.run(self.as_user + [f"{self.bin}/initdb", "-D", data, "-U", "easehook", "--auth=trust",
                                       "-E", "UTF8", "--locale=C"], check=True, stdout=subprocess.DEVNULL)
        with open(os.path.join(data, "postgresql.conf"), "a") as f:
            f.write(f"port = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.dir}'\n"
                    "max_connections = 200\nshared_buffers = 256MB\n")
        subprocess.run(self.as_user + [f"{self.bin}/pg_ctl", "-D", data, "-l", os.path.join(self.dir, "log"), "-w", "start"],
                       check=True, stdout=subprocess.DEVNULL)

    def database(self, name):
        subprocess.run([f"{self.bin}/createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "easehook", name], check=True)
        return f"postgres://easehook@127.0.0.1:{self.port}/{name}"

    def stop(self):
        subprocess.run(self.as_user + [f"{self.bin}/pg_ctl", "-D", os.path.join(self.dir, "data"), "-m", "fast", "-w", "stop"],
                       stdout=subprocess.DEVNULL)
        shutil.rmtree(self.dir, ignore_errors=True)


def pg_config(url):
    return f"store:\n  type: postgres\n  url: '{url}'\n"


def run_wrk_split(urls, calls, duration, pids, delay_ms=0):
    """wrk against several replicas at once, the 64 connections split
    between them; returns the summed figures (the worst latencies)."""
    out = [None] * len(urls)

    def one(i):
        out[i] = run_wrk(urls[i], calls, duration, connections=64 // len(urls), threads=1,
                         delay_ms=delay_ms, pid=pids[i], offset=i * 100_000 + 50_000)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(urls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {
        "rps": sum(r["rps"] for r in out),
        "p50_ms": max(r["p50_ms"] for r in out),
        "p99_ms": max(r["p99_ms"] for r in out),
        "max_ms": max(r["max_ms"] for r in out),
        "errors": sum(r["errors"] for r in out),
        "requests": sum(r["requests"] for r in out),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in out),
        "written_kb": 0,
    }


def run_floor(binary, journal, calls, duration, delay_ms=0):
    """Runs wrk against the durable floor (the baseline with `journal`),
    stops it and removes its journal; returns run_wrk's figures."""
    floor, port = start_baseline(binary, journal=journal)
    res = run_wrk(f"http://127.0.0.1:{port}/", calls, duration, delay_ms=delay_ms, pid=floor.pid)
    floor.terminate()
    floor.wait()
    os.remove(journal)
    return res


def start_baseline(binary, delay_ms=0, journal=None):
    """The baseline (or, with `journal`, the durable floor: each body
    written to that file, a ring written in full first, and synced before
    the answer)."""
    port = free_port()
    cmd = [binary, str(port), str(delay_ms)] + ([journal] if journal else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port


def start_webhook(workdir):
    port = free_port()
    hooks = os.path.join(workdir, "hooks.json")
    with open(hooks, "w") as f:
        json.dump([{
            "id": "easemob",
            "execute-command": "/bin/true",
            "response-message": "ok",
            "trigger-rule": {"match": {"type": "value", "value": "ban",
                                        "parameter": {"source": "payload", "name": "payload.operation"}}},
        }], f)
    proc = subprocess.Popen(["webhook", "-hooks", hooks, "-ip", "127.0.0.1", "-port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, f"http://127.0.0.1:{port}/hooks/easemob"


def restart_under_load(eh, rate, seconds, restart_at, socket_fd=None):
    """Sends `rate` signed callbacks a second for `seconds`, each on a new
    connection, and restarts the daemon (SIGTERM, wait for its exit, start
    it again) `restart_at` seconds in. Returns the outcomes and the time the
    restart took from SIGTERM to READY."""
    import asyncio

    ts = str(int(time.time() * 1000))
    outcomes = {"ok": 0, "refused": 0, "reset": 0, "other": 0}
    waits = []
    restart = {}

    def body(i):
        msg_id = f"8{i:017d}"
        call_id = f"{APPKEY}_{msg_id}"
        sec = hashlib.md5((call_id + SECRET + ts).encode()).hexdigest()
        b = json.dumps({"chat_type": "roster", "callId": call_id, "security": sec,
                        "payload": {"operation": "ban", "status": {"error_code": "ok"}},
                        "appkey": APPKEY, "from": f"{APPKEY}_u{i % 997}@easemob.com", "to": f"p{i % 991}",
                        "eventType": "chat", "msg_id": msg_id, "timestamp": int(ts)}).encode()
        return (f"POST /easemob/callback HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(b)}\r\nConnection: close\r\n\r\n").encode() + b

    async def one(i):
        t0 = time.monotonic()
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", eh.port), 30)
            w.write(body(i))
            await w.drain()
            head = await asyncio.wait_for(r.readline(), 30)
            w.close()
            if head.startswith(b"HTTP/1.1 200"):
                outcomes["ok"] += 1
            elif not head:
                outcomes["reset"] += 1
            else:
                outcomes["other"] += 1
        except ConnectionRefusedError:
            outcomes["refused"] += 1
        except (ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError):
            outcomes["reset"] += 1
        except Exception:
            outcomes["other"] += 1
        waits.append(time.monotonic() - t0)

    def restarter():
        time.sleep(restart_at)
        t0 = time.monotonic()
        eh.stop()
        eh.start(socket_fd)
        restart["seconds"] = time.monotonic() - t0

    async def drive():
        t = threading.Thread(target=restarter)
        t.start()
        tasks, start = [], time.monotonic()
        for i in range(rate * seconds):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
        await asyncio.to_thread(t.join)

    asyncio.run(drive())
    return outcomes, max(waits), restart["seconds"]


def fmt_row(name, r):
    return (f"| {name:<10} | {r['rps']:>9.0f} | {r['p50_ms']:>7.2f} | {r['p99_ms']:>7.2f} | {r['max_ms']:>8.2f} "
            f"| {r['errors']:>6} | {r['peak_rss_mb']:>7.1f} |")


def callgrind_run(cmd, url, calls, ready_url, seconds, status=None):
    """Runs `cmd` under callgrind with a light steady load (wrk -c8) and
    returns (requests, {thread name: instructions}). With `status`, waits
    for the delivery queue to drain first, so every request's deliveries
    are counted."""
    out = tempfile.mkdtemp(prefix="easehook-cg-")
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--separate-threads=yes", f"--callgrind-out-file={out}/cg", *cmd],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, RUST_LOG="warn"),
    )
    if ready_url:
        wait_http(ready_url, timeout=120)
    else:
        wait_port(int(url.split(":")[2].split("/")[0]), timeout=120)
    r = run_wrk(url, calls, seconds, connections=8)
    deadline = time.monotonic() + 300
    while status and time.monotonic() < deadline and status().get("queue_depth", 1) != 0:
        time.sleep(0.5)
    # callgrind numbers threads in the order they were created, as are tids.
    names = []
    for tid in sorted(int(t) for t in os.listdir(f"/proc/{proc.pid}/task")):
        with open(f"/proc/{proc.pid}/task/{tid}/comm") as f:
            names.append(f.read().strip())
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    by_name = {}
    for fname in os.listdir(out):
        if "-" not in fname:
            continue  # not one thread's file
        n = int(fname.rsplit("-", 1)[1])
        with open(os.path.join(out, fname)) as f:
            total = next(int(l.split()[1]) for l in f if l.startswith(("summary:", "totals:")))
        name = "main (start-up)" if n == 1 else names[n - 1] if n - 1 < len(names) else "exited"
        by_name[name] = by_name.get(name, 0) + total
    shutil.rmtree(out, ignore_errors=True)
    return r["requests"], by_name


def callgrind_report(easehook_bins, baseline_bin, calls, seconds):
    """Instructions per acknowledged callback, counted by callgrind: the same
    for the same binaries and load whatever else the machine is doing. The
    counts move with how commits batch, which moves with how fast valgrind
    lets the daemon run; builds to compare are counted in one sitting, one
    after the other."""
    counted = []
    for b in easehook_bins:
        sink, sink_port = start_baseline(baseline_bin)
        eh = Easehook(b, tempfile.mkdtemp(prefix="easehook-cg-eh-"), rules_yaml(100, f"http://127.0.0.1:{sink_port}"))
        n, threads = callgrind_run([b, "--config", eh.config, "run"], eh.url, calls,
                                   f"http://127.0.0.1:{eh.admin}/readyz", seconds, status=eh.status)
        sink.terminate()
        threads["easehook (all but start-up)"] = sum(v for k, v in threads.items() if k != "main (start-up)")
        counted.append((n, threads))
    port = free_port()
    bn, bthreads = callgrind_run([baseline_bin, str(port), "0"], f"http://127.0.0.1:{port}/", calls, None, seconds)
    base = sum(v for k, v in bthreads.items() if k != "main (start-up)") / bn
    print(f"instructions per callback (callgrind, wrk -c8 for {seconds}s, deliveries drained):")
    names = sorted({k for _, t in counted for k in t}, key=lambda k: -counted[0][1].get(k, 0))
    names.remove("easehook (all but start-up)")
    names.append("easehook (all but start-up)")
    print(f"  {'':28s}" + "".join(f" {os.path.basename(b)[-16:]:>16s}" for b in easehook_bins))
    for name in names:
        print(f"  {name:28s}" + "".join(f" {t.get(name, 0) / n:16,.0f}" for n, t in counted))
    print(f"  {'callbacks counted':28s}" + "".join(f" {n:16,}" for n, _ in counted))
    print(f"  baseline: {base:,.0f} per request over {bn} requests")
    print(f"  {'easehook/baseline':28s}" + "".join(
        f" {t['easehook (all but start-up)'] / n / base:16.2f}" for n, t in counted))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of (a) and (b); in (a) each server runs once per round")
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--only", default="abcdef", help="the scenarios to run, e.g. 'a' or 'bc'")
    ap.add_argument("--binary", help="the easehook binary to measure (default: the release build); "
                    "with --callgrind, several separated by commas, counted one after the other")
    ap.add_argument("--callgrind", action="store_true",
                    help="instead of the scenarios: count instructions per callback with callgrind")
    args = ap.parse_args()
    ensure_tools()
    easehook_bin, baseline_bin = build(args.skip_build)
    binaries = [os.path.abspath(b) for b in args.binary.split(",")] if args.binary else [easehook_bin]
    if len(binaries) > 1 and not (args.callgrind or set(args.only) <= set("vw")):
        sys.exit("several binaries are compared with --callgrind or --only v / w only")
    easehook_bin = binaries[0]
    work = tempfile.mkdtemp(prefix="easehook-load-")
    calls = os.path.join(work, "calls.txt")
    signed_triples(calls, 400_000)
    if args.callgrind:
        callgrind_report(binaries, baseline_bin, calls, 15)
        shutil.rmtree(work, ignore_errors=True)
        return
    print(f"machine: {os.cpu_count()} cores; duration {args.duration}s per run; wrk -t2 -c64", flush=True)

    sink, sink_port = start_baseline(baseline_bin)
    idle_rss = None

    # (a) throughput: baseline, durable floor, easehook, webhook — same load,
    # same run.
    if "a" in args.only:
        # The servers take turns, round after round: the host's load
        # drifts over minutes, and a ratio is only as good as the baseline
        # measured next to it. Each round's easehook starts on a new store,
        # so no callback of an earlier round is a duplicate.
        rounds = []
        for r in range(args.rounds):
            res = {}
            base, base_port = start_baseline(baseline_bin)
            res["baseline"] = run_wrk(f"http://127.0.0.1:{base_port}/", calls, args.duration, pid=base.pid)
            base.terminate()
            # The floor of a durable acknowledgement at this load: the
            # baseline doing nothing more than writing each body to a file
            # and syncing it, one sync per group, before answering.
            res["floor"] = run_floor(baseline_bin, os.path.join(work, "journal"), calls, args.duration)
            eh = Easehook(easehook_bin, os.path.join(work, f"a{r}"), rules_yaml(100, f"http://127.0.0.1:{sink_port}"))
            eh.start()
            if idle_rss is None:
                idle_rss = rss_kib(eh.proc.pid) / 1024
            # The WAL must start over under a load that never lets the
            # writer idle, instead of growing for as long as it lasts.
            with LargestSize(os.path.join(eh.dir, "data", "easehook.db-wal")) as wal:
                res["easehook"] = run_wrk(eh.url, calls, args.duration, pid=eh.proc.pid)
            res["wal_mb"] = wal.largest / 1e6
            # Deliveries run below the request path's priority: what they
            # had not done when the load stopped is still queued.
            res["queued"] = eh.status()["queue_depth"]
            eh.stop()
            wh, wh_url = start_webhook(work)
            res["webhook"] = run_wrk(wh_url, calls, args.duration, pid=wh.pid)
            wh.terminate()
            rounds.append(res)
        print(f"\n(a) maximum acknowledged throughput, 64 connections; {args.rounds} rounds, the servers in turn")
        print("| round | server     |     req/s | p50 ms  | p99 ms  | max ms   | errors | peak RSS MB |")
        print("|-------|------------|-----------|---------|---------|----------|--------|---------|")
        for i, res in enumerate(rounds):
            for k in ("baseline", "floor", "easehook", "webhook"):
                print(f"| {i + 1:>5} " + fmt_row(k, res[k]))
        ra = [res["easehook"]["rps"] / res["baseline"]["rps"] for res in rounds]
        rw = [res["easehook"]["rps"] / res["webhook"]["rps"] for res in rounds]
        rf = [res["floor"]["rps"] / res["baseline"]["rps"] for res in rounds]
        ef = [res["easehook"]["rps"] / res["floor"]["rps"] for res in rounds]
        kb = [res["easehook"]["written_kb"] for res in rounds]
        each = lambda xs: " ".join(f"{x:.2f}" for x in xs)
        print(f"easehook/baseline = {statistics.median(ra):.2f} (median; rounds: {each(ra)})")
        print(f"easehook/webhook  = {statistics.median(rw):.2f} (median; rounds: {each(rw)})")
        print(f"durable floor/baseline = {statistics.median(rf):.2f}, easehook/floor = {statistics.median(ef):.2f} "
              f"(medians; rounds: {each(rf)}; {each(ef)})")
        print(f"easehook wrote {statistics.median(kb):.1f} KB per callback during a round (median); "
              "its WAL reached " + ", ".join(f"{res['wal_mb']:.1f}" for res in rounds) + " MB at most")
        print("easehook's queue when the load stopped: " + ", ".join(
            f"{res['queued']:,} deliveries for {res['easehook']['requests']:,} callbacks" for res in rounds), flush=True)

    # (b) fixed ~1,000 req/s (64 connections, 64 ms between requests each)
    # while every delivery takes 2 s at the destination. Each round first
    # measures the floor of a durable acknowledgement on this machine: the
    # baseline writing each body to a journal on the same file system and
    # syncing it (group commit) before answering.
    if "b" in args.only:
        slow, slow_port = start_baseline(baseline_bin, delay_ms=2000)
        print("\n(b) ~1,000 req/s while the destination takes 2 s per request")
        p99s, floors = [], []
        for r in range(args.rounds):
            # What earlier runs left in the page cache is written back now,
            # not during the measurement, where it would slow every sync.
            os.sync()
            rf = run_floor(baseline_bin, os.path.join(work, "journal"), calls, args.duration, delay_ms=64)
            floors.append(rf["p99_ms"])
            print(f"round {r + 1}: durable floor: p50 {rf['p50_ms']:.2f} ms  p99 {rf['p99_ms']:.2f} ms  max {rf['max_ms']:.2f} ms  errors {rf['errors']}", flush=True)
            os.sync()
            eh = Easehook(easehook_bin, os.path.join(work, f"b{r}"), rules_yaml(100, f"http://127.0.0.1:{slow_port}"))
            eh.start()
            rb = run_wrk(eh.url, calls, args.duration, delay_ms=64, pid=eh.proc.pid)
            eh.stop()
            p99s.append(rb["p99_ms"])
            print(f"round {r + 1}: easehook: req/s {rb['rps']:.0f}  p50 {rb['p50_ms']:.2f} ms  p99 {rb['p99_ms']:.2f} ms  max {rb['max_ms']:.2f} ms  errors {rb['errors']}  peak RSS {rb['peak_rss_mb']:.1f} MB  written {rb['written_kb']:.1f} KB per callback", flush=True)
        slow.terminate()
        each = " ".join(f"{e / f:.2f}" for e, f in zip(p99s, floors))
        print(f"p99 = {statistics.median(p99s):.2f} ms (median of {args.rounds} rounds); durable floor {statistics.median(floors):.2f} ms; easehook/floor by round: {each}", flush=True)

    # (c) drain: queue 20,000 deliveries while the destination is down, then
    # bring it up and restart the daemon; measure deliveries/s at the sink.
    if "c" in args.only:
        down_port = free_port()
        cdir = os.path.join(work, "c")
        extra = "delivery:\n  initial_backoff: 1s\n  max_backoff: 2s\n  max_attempts: 100\n"
        eh = Easehook(easehook_bin, cdir, rules_yaml(100, f"http://127.0.0.1:{down_port}", routine="audit"), extra)
        eh.start()
        queued, offset = 0, 0
        while queued < 20_000:
            run_wrk(eh.url, calls, 2, pid=eh.proc.pid, offset=offset)
            offset += 50_000
            queued = eh.status()["queue_depth"]
        eh.stop()
        drain_sink = subprocess.Popen([baseline_bin, str(down_port), "0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(down_port)
        eh.start()
        deadline = time.monotonic() + 600
        while eh.status()["queue_depth"] > 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        stats = get_json(f"http://127.0.0.1:{down_port}/stats")
        dead = eh.status()["dead_deliveries"]
        eh.stop()
        drain_sink.terminate()
        span = max(stats["last_ms"] - stats["first_ms"], 1) / 1000
        drain_rate = stats["count"] / span
        print(f"\n(c) drain: {queued} queued, {stats['count']} delivered ({dead} dead) in {span:.2f} s = {drain_rate:.0f} deliveries/s", flush=True)

    # (d) start-up to READY with 1,000 rules.
    if "d" in args.only:
        starts = []
        for i in range(5):
            eh = Easehook(easehook_bin, os.path.join(work, f"d{i}"), rules_yaml(1000, f"http://127.0.0.1:{sink_port}"))
            starts.append(eh.start())
            eh.stop()
        print(f"\n(d) start-up to READY with 1,000 rules: median {sorted(starts)[2] * 1000:.0f} ms (of 5)")

    # (e) idle RSS: 100 rules, after start (measured before the load of (a)).
    if "e" in args.only:
        if idle_rss is None:
            eh = Easehook(easehook_bin, os.path.join(work, "e"), rules_yaml(100, f"http://127.0.0.1:{sink_port}"))
            eh.start()
            idle_rss = rss_kib(eh.proc.pid) / 1024
            eh.stop()
        print(f"(e) idle RSS (100 rules, after start): {idle_rss:.1f} MB")

    # (f) a restart under ~1,000 callbacks/s: on a socket held for the
    # daemon (as easehook.socket is by systemd), then with the daemon
    # binding its own port, in the same run.
    if "f" in args.only:
        print("\n(f) a restart (SIGTERM, exit, start) under 1,000 callbacks/s, a new connection each")
        print("| listener | callbacks | 200 | refused | reset | other | longest wait ms | SIGTERM to READY ms |")
        print("|----------|-----------|-----|---------|-------|-------|-----------------|---------------------|")
        for mode in ("socket", "bound"):
            eh = Easehook(easehook_bin, os.path.join(work, f"f-{mode}"), rules_yaml(100, f"http://127.0.0.1:{sink_port}"))
            held = None
            if mode == "socket":
                held = socket.socket()
                held.bind(("127.0.0.1", eh.port))
                held.listen(4096)
            eh.start(held.fileno() if held else None)
            out, longest, took = restart_under_load(eh, 1000, 8, 3, held.fileno() if held else None)
            eh.stop()
            if held:
                held.close()
            total = sum(out.values())
            print(f"| {mode:<8} | {total:>9} | {out['ok']:>3} | {out['refused']:>7} | {out['reset']:>5} | {out['other']:>5} "
                  f"| {longest * 1000:>15.0f} | {took * 1000:>19.0f} |", flush=True)
    # (g) (a)'s load with one of the 100 rules a digest, or a threshold,
    # that every ban counts toward: easehook against itself with the plain
    # rule set, round by round.
    if "g" in args.only:
        rounds = []
        for r in range(args.rounds):
            res = {}
            for kind in ("plain", "digest", "threshold"):
                rules = rules_yaml(100, f"http://127.0.0.1:{sink_port}", first=MANY_EVENT_RULES.get(kind))
                eh = Easehook(easehook_bin, os.path.join(work, f"g-{kind}{r}"), rules)
                eh.start()
                res[kind] = run_wrk(eh.url, calls, args.duration, pid=eh.proc.pid)
                if kind != "plain":
                    res[kind + "_groups"] = len(get_json(f"http://127.0.0.1:{eh.admin}/api/v1/digests")["groups"])
                eh.stop()
            rounds.append(res)
        print("\n(g) (a)'s load, one of the 100 rules a digest or a threshold every ban counts toward")
        print("| round | rule set   |     req/s | p50 ms  | p99 ms  | max ms   | errors | peak RSS MB |")
        print("|-------|------------|-----------|---------|---------|----------|--------|---------|")
        for i, res in enumerate(rounds):
            for k in ("plain", "digest", "threshold"):
                print(f"| {i + 1:>5} " + fmt_row(k, res[k]))
        each = lambda xs: " ".join(f"{x:.2f}" for x in xs)
        for kind in ("digest", "threshold"):
            rs = [res[kind]["rps"] / res["plain"]["rps"] for res in rounds]
            print(f"{kind}/plain = {statistics.median(rs):.2f} (median; rounds: {each(rs)}); "
                  f"groups open or counting at the end: {', '.join(str(res[kind + '_groups']) for res in rounds)}", flush=True)
    # (h) backtest: 100,000 stored events evaluated against the same 100
    # rules through the admin API (`easehook test --since`).
    if "h" in args.only:
        eh = Easehook(easehook_bin, os.path.join(work, "h"), rules_yaml(100, f"http://127.0.0.1:{sink_port}"))
        eh.start()
        offset = 0
        while eh.status()["callbacks_accepted"] < 100_000:
            run_wrk(eh.url, calls, 2, pid=eh.proc.pid, offset=offset)
            offset += 50_000
        stored = eh.status()["callbacks_accepted"]
        times = []
        for _ in range(3):
            t0 = time.monotonic()
            p = subprocess.run([easehook_bin, "--config", eh.config, "test", "--since", "1h", "--json"],
                               capture_output=True, text=True)
            times.append(time.monotonic() - t0)
            if p.returncode != 0:
                raise RuntimeError(f"backtest failed: {p.stdout}\n{p.stderr}")
            events = json.loads(p.stdout)["events"]
        eh.stop()
        best = sorted(times)[1]
        print(f"\n(h) backtest of {events:,} stored events (of {stored:,} acknowledged) against 100 rules: "
              f"median {best:.2f} s of 3 ({events / best:,.0f} events/s)", flush=True)
    if "i" in args.only:
        history_scenarios(args, easehook_bin, calls, work, sink_port)
    for store in ("v", "w"):
        if store in args.only:
            if len(binaries) != 2:
                sys.exit(f"--only {store} compares two builds: --binary BEFORE,AFTER")
            builds_scenario(args, binaries, store == "w", calls, work, sink_port)
    if "m" in args.only:
        presend_scenarios(args, easehook_bin, baseline_bin, calls, work, sink_port)
    if "p" in args.only:
        postgres_scenarios(args, easehook_bin, baseline_bin, calls, work, sink_port)
    sink.terminate()
    shutil.rmtree(work, ignore_errors=True)


def word_list(path, n):
    """`n` words, as a list file: three-character Chinese words and one in
    eight an ASCII word, with the contact words of the example rules."""
    import random
    g = random.Random(7)
    with open(path, "w") as f:
        f.write("加微信\nvx\n")
        for i in range(n):
            if i % 8 == 0:
                f.write("".join(chr(97 + g.randrange(26)) for _ in range(6)) + "\n")
            else:
                f.write("".join(chr(0x4E00 + g.randrange(0x51A5)) for _ in range(3)) + "\n")


PRESEND_RULES = """moderation:
  - {name: staff-pass, when: {from: "staff_*"}, verdict: pass}
  - {name: no-contact-ads, when: {chat_type: [chat, groupchat, group], message.type: txt}, contains: contact, verdict: reject, code: "HX:10001"}
  - {name: no-phone-numbers, when: {message.text: {regex: '.*1[3-9][0-9]{9}.*'}}, verdict: reject, code: "HX:10002"}
  - {name: mask-abuse, contains: abuse, verdict: rewrite}
  - {name: flood, threshold: {count: 20, within: 10s, by: [from]}, verdict: reject, code: TOO_FAST}
"""


def presend_config(words_file):
    return ("presend:\n  budget: 150ms\n  word_lists:\n"
            f"    contact: {{file: {words_file}}}\n    abuse: {{words: ['傻逼', 'fuck']}}\n")


def metric(admin, name):
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10).read().decode()
    return sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith(name + " ") or l.startswith(name + "{"))


def presend_scenarios(args, easehook_bin, baseline_bin, calls, work, sink_port):
    words10k = os.path.join(work, "words10k.txt")
    word_list(words10k, 10_000)
    words100k = os.path.join(work, "words100k.txt")
    word_list(words100k, 100_000)
    rules = rules_yaml(100, f"http://127.0.0.1:{sink_port}") + PRESEND_RULES
    # (p1) saturation, (p2) p99 at 16 connections: the two servers in turn.
    rounds = []
    for r in range(args.rounds):
        res = {}
        env = dict(os.environ, BASELINE_PRESEND_SECRET=SECRET)
        port = free_port()
        base = subprocess.Popen([baseline_bin, str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(port)
        res["baseline"] = run_wrk(f"http://127.0.0.1:{port}/", calls, args.duration, pid=base.pid, lua=PRESEND_LUA)
        base.terminate()
        base.wait()
        eh = Easehook(easehook_bin, os.path.join(work, f"m{r}"), rules, presend_config(words10k))
        eh.start()
        url = f"http://127.0.0.1:{eh.port}/easemob/presend"
        res["easehook"] = run_wrk(url, calls, args.duration, pid=eh.proc.pid, lua=PRESEND_LUA)
        res["easehook16"] = run_wrk(url, calls, args.duration, connections=16, pid=eh.proc.pid, lua=PRESEND_LUA, offset=150_000)
        res["over_budget"] = metric(eh.admin, "easehook_presend_over_budget_total")
        res["errors_counted"] = metric(eh.admin, 'easehook_presend_requests_total{verdict="error"}')
        res["dropped"] = metric(eh.admin, "easehook_presend_records_dropped_total")
        eh.stop()
        rounds.append(res)
    print("\n(m) the pre-send endpoint, 10,000-word list and the example rules; the servers in turn")
    print("| round | server            |     req/s | p50 ms  | p99 ms  | max ms   | errors | peak RSS MB |")
    print("|-------|-------------------|-----------|---------|---------|----------|--------|---------|")
    for i, res in enumerate(rounds):
        for k, label in (("baseline", "bare presend"), ("easehook", "easehook"), ("easehook16", "easehook, 16 conn")):
            print(f"| {i + 1:>5} | {label:<17} |" + fmt_row(k, res[k]).split("|", 2)[2])
    ratios = [res["easehook"]["rps"] / res["baseline"]["rps"] for res in rounds]
    each = lambda xs: " ".join(f"{x:.2f}" for x in xs)
    print(f"(p1) easehook/bare presend = {statistics.median(ratios):.2f} (median; rounds: {each(ratios)}); "
          f"errors {sum(r['easehook']['errors'] for r in rounds)}")
    print(f"(p2) p99 at 16 connections: {each([r['easehook16']['p99_ms'] for r in rounds])} ms; "
          f"max at 64: {each([r['easehook']['max_ms'] for r in rounds])} ms; answers over budget: "
          f"{sum(r['over_budget'] for r in rounds):.0f}, error answers: {sum(r['errors_counted'] for r in rounds):.0f}, "
          f"records dropped: {sum(r['dropped'] for r in rounds):.0f}", flush=True)
    # (p4) start to ready with a 100,000-word list and with none, in turn.
    none, big = [], []
    for r in range(3):
        for kind, times in (("none", none), ("100k", big)):
            d = os.path.join(work, f"start-{kind}-{r}")
            cfg = presend_config(words100k) if kind == "100k" else ""
            eh = Easehook(easehook_bin, d, rules if kind == "100k" else rules_yaml(100, f"http://127.0.0.1:{sink_port}"), cfg)
            times.append(eh.start())
            eh.stop()
    print(f"(p4) start to ready: no list {statistics.median(none):.3f} s, 100,000 words {statistics.median(big):.3f} s "
          f"(medians of 3): {statistics.median(big) - statistics.median(none):+.3f} s", flush=True)
    # (p5) callbacks at a fixed rate (32 connections, 10 ms apart each), alone
    # and while a pre-send load saturates the same listener.
    eh = Easehook(easehook_bin, os.path.join(work, "mixed"), rules, presend_config(words10k))
    eh.start()
    purl = f"http://127.0.0.1:{eh.port}/easemob/presend"
    alone = run_wrk(eh.url, calls, args.duration, connections=32, delay_ms=10, pid=eh.proc.pid)
    box = {}
    t = threading.Thread(target=lambda: box.update(p=run_wrk(purl, calls, args.duration + 2, connections=16,
                                                             pid=eh.proc.pid, lua=PRESEND_LUA, offset=300_000)))
    t.start()
    time.sleep(1)
    mixed = run_wrk(eh.url, calls, args.duration, connections=32, delay_ms=10, pid=eh.proc.pid, offset=100_000)
    t.join()
    eh.stop()
    print(f"(p5) callbacks at a fixed rate: alone {alone['rps']:,.0f} req/s p99 {alone['p99_ms']:.2f} ms; "
          f"beside {box['p']['rps']:,.0f} pre-send req/s: {mixed['rps']:,.0f} req/s p99 {mixed['p99_ms']:.2f} ms "
          f"(throughput {mixed['rps'] / alone['rps']:.2f} of alone; errors {mixed['errors']})", flush=True)


def postgres_scenarios(args, easehook_bin, baseline_bin, calls, work, sink_port):
    """(p): the PostgreSQL store against the embedded one, in the same run."""
    pg = Postgres()
    try:
        rounds = []
        for r in range(args.rounds):
            res = {}
            rules = rules_yaml(100, f"http://127.0.0.1:{sink_port}")
            eh = Easehook(easehook_bin, os.path.join(work, f"p-sqlite{r}"), rules)
            eh.start()
            res["sqlite"] = run_wrk(eh.url, calls, args.duration, pid=eh.proc.pid)
            eh.stop()
            eh = Easehook(easehook_bin, os.path.join(work, f"p-pg{r}"), rules, pg_config(pg.database(f"one{r}")))
            eh.start()
            res["postgres"] = run_wrk(eh.url, calls, args.duration, pid=eh.proc.pid)
            eh.stop()
            url = pg.database(f"two{r}")
            pair = [Easehook(easehook_bin, os.path.join(work, f"p-pg2-{r}-{i}"), rules, pg_config(url)) for i in range(2)]
            for e in pair:
                e.start()
            res["2 replicas"] = run_wrk_split([e.url for e in pair], calls, args.duration, [e.proc.pid for e in pair])
            for e in pair:
                e.stop()
            rounds.append(res)
        print(f"\n(p-a) acknowledged throughput on PostgreSQL, 64 connections; {args.rounds} rounds, the stores in turn")
        print("| round | store      |     req/s | p50 ms  | p99 ms  | max ms   | errors | peak RSS MB |")
        print("|-------|------------|-----------|---------|---------|----------|--------|---------|")
        for i, res in enumerate(rounds):
            for k in ("sqlite", "postgres", "2 replicas"):
                print(f"| {i + 1:>5} " + fmt_row(k, res[k]))
        one = [res["postgres"]["rps"] / res["sqlite"]["rps"] for res in rounds]
        two = [res["2 replicas"]["rps"] / res["postgres"]["rps"] for res in rounds]
        each = lambda xs: " ".join(f"{x:.2f}" for x in xs)
        print(f"postgres/sqlite = {statistics.median(one):.2f} (median; rounds: {each(one)})")
        print(f"2 replicas/1 replica = {statistics.median(two):.2f} (median; rounds: {each(two)})", flush=True)

        slow, slow_port = start_baseline(baseline_bin, delay_ms=2000)
        p99s = []
        for r in range(args.rounds):
            os.sync()
            eh = Easehook(easehook_bin, os.path.join(work, f"p-b{r}"), rules_yaml(100, f"http://127.0.0.1:{slow_port}"),
                          pg_config(pg.database(f"b{r}")))
            eh.start()
            rb = run_wrk(eh.url, calls, args.duration, delay_ms=64, pid=eh.proc.pid)
            eh.stop()
            p99s.append(rb["p99_ms"])
            print(f"(p-b) round {r + 1}: req/s {rb['rps']:.0f}  p50 {rb['p50_ms']:.2f} ms  p99 {rb['p99_ms']:.2f} ms  "
                  f"max {rb['max_ms']:.2f} ms  errors {rb['errors']}", flush=True)
        slow.terminate()
        print(f"(p-b) p99 on PostgreSQL at ~1,000 req/s, destination 2 s: {statistics.median(p99s):.2f} ms (median of {args.rounds})")

        # (p-c) 20,000 deliveries queued while the destination is down, then
        # drained by two replicas.
        down_port = free_port()
        url = pg.database("drain")
        extra = pg_config(url) + "delivery:\n  initial_backoff: 1s\n  max_backoff: 2s\n  max_attempts: 100\n"
        rules = rules_yaml(100, f"http://127.0.0.1:{down_port}", routine="audit")
        pair = [Easehook(easehook_bin, os.path.join(work, f"p-c{i}"), rules, extra) for i in range(2)]
        pair[0].start()
        queued, offset = 0, 200_000
        while queued < 20_000:
            run_wrk(pair[0].url, calls, 2, pid=pair[0].proc.pid, offset=offset)
            offset += 50_000
            queued = pair[0].status()["queue_depth"]
        pair[0].stop()
        drain_sink = subprocess.Popen([baseline_bin, str(down_port), "0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(down_port)
        for e in pair:
            e.start()
        deadline = time.monotonic() + 600
        while pair[0].status()["queue_depth"] > 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        stats = get_json(f"http://127.0.0.1:{down_port}/stats")
        dead = pair[0].status()["dead_deliveries"]
        for e in pair:
            e.stop()
        drain_sink.terminate()
        span = max(stats["last_ms"] - stats["first_ms"], 1) / 1000
        print(f"(p-c) drain through two replicas: {queued} queued, {stats['count']} delivered ({dead} dead) in {span:.2f} s "
              f"= {stats['count'] / span:.0f} deliveries/s; sent twice: {max(stats['count'] - queued, 0)}", flush=True)
    finally:
        pg.stop()



# (i): the history a store holds after weeks of traffic.
HISTORY_EVENTS = 1_000_000
HISTORY_USERS = 10_000
HISTORY_DEAD_EVERY = 100  # one delivery in 100 is dead, after 3 attempts
HISTORY_SPAN_MS = 2 * 86_400_000  # received over the last two days


def history_rows(now_ms):
    """The events of the history, oldest first: (id, key, event, at, rules,
    body, from_user, to_user), each with two deliveries (ids 2i+1, 2i+2)."""
    step = HISTORY_SPAN_MS / HISTORY_EVENTS
    for i in range(HISTORY_EVENTS):
        at = now_ms - HISTORY_SPAN_MS + int(i * step)
        op = OPS[i % len(OPS)]
        frm, to = f"u{(i * 7919) % HISTORY_USERS}", f"u{(i * 104729 + 13) % HISTORY_USERS}"
        eid = f"{at:012x}"
        eid = f"{eid[:8]}-{eid[8:12]}-7{i >> 48 & 0xfff:03x}-8{i >> 36 & 0xfff:03x}-{i & 0xffffffffffff:012x}"
        call = f"{APPKEY}_h{i:017d}"
        body = (f'{{"chat_type":"roster","callId":"{call}","security":"{"0" * 32}","payload":{{"operation":"{op}",'
                f'"status":{{"error_code":"ok"}}}},"host":"msync@ebs-ali-beijing-msync43","appkey":"{APPKEY}",'
                f'"from":"{APPKEY}_{frm}@easemob.com","to":"{to}","eventType":"chat","msg_id":"h{i:017d}","timestamp":{at}}}')
        yield (eid, call, f"roster:{op}", at, '["ban-audit","roster-all"]', body, frm, to)


def fill_sqlite(db, now_ms):
    """Writes the history straight into the embedded store's tables (the
    daemon made the schema and is stopped)."""
    import sqlite3
    c = sqlite3.connect(db)
    c.execute("PRAGMA synchronous=OFF")
    ev, de, at = [], [], []

    def flush():
        c.executemany("INSERT INTO events(id, dedup_key, event, received_at, rules, body, from_user, to_user, "
                      "first_delivery, last_delivery) VALUES (?,?,?,?,?,?,?,?,?,?)", ev)
        c.executemany("INSERT INTO deliveries(id, event_id, action, rule, status, attempts, next_attempt_at, "
                      "last_error, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)", de)
        c.executemany("INSERT INTO attempts(delivery_id, n, started_at, duration_ms, outcome, code, error) "
                      "VALUES (?,?,?,?,?,?,?)", at)
        ev.clear(); de.clear(); at.clear()

    for i, row in enumerate(history_rows(now_ms)):
        t = row[3]
        d1, d2 = 2 * i + 1, 2 * i + 2
        ev.append(row + (d1, d2))
        for d, action in ((d1, "audit"), (d2, "note")):
            if d % HISTORY_DEAD_EVERY == 0:
                de.append((d, row[0], action, "ban-audit", "dead", 3, t, "HTTP 503: busy (gave up after 3 attempts)", t, t + 3000))
                for n in (1, 2, 3):
                    at.append((d, n, t + 1000 * (n - 1), 30, "dead" if n == 3 else "retry", 503, "HTTP 503: busy"))
            else:
                de.append((d, row[0], action, "ban-audit", "sent", 1, t, None, t, t + 5))
                at.append((d, 1, t, 5, "sent", 200, None))
        if len(ev) == 20_000:
            flush()
    flush()
    c.commit()
    # The index by user, as the daemon's indexer keeps it beside the store.
    c.execute("ATTACH DATABASE ? AS users", (os.path.join(os.path.dirname(db), "easehook-users.db"),))
    c.execute("INSERT OR IGNORE INTO users.event_users(name, at, event_row) SELECT name, at, r FROM ("
              "SELECT from_user AS name, received_at AS at, rowid AS r FROM events UNION "
              "SELECT to_user, received_at, rowid FROM events) ORDER BY 1, 2, 3")
    c.execute("UPDATE users.mark SET last = (SELECT max(rowid) FROM events)")
    c.commit()
    c.execute("PRAGMA users.wal_checkpoint(TRUNCATE)")
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()


FILL_PG_SQL = """
INSERT INTO events(id, dedup_key, event, received_at, rules, body, from_user, to_user)
SELECT id, call, 'roster:' || op, at, '["ban-audit","roster-all"]',
       format('{"chat_type":"roster","callId":"%%s","security":"00000000000000000000000000000000","payload":{"operation":"%%s","status":{"error_code":"ok"}},"host":"msync@ebs-ali-beijing-msync43","appkey":"%%s","from":"%%s_%%s@easemob.com","to":"%%s","eventType":"chat","msg_id":"h%%s","timestamp":%%s}',
              call, op, %(appkey)s, %(appkey)s, frm, too, lpad(i::text, 17, '0'), at),
       frm, too
FROM (SELECT i, %(now)s - %(span)s + (i * %(span)s / %(n)s) AS at,
             (ARRAY['add','remove','accept','remote_accept','decline','remote_decline','ban','allow'])[i %% 8 + 1] AS op,
             'u' || ((i * 7919) %% %(users)s) AS frm, 'u' || ((i * 104729 + 13) %% %(users)s) AS too,
             %(appkey)s || '_h' || lpad(i::text, 17, '0') AS call,
             lpad(to_hex(%(now)s - %(span)s + (i * %(span)s / %(n)s)), 12, '0') || '-' || lpad(to_hex(i), 12, '0') AS id
      FROM generate_series(0::bigint, %(n)s - 1) AS i) s;
INSERT INTO deliveries(id, event_id, action, rule, status, attempts, next_attempt_at, last_error, created_at, updated_at)
OVERRIDING SYSTEM VALUE
SELECT d, e.id, CASE WHEN d %% 2 = 1 THEN 'audit' ELSE 'note' END, 'ban-audit',
       CASE WHEN d %% %(dead)s = 0 THEN 'dead' ELSE 'sent' END,
       CASE WHEN d %% %(dead)s = 0 THEN 3 ELSE 1 END, e.received_at,
       CASE WHEN d %% %(dead)s = 0 THEN 'HTTP 503: busy (gave up after 3 attempts)' END,
       e.received_at, e.received_at + 5
FROM (SELECT id, received_at, row_number() OVER (ORDER BY received_at, id) AS i FROM events) e,
     LATERAL (VALUES (2 * e.i - 1), (2 * e.i)) AS x(d);
SELECT setval(pg_get_serial_sequence('deliveries', 'id'), (SELECT max(id) FROM deliveries));
INSERT INTO attempts(delivery_id, n, started_at, duration_ms, outcome, code, error)
SELECT id, n, created_at + 1000 * (n - 1), CASE WHEN status = 'dead' THEN 30 ELSE 5 END,
       CASE WHEN status = 'sent' THEN 'sent' WHEN n = 3 THEN 'dead' ELSE 'retry' END,
       CASE WHEN status = 'sent' THEN 200 ELSE 503 END,
       CASE WHEN status = 'dead' THEN 'HTTP 503: busy' END
FROM deliveries, LATERAL generate_series(1, attempts) AS n;
VACUUM ANALYZE;
"""


def fill_postgres(pg, name, now_ms):
    sql = FILL_PG_SQL % {"appkey": f"'{APPKEY}'", "now": now_ms, "span": HISTORY_SPAN_MS,
                         "n": HISTORY_EVENTS, "users": HISTORY_USERS, "dead": HISTORY_DEAD_EVERY}
    subprocess.run([f"{pg.bin}/psql", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(pg.port),
                    "-U", "easehook", "-d", name], input=sql, text=True, check=True, stdout=subprocess.DEVNULL)


def pg_size(pg, name):
    p = subprocess.run([f"{pg.bin}/psql", "-tA", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "easehook", "-d", name,
                        "-c", "SELECT pg_database_size(current_database())"], capture_output=True, text=True, check=True)
    return int(p.stdout.strip())


def latencies(url_of, n=100):
    """p50 and p99 (ms) of `n` GETs, one after another on one connection,
    each of the URL `url_of(i)` gives; every answer must be 200."""
    import http.client
    from urllib.parse import urlsplit
    first = urlsplit(url_of(0))
    conn = http.client.HTTPConnection(first.hostname, first.port, timeout=30)
    times = []
    for i in range(n + 5):
        u = urlsplit(url_of(i))
        t0 = time.perf_counter()
        conn.request("GET", u.path + ("?" + u.query if u.query else ""))
        r = conn.getresponse()
        body = r.read()
        took = (time.perf_counter() - t0) * 1000
        if r.status != 200:
            raise RuntimeError(f"{u.path}?{u.query}: {r.status} {body[:200]!r}")
        if i >= 5:  # the first few warm the caches and the connection
            times.append(took)
    conn.close()
    times.sort()
    return times[len(times) // 2], times[min(len(times) - 1, int(len(times) * 0.99))]


def history_queries(admin):
    """The requests of (i): name and URL by request number."""
    base = f"http://127.0.0.1:{admin}"
    user = lambda i: f"u{(i * 37) % HISTORY_USERS}"
    delivery = lambda i: 1 + (i * 19_997) % (2 * HISTORY_EVENTS)
    return [
        ("console: events of roster:ban and a user", lambda i: f"{base}/events?event=roster:ban&user={user(i)}"),
        ("API: the same", lambda i: f"{base}/api/v1/events?event=roster:ban&user={user(i)}"),
        ("console: a delivery's page", lambda i: f"{base}/deliveries/{delivery(i)}"),
        ("API: a delivery", lambda i: f"{base}/api/v1/deliveries/{delivery(i)}"),
        ("console: the dead-letter list", lambda i: f"{base}/deliveries?status=dead"),
        ("API: the dead-letter list", lambda i: f"{base}/api/v1/deliveries?status=dead"),
    ]


def settle(eh, store, timeout=600):
    """Waits until the daemon's queue is empty and, on the embedded store,
    its index by user has taken every event."""
    import sqlite3
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = eh.status()["queue_depth"] == 0
        if done and store == "sqlite":
            data = os.path.join(eh.dir, "data")
            c = sqlite3.connect(f"file:{data}/easehook.db?mode=ro", uri=True)
            c.execute("ATTACH DATABASE ? AS users", (f"file:{data}/easehook-users.db?mode=ro",))
            done = c.execute("SELECT (SELECT last FROM users.mark) >= (SELECT max(rowid) FROM events)").fetchone()[0]
            c.close()
        if done:
            return
        time.sleep(0.5)
    raise RuntimeError("the daemon did not settle")


def history_scenarios(args, easehook_bin, calls, work, sink_port):
    """(i): a store with 1,000,000 events and 2,000,000 deliveries."""
    now_ms = int(time.time() * 1000)
    rules = rules_yaml(100, f"http://127.0.0.1:{sink_port}")
    keep = "retention: 30d\n"
    # Calls of their own, so that no round's callback repeats an earlier
    # round's on the history store (a repeat is absorbed, and cheaper):
    # round r sends lines from 400,000 r on (wrk's two threads 200,000
    # apart).
    calls = os.path.join(work, "history-calls.txt")
    signed_triples(calls, 400_000 * args.rounds)
    pg = Postgres()
    try:
        for store in ("sqlite", "postgres"):
            print(f"\n(i) history on {store}: {HISTORY_EVENTS:,} events, {2 * HISTORY_EVENTS:,} deliveries "
                  f"(1 in {HISTORY_DEAD_EVERY} dead), {HISTORY_USERS:,} users", flush=True)
            extra = keep + (pg_config(pg.database("history")) if store == "postgres" else "")
            eh = Easehook(easehook_bin, os.path.join(work, f"i-{store}"), rules, extra)
            eh.start()
            eh.stop()
            t0 = time.monotonic()
            if store == "sqlite":
                db = os.path.join(eh.dir, "data", "easehook.db")
                fill_sqlite(db, now_ms)
                size = os.path.getsize(db) + os.path.getsize(os.path.join(eh.dir, "data", "easehook-users.db"))
            else:
                empty = pg_size(pg, "history")
                fill_postgres(pg, "history", now_ms)
                size = pg_size(pg, "history") - empty
            print(f"filled in {time.monotonic() - t0:.0f} s; store size {size / 1e6:,.0f} MB = "
                  f"{size / HISTORY_EVENTS:,.0f} bytes per event (with its 2 deliveries and their attempts)", flush=True)
            eh.start()
            print("| request | p50 ms | p99 ms (100 requests) |")
            print("|---------|--------|--------|")
            for name, url_of in history_queries(eh.admin):
                p50, p99 = latencies(url_of)
                print(f"| {name} | {p50:.1f} | {p99:.1f} |", flush=True)
            eh.stop()
            # (a)'s load on this store and on an empty one, in turn.
            ratios = []
            for r in range(args.rounds):
                empty_extra = keep + (pg_config(pg.database(f"empty{r}")) if store == "postgres" else "")
                fresh = Easehook(easehook_bin, os.path.join(work, f"i-{store}-empty{r}"), rules, empty_extra)
                fresh.start()
                e = run_wrk(fresh.url, calls, args.duration, pid=fresh.proc.pid, offset=r * 400_000)
                fresh.stop()
                eh.start()
                h = run_wrk(eh.url, calls, args.duration, pid=eh.proc.pid, offset=r * 400_000)
                # What the round left to do (the deliveries queued behind
                # the load, the index by user) is done before the next, so
                # that each round measures the history, not the last
                # round's backlog.
                settle(eh, store)
                eh.stop()
                ratios.append(h["rps"] / e["rps"])
                print(f"round {r + 1}: (a) on the empty store {e['rps']:,.0f} req/s (p99 {e['p99_ms']:.1f} ms), "
                      f"on the history {h['rps']:,.0f} req/s (p99 {h['p99_ms']:.1f} ms): {ratios[-1]:.2f}", flush=True)
            print(f"(a) with the history / empty = {statistics.median(ratios):.2f} (median; rounds: "
                  + " ".join(f"{x:.2f}" for x in ratios) + ")", flush=True)
    finally:
        pg.stop()


def builds_scenario(args, binaries, postgres, calls, work, sink_port):
    """(v), (w): (a)'s load with two builds in turn, which goes first
    alternating round by round; each run on a new store."""
    pg = Postgres() if postgres else None
    rps = {b: [] for b in binaries}
    try:
        for r in range(args.rounds):
            order = binaries if r % 2 == 0 else list(reversed(binaries))
            for i, b in enumerate(order):
                extra = pg_config(pg.database(f"v{r}x{i}")) if pg else ""
                eh = Easehook(b, os.path.join(work, f"v{r}x{i}"), rules_yaml(100, f"http://127.0.0.1:{sink_port}"), extra)
                eh.start()
                rps[b].append(run_wrk(eh.url, calls, args.duration, pid=eh.proc.pid)["rps"])
                eh.stop()
    finally:
        if pg:
            pg.stop()
    before, after = binaries
    ratios = [a / b for a, b in zip(rps[after], rps[before])]
    print(f"\n({'w' if postgres else 'v'}) (a)'s load on {'PostgreSQL' if postgres else 'the embedded store'}: "
          f"{after} / {before} = {statistics.median(ratios):.2f} (median; rounds: "
          + " ".join(f"{x:.2f}" for x in ratios) + "); req/s before "
          + ", ".join(f"{x:,.0f}" for x in rps[before]) + "; after " + ", ".join(f"{x:,.0f}" for x in rps[after]), flush=True)


if __name__ == "__main__":
    sys.exit(main())
