#!/usr/bin/python3
"""An oslo.messaging notification listener (python3-oslo.messaging, Debian 12), as a consumer of Nova's
notifications (ceilometer, searchlight…) runs one.

  listener.py URL EXCHANGE TOPIC...

Listens on every TOPIC at every priority on EXCHANGE with oslo_messaging.get_notification_listener and
prints one JSON line per notification as oslo hands it to the endpoint: the priority (the method
called), ctxt, publisher_id, event_type, payload and metadata (message_id, timestamp). Prints
{"ready": true} once consuming.
"""
import json
import sys
import threading

from oslo_config import cfg
import oslo_messaging

lock = threading.Lock()


def out(d):
    with lock:
        sys.stdout.write(json.dumps(d, sort_keys=True) + "\n")
        sys.stdout.flush()


class Endpoint(object):
    def _record(self, priority):
        def handle(ctxt, publisher_id, event_type, payload, metadata):
            out({"priority": priority, "ctxt": ctxt, "publisher_id": publisher_id, "event_type": event_type,
                 "payload": payload, "metadata": metadata})
        return handle

    def __getattr__(self, name):
        if name in ("audit", "debug", "info", "warn", "error", "critical", "sample"):
            return self._record(name)
        raise AttributeError(name)


def main(url, exchange, topics):
    conf = cfg.ConfigOpts()
    conf([], project="ferry-notify-test")
    transport = oslo_messaging.get_notification_transport(conf, url=url)
    targets = [oslo_messaging.Target(topic=t, exchange=exchange) for t in topics]
    listener = oslo_messaging.get_notification_listener(transport, targets, [Endpoint()], executor="threading")
    listener.start()
    out({"ready": True})
    try:
        sys.stdin.read()  # until the test closes stdin
    finally:
        listener.stop()
        listener.wait()
        transport.cleanup()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
