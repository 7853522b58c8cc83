#!/usr/bin/python3
"""Real oslo.messaging peer for ferry's integration tests (Debian's python3-oslo.messaging).

  peer.py client URL        read JSON commands on stdin, answer one JSON line each on stdout
  peer.py server URL HOST   serve the test endpoint on topic "compute", server HOST; print READY

Client commands: {"op": "call"|"cast", "topic", "server", "fanout", "namespace", "version",
"method", "args", "timeout", "monitor"}. Answers: {"result": ...} or {"error": {"class", "module",
"message", "exc_type"}} (exc_type is set for oslo_messaging.RemoteError).
"""
import json
import sys
import time

from oslo_config import cfg
import oslo_messaging as messaging


def transport(url):
    conf = cfg.ConfigOpts()
    conf([], project="ferry-test")
    messaging.set_transport_defaults("nova")
    return conf, messaging.get_rpc_transport(conf, url=url)


def error_info(e):
    info = {"class": type(e).__name__, "module": type(e).__module__, "message": str(e).split("\n")[0]}
    if isinstance(e, messaging.RemoteError):
        info["exc_type"] = e.exc_type
        info["message"] = e.value
    return info


def client(url):
    conf, t = transport(url)
    for line in sys.stdin:
        cmd = json.loads(line)
        target = messaging.Target(topic=cmd.get("topic", "compute"), server=cmd.get("server"),
                                  fanout=cmd.get("fanout", False), namespace=cmd.get("namespace"),
                                  version=cmd.get("version", "1.0"))
        c = messaging.get_rpc_client(t, target, timeout=cmd.get("timeout", 10),
                                     call_monitor_timeout=cmd.get("monitor"),
                                     version_cap=None)
        ctxt = cmd.get("context", {})
        try:
            if cmd["op"] == "call":
                out = {"result": c.call(ctxt, cmd["method"], **cmd.get("args", {}))}
            else:
                c.cast(ctxt, cmd["method"], **cmd.get("args", {}))
                out = {"result": None}
        except Exception as e:  # noqa: the test reads the class
            out = {"error": error_info(e)}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


class Endpoint(object):
    target = messaging.Target(version="6.4")

    def echo(self, ctxt, **kwargs):
        return {"args": kwargs, "context_user": ctxt.get("user"), "request_id": ctxt.get("request_id")}

    def sleep(self, ctxt, seconds):
        time.sleep(seconds)
        return seconds

    def fail(self, ctxt, message):
        raise ValueError(message)

    def record(self, ctxt, **kwargs):
        sys.stdout.write(json.dumps({"cast": kwargs}) + "\n")
        sys.stdout.flush()


def server(url, host):
    conf, t = transport(url)
    target = messaging.Target(topic="compute", server=host)
    srv = messaging.get_rpc_server(t, target, [Endpoint()], executor="threading")
    srv.start()
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    try:
        for _ in sys.stdin:
            pass
    finally:
        srv.stop()
        srv.wait()


if __name__ == "__main__":
    if sys.argv[1] == "client":
        client(sys.argv[2])
    else:
        server(sys.argv[2], sys.argv[3])
