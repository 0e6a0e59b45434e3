#!/usr/bin/env python3
"""Start-up time and idle memory of oxibase, next to PostgreSQL's own start.

Each round, on a fresh data directory:
  - first start: exec of `oxibase` to its first `/health` 200 (initdb, migrations included);
  - restart: the same on the now initialised directory, after a clean stop;
  - idle: the restarted server's memory after IDLE_SECONDS with no requests (VmRSS, and
    its anonymous and file-backed parts, from /proc/PID/status);
  - after use: 20 rounds of a REST, an auth sign-up and a storage request, then RSS right
    after them and again AFTER_USE_SECONDS later (the server releases its code pages after a
    quiet minute, looked for every 15 s; 0 skips this part);
  - the floor under a first start: initdb (oxibase's options) and `pg_ctl start -w` of a
    new directory;
  - the floor under a restart: `pg_ctl start -w` of the same PostgreSQL directory alone
    (oxibase's restart waits for exactly this, then adds its own work), and the
    postmaster's own RSS when idle, for scale.
Medians over ROUNDS rounds are printed with the spread. Not run in CI.

    bench/startup/run.py                               # builds --release, 5 rounds, 30 s idle
    ROUNDS=3 IDLE_SECONDS=10 OXIBASE_BIN=target/release/oxibase bench/startup/run.py
"""
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROUNDS = int(os.environ.get("ROUNDS", "5"))
IDLE = float(os.environ.get("IDLE_SECONDS", "30"))
AFTER_USE = float(os.environ.get("AFTER_USE_SECONDS", "80"))
PORT = int(os.environ.get("PORT", "55541"))
DB_PORT = int(os.environ.get("DB_PORT", "55542"))
PG_BIN = max(
    (os.path.join("/usr/lib/postgresql", v, "bin") for v in os.listdir("/usr/lib/postgresql")),
    key=lambda p: int(p.split("/")[-2]),
)


def binary():
    b = os.environ.get("OXIBASE_BIN")
    if b:
        return os.path.abspath(b)
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    return os.path.join(ROOT, "target/release/oxibase")


def start(bin_path, data):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OXIBASE_")}
    env.update(
        OXIBASE_PORT=str(PORT),
        OXIBASE_DB_PORT=str(DB_PORT),
        OXIBASE_DATA_DIR=data,
        OXIBASE_BIND="127.0.0.1",
        OXIBASE_LOG="warn",
    )
    log = open(os.path.join(data, "bench.log"), "ab")
    t0 = time.monotonic()
    p = subprocess.Popen([bin_path], env=env, stdout=log, stderr=log, start_new_session=True)
    url = f"http://127.0.0.1:{PORT}/health"
    while True:
        if p.poll() is not None:
            sys.exit(f"oxibase exited with {p.returncode}; see {data}/bench.log")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return p, time.monotonic() - t0
        except OSError:
            pass
        if time.monotonic() - t0 > 60:
            sys.exit(f"oxibase not healthy after 60 s; see {data}/bench.log")
        time.sleep(0.005)


