#!/usr/bin/python3
"""The RPC benchmark's floor: a raw-AMQP (py-amqp, no oslo) server on compute.bench-floor that
answers every call with a canned reply. It shows what the broker round trip alone costs.

  floor.py HOST USER PASSWORD VHOST
"""
import json
import sys

import amqp


def main(host, user, password, vhost):
    c = amqp.Connection(host=host, userid=user, password=password, virtual_host=vhost)
    c.connect()
    ch = c.channel()
    ch.exchange_declare("nova", "topic", durable=False, auto_delete=False)
    ch.queue_declare("compute.bench-floor", durable=False, auto_delete=False)
    ch.queue_bind("compute.bench-floor", "nova", "compute.bench-floor")

    def on(msg):
        inner = json.loads(json.loads(msg.body)["oslo.message"])
        reply = json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(
            {"result": None, "failure": None, "ending": True, "_msg_id": inner["_msg_id"]})})
        ch.basic_publish(amqp.Message(reply, content_type="application/json", content_encoding="utf-8"),
                         exchange="", routing_key=inner["_reply_q"])

    ch.basic_consume("compute.bench-floor", callback=on, no_ack=True)
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    while True:
        c.drain_events()


if __name__ == "__main__":
    main(*sys.argv[1:5])
