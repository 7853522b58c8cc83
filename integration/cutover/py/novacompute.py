#!/usr/bin/python3
"""A stand-in nova-compute for ferry's cut-over test (Debian's python3-oslo.messaging).

  novacompute.py start DIR CONF HOST   start "serve" in the background (pid in DIR/pid), wait until it serves
  novacompute.py stop DIR              SIGTERM it and wait until it has gone (its connections closed)
  novacompute.py serve DIR CONF HOST   an oslo RPC server on topic compute, server HOST, configured by the
                                       oslo.config file CONF ([DEFAULT] transport_url, control_exchange, as
                                       nova-compute reads nova.conf; Nova's default exchange "nova"). Each
                                       record(seq) cast appends {"seq", "exchange", "pid"} to DIR/record.jsonl.
                                       Every 0.2 s it casts hello() to topic ferry-test-conductor through its
                                       own control exchange, as nova-compute calls the conductor.
  novacompute.py client URL HOST DIR   cast record(seq=0, 1, ...) to compute.HOST on exchange nova every 20 ms
                                       until DIR/stop-client exists; then print the number sent
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time

from oslo_config import cfg
import oslo_messaging as messaging


def serve(d, conf_file, host):
    conf = cfg.CONF
    messaging.set_transport_defaults("nova")  # nova/config.py does the same
    conf(["--config-file", conf_file], project="nova")
    t = messaging.get_rpc_transport(conf)
    lock = threading.Lock()
    out = open(os.path.join(d, "record.jsonl"), "a")

    class Endpoint(object):
        target = messaging.Target(version="6.0")

        def record(self, ctxt, seq):
            with lock:
                out.write(json.dumps({"seq": seq, "exchange": conf.control_exchange, "pid": os.getpid()}) + "\n")
                out.flush()

    srv = messaging.get_rpc_server(t, messaging.Target(topic="compute", server=host), [Endpoint()], executor="threading")
    srv.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    hello = messaging.get_rpc_client(t, messaging.Target(topic="ferry-test-conductor", version="1.0"))
    with open(os.path.join(d, "ready"), "w") as f:
        f.write(conf.control_exchange)
    n = 0
    while not stop.wait(0.2):
        hello.cast({}, "hello", host=host, n=n, exchange=conf.control_exchange)
        n += 1
    srv.stop()
    srv.wait()
    t.cleanup()


def start(d, conf_file, host):
    ready = os.path.join(d, "ready")
    if os.path.exists(ready):
        os.remove(ready)
    log = open(os.path.join(d, "nova-compute.log"), "a")
    p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "serve", d, conf_file, host],
                         stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    with open(os.path.join(d, "pid"), "w") as f:
        f.write(str(p.pid))
    deadline = time.time() + 60
    while time.time() < deadline:
        if os.path.exists(ready):
            print("nova-compute started (pid %d, exchange %s)" % (p.pid, open(ready).read()))
            return
        if p.poll() is not None:
            sys.exit("nova-compute exited with %s" % p.returncode)
        time.sleep(0.1)
    sys.exit("nova-compute did not serve within 60 s")


def stop(d):
    try:
        pid = int(open(os.path.join(d, "pid")).read())
    except (OSError, ValueError):
        print("nova-compute not running")
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        print("nova-compute not running")
        return
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                break
        except ChildProcessError:  # not our child: poll for it (a zombie has gone too)
            try:
                if "State:\tZ" in open("/proc/%d/status" % pid).read():
                    break
            except OSError:
                break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
    os.remove(os.path.join(d, "pid"))
    print("nova-compute stopped (pid %d)" % pid)


def client(url, host, d):
    conf = cfg.CONF  # oslo.messaging registers some options on the global object only
    messaging.set_transport_defaults("nova")
    conf([], project="ferry-test-client")
    t = messaging.get_rpc_transport(conf, url=url)
    c = messaging.get_rpc_client(t, messaging.Target(topic="compute", server=host, version="6.0"))
    seq = 0
    while not os.path.exists(os.path.join(d, "stop-client")):
        c.cast({}, "record", seq=seq)
        seq += 1
        time.sleep(0.02)
    t.cleanup()
    print(seq)


if __name__ == "__main__":
    op = sys.argv[1]
    if op == "serve":
        serve(*sys.argv[2:5])
    elif op == "start":
        start(*sys.argv[2:5])
    elif op == "stop":
        stop(sys.argv[2])
    else:
        client(*sys.argv[2:5])