def use(data):
    """Requests across three APIs with the anon key the server printed."""
    with open(os.path.join(data, "bench.log"), errors="replace") as f:
        key = next(l.split("anon key:")[1].strip() for l in f if "anon key:" in l)
    key = "".join(ch for ch in key if ch.isalnum() or ch in "._-")
    base = f"http://127.0.0.1:{PORT}"
    for i in range(20):
        for path, body in (("/rest/v1/", None),
                           ("/auth/v1/signup", f'{{"email":"u{i}@bench.io","password":"secret-123"}}'),
                           ("/storage/v1/bucket", None)):
            req = urllib.request.Request(base + path, data=body and body.encode(),
                                         headers={"apikey": key, "authorization": f"Bearer {key}",
                                                  "content-type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as r:
                r.read()


def stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def status_kb(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile"):
                out[k] = int(v.split()[0])
    return out


def as_postgres(cmd):
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--"] + cmd
    return subprocess.run(cmd, capture_output=True, text=True)


def pg_alone(data):
    """Seconds for pg_ctl start -w of oxibase's PostgreSQL directory, and the idle
    postmaster's RSS in kB."""
    pgdata = os.path.join(data, "pg")
    opts = f"-p {DB_PORT} -c listen_addresses=127.0.0.1 -k {pgdata}"
    t0 = time.monotonic()
    r = as_postgres([f"{PG_BIN}/pg_ctl", "-D", pgdata, "-w", "-s", "-o", opts, "start",
                     "-l", os.path.join(pgdata, "alone.log")])
    took = time.monotonic() - t0
    if r.returncode != 0:
        sys.exit(f"pg_ctl start failed: {r.stderr}")
    time.sleep(1)
    with open(os.path.join(pgdata, "postmaster.pid")) as f:
        rss = status_kb(int(f.readline()))["VmRSS"]
    as_postgres([f"{PG_BIN}/pg_ctl", "-D", pgdata, "-w", "-s", "stop", "-m", "fast"])
    return took, rss


def pg_first(data):
    """Seconds for initdb (oxibase's options) plus pg_ctl start -w on a new directory: the
    floor under a first start."""
    pgdata = os.path.join(data, "alone")
    os.mkdir(pgdata, 0o700)
    if os.geteuid() == 0:
        shutil.chown(pgdata, "postgres", "postgres")
    opts = f"-p {DB_PORT} -c listen_addresses=127.0.0.1 -k {pgdata}"
    pwfile = os.path.join(data, "pw")
    with open(pwfile, "w") as f:
        f.write("postgres")
    os.chmod(pwfile, 0o644)
    t0 = time.monotonic()
    r = as_postgres([f"{PG_BIN}/initdb", "-D", pgdata, "-U", "postgres", "-A", "scram-sha-256",
                     "-E", "UTF8", "--no-locale", f"--pwfile={pwfile}"])
    if r.returncode != 0:
        sys.exit(f"initdb failed: {r.stderr}")
    r = as_postgres([f"{PG_BIN}/pg_ctl", "-D", pgdata, "-w", "-s", "-o", opts, "start",
                     "-l", os.path.join(pgdata, "alone.log")])
    took = time.monotonic() - t0
    if r.returncode != 0:
        sys.exit(f"pg_ctl start failed: {r.stderr}")
    as_postgres([f"{PG_BIN}/pg_ctl", "-D", pgdata, "-w", "-s", "stop", "-m", "fast"])
    return took


def main():
    bin_path = binary()
    rows = {k: [] for k in ("first", "pgfirst", "restart", "pg", "rss", "anon", "file", "pgrss",
                            "used", "rested")}
    for i in range(ROUNDS):
        data = tempfile.mkdtemp(prefix="oxibase-startup-")
        os.chmod(data, 0o755)
        try:
            p, first = start(bin_path, data)
            stop(p)
            p, restart = start(bin_path, data)
            time.sleep(IDLE)
            mem = status_kb(p.pid)
            used = rested = 0
            if AFTER_USE > 0:
                use(data)
                used = status_kb(p.pid)["VmRSS"]
                time.sleep(AFTER_USE)
                rested = status_kb(p.pid)["VmRSS"]
            stop(p)
            pg, pgrss = pg_alone(data)
            pgfirst = pg_first(data)
        finally:
            shutil.rmtree(data, ignore_errors=True)
        for k, v in (("first", first), ("pgfirst", pgfirst), ("restart", restart), ("pg", pg), ("rss", mem["VmRSS"]),
                     ("anon", mem["RssAnon"]), ("file", mem["RssFile"]), ("pgrss", pgrss), ("used", used), ("rested", rested)):
            rows[k].append(v)
        print(f"round {i + 1}: first {first:.2f} s, restart {restart:.2f} s, "
              f"pg_ctl start {pg:.2f} s, idle RSS {mem['VmRSS'] / 1024:.1f} MB", flush=True)

    def med(k, scale=1.0):
        v = [x * scale for x in rows[k]]
        return f"{statistics.median(v):7.2f}  ({min(v):.2f}-{max(v):.2f})"

    mb = 1 / 1024
    print(f"\nmedian of {ROUNDS} rounds (min-max); idle = {IDLE:.0f} s after the restart")
    print(f"  first start to /health 200, s        {med('first')}")
    print(f"  floor: initdb + pg_ctl start -w, s   {med('pgfirst')}")
    print(f"  restart to /health 200, s            {med('restart')}")
    print(f"  floor: pg_ctl start -w alone, s      {med('pg')}")
    print(f"  idle RSS, MB                         {med('rss', mb)}")
    print(f"    anonymous, MB                      {med('anon', mb)}")
    print(f"    file-backed (the binary), MB       {med('file', mb)}")
    if AFTER_USE > 0:
        print(f"  RSS right after 60 requests, MB      {med('used', mb)}")
        label = f"RSS {AFTER_USE:.0f} s after them, MB"
        print(f"  {label:37}{med('rested', mb)}")
    print(f"  for scale: idle postmaster RSS, MB   {med('pgrss', mb)}")


if __name__ == "__main__":
    main()
