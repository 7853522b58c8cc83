#!/usr/bin/python3
"""Real oslo.messaging peer for ferry's integration tests (Debian's python3-oslo.messaging).

  peer.py client URL        read JSON commands on stdin, answer one JSON line each on stdout
  peer.py server URL HOST [EXCHANGE]
                            serve the test endpoint on topic "compute", server HOST; print READY.
                            EXCHANGE is the control_exchange (default "nova"), as nova-compute's
                            own ferry-<host> in companion mode

Client commands: {"op": "call"|"cast", "topic", "server", "fanout", "namespace", "version",
"method", "args", "timeout", "monitor"}. Answers: {"result": ...} or {"error": {"class", "module",
"message", "exc_type"}} (exc_type is set for oslo_messaging.RemoteError).
"""
import json
import sys
import time
import uuid

import amqp

from oslo_config import cfg
import oslo_messaging as messaging


def transport(url, exchange="nova"):
    conf = cfg.CONF  # oslo.messaging registers some options (metrics) on the global object only
    conf([], project="ferry-test")
    messaging.set_transport_defaults(exchange)
    return conf, messaging.get_rpc_transport(conf, url=url, allowed_remote_exmods=["nova.exception"])


def error_info(e):
    info = {"class": type(e).__name__, "module": type(e).__module__, "message": str(e).split("\n")[0],
            "mro": ["%s.%s" % (c.__module__, c.__name__) for c in type(e).__mro__]}
    if isinstance(e, messaging.RemoteError):
        info["exc_type"] = e.exc_type
        info["message"] = e.value
    return info


def client(url):
    conf, t = transport(url)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "raw":
            sys.stdout.write(json.dumps(raw(cmd)) + "\n")
            sys.stdout.flush()
            continue
        target = messaging.Target(topic=cmd.get("topic", "compute"), server=cmd.get("server"),
                                  fanout=cmd.get("fanout", False), namespace=cmd.get("namespace"),
                                  version=cmd.get("version", "1.0"))
        c = messaging.get_rpc_client(t, target, timeout=cmd.get("timeout", 10),
                                     call_monitor_timeout=cmd.get("monitor"),
                                     version_cap=None)
        ctxt = cmd.get("context", {})
        try:
            if cmd["op"] == "call":
                out = {"result": c.call(ctxt, cmd["method"], **(cmd.get("args") or {}))}
            else:
                c.cast(ctxt, cmd["method"], **(cmd.get("args") or {}))
                out = {"result": None}
        except Exception as e:  # noqa: the test reads the class
            out = {"error": error_info(e)}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


def raw(cmd):
    """Publish a hand-made body (py-amqp, no oslo) and, for "reply", collect what comes back."""
    a = cmd["amqp"]
    c = amqp.Connection(host=a["host"], userid=a["user"], password=a["password"], virtual_host=a["vhost"])
    c.connect()
    try:
        ch = c.channel()
        reply_q = "reply_" + uuid.uuid4().hex
        if cmd.get("reply"):
            ch.queue_declare(reply_q, auto_delete=True)
        body = cmd["body"].replace("{{REPLY_Q}}", reply_q)
        props = {"delivery_mode": 2}
        if cmd.get("content_type") is not None:
            props["content_type"] = cmd["content_type"]
            props["content_encoding"] = "utf-8"
        for _ in range(cmd.get("times", 1)):
            ch.basic_publish(amqp.Message(body, **props), exchange=cmd.get("exchange", "nova"),
                             routing_key=cmd["routing_key"])
        replies = []
        if cmd.get("reply"):
            deadline = time.time() + cmd.get("timeout", 10)
            while time.time() < deadline:
                m = ch.basic_get(reply_q, no_ack=True)
                if m is None:
                    time.sleep(0.05)
                    continue
                outer = json.loads(m.body)
                inner = json.loads(outer["oslo.message"]) if "oslo.version" in outer else outer
                replies.append(inner)
                if inner.get("ending"):
                    break
        return {"replies": replies}
    finally:
        c.close()


class Endpoint(object):
    target = messaging.Target(version="6.4")

    def noop(self, ctxt, **kwargs):
        return None

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


def server(url, host, exchange="nova"):
    conf, t = transport(url, exchange)
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
        server(*sys.argv[2:5])
