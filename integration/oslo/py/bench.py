#!/usr/bin/python3
"""The RPC benchmark's driver: one python3-oslo.messaging client for every server.

  bench.py URL PAIRS target=PID ...      e.g. py=1234 go=1235 floor=1236

Each target is a server on topic "compute", server "bench-<target>", with a no-op method. For
PAIRS rounds it runs every target in turn (interleaved): 2,000 sequential calls, then 8 concurrent
callers making 2,000 calls between them. It reads the server's CPU time (utime+stime from
/proc/PID/stat) around each run and prints one JSON line per run.
"""
import json
import os
import sys
import threading
import time

from oslo_config import cfg
import oslo_messaging as messaging

SEQ_CALLS = 2000
CONC_CALLERS = 8
CONC_CALLS = 2000
TICK = os.sysconf("SC_CLK_TCK")


def cpu(pid):
    with open("/proc/%d/stat" % pid) as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / TICK


def client(t, name):
    return messaging.get_rpc_client(t, messaging.Target(topic="compute", server="bench-" + name, version="6.0"),
                                    timeout=30)


def timed_calls(c, n, lat):
    for _ in range(n):
        t0 = time.perf_counter()
        c.call({}, "noop")
        lat.append(time.perf_counter() - t0)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] * 1000


def run(t, name, pid, mode):
    c = client(t, name)
    lat = []
    c0, w0 = cpu(pid), time.perf_counter()
    if mode == "seq":
        timed_calls(c, SEQ_CALLS, lat)
        calls = SEQ_CALLS
    else:
        per = CONC_CALLS // CONC_CALLERS
        ths = [threading.Thread(target=timed_calls, args=(c, per, lat)) for _ in range(CONC_CALLERS)]
        for th in ths:
            th.start()
        for th in ths:
            th.join()
        calls = per * CONC_CALLERS
    wall, used = time.perf_counter() - w0, cpu(pid) - c0
    return {"target": name, "mode": mode, "calls": calls, "calls_per_s": calls / wall,
            "p50_ms": pct(lat, 0.50), "p99_ms": pct(lat, 0.99), "cpu_s_per_1000": used * 1000 / calls}


def main():
    url, pairs = sys.argv[1], int(sys.argv[2])
    targets = [a.split("=") for a in sys.argv[3:]]
    conf = cfg.CONF
    conf([], project="ferry-bench")
    messaging.set_transport_defaults("nova")
    t = messaging.get_rpc_transport(conf, url=url)
    for name, pid in targets:  # warm up: reply queue, connections, caches
        for _ in range(50):
            client(t, name).call({}, "noop")
    for r in range(pairs):
        for mode in ("seq", "conc"):
            for name, pid in targets:
                out = run(t, name, int(pid), mode)
                out["round"] = r
                sys.stdout.write(json.dumps(out) + "\n")
                sys.stdout.flush()


if __name__ == "__main__":
    main()
