#!/usr/bin/python3
"""oslo.messaging peer over TLS for ferry's amqptls tests (Debian's python3-oslo.messaging).

  tlspeer.py server CONF HOST   serve "echo" on topic "compute", server HOST; print READY, run until stdin closes
  tlspeer.py client CONF HOST   call "echo" on compute.HOST once; print the result (or the error) as JSON

CONF is a nova.conf-style file: [DEFAULT] transport_url and the [oslo_messaging_rabbit] ssl options,
so oslo reads them exactly as nova-compute would.
"""
import json
import os
import sys
import time

from oslo_config import cfg
import oslo_messaging as messaging


def transport(conf_file):
    conf = cfg.CONF
    conf(["--config-file", conf_file], project="ferry-test")
    messaging.set_transport_defaults("nova")
    return messaging.get_rpc_transport(conf)


class Endpoint(object):
    target = messaging.Target(version="6.4")

    def echo(self, ctxt, **kwargs):
        return {"args": kwargs, "peer": "oslo.messaging", "context_user": ctxt.get("user")}


def server(conf_file, host):
    t = transport(conf_file)
    srv = messaging.get_rpc_server(t, messaging.Target(topic="compute", server=host), [Endpoint()],
                                   executor="threading")
    srv.start()
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    try:
        for _ in sys.stdin:
            pass
    finally:
        srv.stop()
        srv.wait()


def client(conf_file, host):
    t = transport(conf_file)
    c = messaging.get_rpc_client(t, messaging.Target(topic="compute", server=host, version="6.4"), timeout=20)
    t0 = time.time()
    try:
        out = {"result": c.call({"user": "u-tls"}, "echo", over="tls")}
    except Exception as e:  # noqa: the test reads the class
        out = {"error": {"class": type(e).__name__, "message": str(e).split("\n")[0]}}
    sys.stderr.write("call took %.3fs\n" % (time.time() - t0))
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    # Without this the interpreter waits some 10 s at exit for oslo's
    # connection threads; the test has its answer.
    os._exit(0)


if __name__ == "__main__":
    {"server": server, "client": client}[sys.argv[1]](*sys.argv[2:4])
