#!/usr/bin/python3
"""The conductor's side of a live migration, played with python3-nova (Zed).

  conductor.py TRANSPORT_URL AUTH_TOKEN

(AUTH_TOKEN goes into every request context, as a user's token would.)

It is two things in one process:

* a stand-in for nova-conductor's ConductorManager (topic "conductor", RPC 3.0), served with Nova's own
  NovaObjectSerializer: object_action (Migration.save, Instance.save with expected_task_state,
  Instance.drop_migration_context, InstanceFault.create) and object_class_action_versions
  (Migration.get_by_id, Instance.get_by_uuid, InstanceActionEvent.event_start / event_finish_with_failure)
  against an in-memory
  "database", answering as the real conductor does (updates diffed against a clone, then the result);
* the conductor's live-migration task, driven by commands on stdin: it calls the destination's
  check_can_live_migrate_destination and casts live_migration to the source with python3-nova's own
  ComputeAPI, exactly as LiveMigrationTask does; it also sends live_migration_abort / _force_complete.

Every decoded object_action and every outcome is one JSON line on stdout.
"""
import json
import sys
import tempfile
import threading
import traceback

from oslo_config import cfg
import oslo_messaging as messaging
from oslo_utils import timeutils

from nova import config
from nova import context as nova_context
from nova import exception
from nova import objects
from nova import rpc
from nova.compute import rpcapi
from nova.objects import base as objects_base
from nova.objects import fields

LOCK = threading.Lock()


def emit(rec):
    with LOCK:
        sys.stdout.write(json.dumps(rec, default=str) + "\n")
        sys.stdout.flush()


class DB(object):
    def __init__(self):
        self.migrations = {}  # id -> Migration
        self.instances = {}   # uuid -> Instance
        self.services = {}    # host -> Service (nova-compute's)


class ConductorStandIn(object):
    target = messaging.Target(version="3.0")

    def __init__(self, db):
        self.db = db

    def object_action(self, context, objinst, objmethod, args, kwargs):
        oldobj = objinst.obj_clone()
        name = objinst.obj_name()
        changes = sorted(objinst.obj_what_changed())
        rec = {"event": "object_action", "object": name, "method": objmethod, "changes": changes,
               "kwargs": kwargs, "fields": {}}
        if name == "Migration":
            rec["id"] = objinst.id
        elif name in ("Instance", "InstanceFault"):
            rec["instance"] = objinst.instance_uuid if name == "InstanceFault" else objinst.uuid
        for f in changes:
            v = getattr(objinst, f)
            rec["fields"][f] = v if isinstance(v, (str, int, float, bool, type(None))) else str(v)
        if name == "Migration" and objmethod == "save":
            stored = self.db.migrations[objinst.id]
            for f in changes:
                setattr(stored, f, getattr(objinst, f))
            objinst.updated_at = timeutils.utcnow()
            objinst.obj_reset_changes()
            rec["status"] = objinst.status
        elif name == "Instance" and objmethod == "save":
            stored = self.db.instances[objinst.uuid]
            exp = kwargs.get("expected_task_state")
            if exp is not None:
                exps = exp if isinstance(exp, (list, tuple)) else [exp]
                if stored.task_state not in exps:
                    emit({"event": "unexpected_task_state", "expected": exps, "actual": stored.task_state})
                    raise exception.UnexpectedTaskStateError(instance_uuid=objinst.uuid, expected=exps,
                                                             actual=stored.task_state)
            for f in changes:
                setattr(stored, f, getattr(objinst, f))
            objinst.updated_at = timeutils.utcnow()
            objinst.obj_reset_changes()
        elif name == "Instance" and objmethod == "drop_migration_context":
            objinst.migration_context = None
            objinst.obj_reset_changes()
        elif name == "InstanceFault" and objmethod == "create":
            objinst.obj_reset_changes()
        elif name == "Service" and objmethod == "save":
            stored = self.db.services[objinst.host]
            for f in changes:
                setattr(stored, f, getattr(objinst, f))
            objinst.obj_reset_changes()
        else:
            raise NotImplementedError("stand-in has no %s.%s" % (name, objmethod))
        emit(rec)
        updates = {}
        for fname, field in objinst.fields.items():
            if not objinst.obj_attr_is_set(fname):
                continue
            if not oldobj.obj_attr_is_set(fname) or getattr(oldobj, fname) != getattr(objinst, fname):
                updates[fname] = field.to_primitive(objinst, fname, getattr(objinst, fname))
        updates["obj_what_changed"] = objinst.obj_what_changed()
        return updates, None

    def object_class_action_versions(self, context, objname, objmethod, object_versions, args, kwargs):
        emit({"event": "class_action", "object": objname, "method": objmethod, "args": args, "kwargs": kwargs})
        if objname == "Migration" and objmethod == "get_by_id":
            return self.db.migrations[args[0]]
        if objname == "Service" and objmethod == "get_by_host_and_binary":
            host = args[0]
            if host not in self.db.services:  # registered, as a stock nova-compute would have
                svc = objects.Service(id=len(self.db.services) + 1, host=host, binary=args[1], topic="compute",
                                      report_count=0, disabled=False, disabled_reason=None, forced_down=False,
                                      version=64)
                svc.obj_reset_changes()
                self.db.services[host] = svc
            return self.db.services[host]
        if objname == "ComputeNode" and objmethod == "get_first_node_by_host_for_old_compat":
            # The hypervisor names itself otherwise than Nova's host, as in many clouds.
            return objects.ComputeNode(id=len(args[0]), host=args[0], hypervisor_hostname=args[0] + ".hv")
        if objname == "Instance" and objmethod == "get_by_uuid":
            if args[0] not in self.db.instances:
                raise exception.InstanceNotFound(instance_id=args[0])
            return self.db.instances[args[0]]
        if objname == "InstanceActionEvent" and objmethod in ("event_start", "event_finish_with_failure"):
            return None
        raise NotImplementedError("stand-in has no %s.%s" % (objname, objmethod))


def error_info(e):
    return {"class": type(e).__name__, "message": str(e).split("\n")[0],
            "mro": ["%s.%s" % (c.__module__, c.__name__) for c in type(e).__mro__]}


class Driver(object):
    """The conductor's LiveMigrationTask, as far as the computes see it."""

    def __init__(self, db, token):
        self.db = db
        self.api = rpcapi.ComputeAPI()
        self.ctxt = nova_context.RequestContext("7a1c0c5f2e0b4c3d9f8e7d6c5b4a3921", "d0f1e2c3b4a5968778695a4b3c2d1e0f",
                                                is_admin=True, roles=["admin", "member"], request_id="req-ferry-lab",
                                                auth_token=token)
        self.md = {}

    def objects_for(self, cmd):
        uuid = cmd["uuid"]
        if uuid not in self.db.instances:
            flavor = objects.Flavor(id=1, name="m1.lab", memory_mb=cmd.get("memory_mb", 384), vcpus=1, root_gb=1,
                                    ephemeral_gb=0, flavorid="42", swap=0, rxtx_factor=1.0, vcpu_weight=0,
                                    disabled=False, is_public=True, extra_specs={}, description=None)
            net = json.dumps([{"id": p, "address": "fa:16:3e:00:00:01", "type": "ovs", "network": {"id": "n1"}}
                              for p in cmd.get("ports", [])])
            inst = objects.Instance(id=cmd.get("instance_id", 7), uuid=uuid, host=cmd["source"], node=cmd["source"],
                                    user_id=self.ctxt.user_id, project_id=self.ctxt.project_id, power_state=1,
                                    vm_state="active", task_state="migrating", memory_mb=384, vcpus=1, root_gb=1,
                                    ephemeral_gb=0, display_name=cmd.get("name", "vm"), metadata={},
                                    system_metadata={}, flavor=flavor, launched_at=timeutils.utcnow(),
                                    numa_topology=None, migration_context=None, progress=0,
                                    info_cache=objects.InstanceInfoCache(instance_uuid=uuid, network_info=net))
            inst.obj_reset_changes(recursive=True)
            self.db.instances[uuid] = inst
        mid = cmd.get("migration_id", 12)
        if mid not in self.db.migrations:
            mig = objects.Migration(id=mid, uuid=cmd.get("migration_uuid"), source_compute=cmd["source"],
                                    dest_compute=cmd["dest"], source_node=cmd["source"], dest_node=cmd["dest"],
                                    dest_host=None, instance_uuid=uuid, status="accepted",
                                    migration_type=fields.MigrationType.LIVE_MIGRATION, hidden=False,
                                    memory_total=None, memory_processed=None, memory_remaining=None,
                                    disk_total=None, disk_processed=None, disk_remaining=None, cross_cell_move=False,
                                    old_instance_type_id=1, new_instance_type_id=1,
                                    user_id=self.ctxt.user_id, project_id=self.ctxt.project_id,
                                    created_at=timeutils.utcnow())
            mig.obj_reset_changes()
            self.db.migrations[mid] = mig
        return self.db.instances[uuid], self.db.migrations[mid]

    def precheck(self, cmd):
        inst, mig = self.objects_for(cmd)
        try:
            md = self.api.check_can_live_migrate_destination(self.ctxt, inst, cmd["dest"], cmd.get("block_migration"),
                                                            None, mig, None)
        except Exception as e:  # noqa: the class is the answer
            emit(dict(event="precheck_failed", **error_info(e)))
            return None
        emit({"event": "precheck_ok", "migrate_data": md.obj_to_primitive()["nova_object.data"]})
        return md

    def migrate(self, cmd):
        inst, _ = self.objects_for(cmd)
        inst.task_state = "migrating"  # what the API sets before the conductor runs the task
        inst.obj_reset_changes()
        md = self.precheck(cmd)
        if md is None:
            return
        inst, mig = self.objects_for(cmd)
        self.md[mig.id] = md
        self.api.live_migration(self.ctxt, inst, cmd["dest"], cmd.get("block_migration"), cmd["source"], mig, md)
        emit({"event": "cast_sent", "method": "live_migration"})

    def cast(self, cmd):
        """live_migration cast without a pre-check, with the migrate_data a
        pre-check of a block migration would have produced."""
        inst, mig = self.objects_for(cmd)
        inst.task_state = "migrating"
        inst.obj_reset_changes()
        md = objects.LibvirtLiveMigrateData(filename="ferry-cast", image_type="default", block_migration=True,
                                            disk_over_commit=False, disk_available_mb=10240,
                                            is_shared_instance_path=False, is_shared_block_storage=False,
                                            is_volume_backed=False, instance_relative_path=inst.uuid,
                                            graphics_listen_addr_vnc="127.0.0.1",
                                            graphics_listen_addr_spice="127.0.0.1", serial_listen_addr=None)
        self.md[mig.id] = md
        self.api.live_migration(self.ctxt, inst, cmd["dest"], True, cmd["source"], mig, md)
        emit({"event": "cast_sent", "method": "live_migration"})

    def resend(self, cmd):
        inst, mig = self.objects_for(cmd)
        self.api.live_migration(self.ctxt, inst, cmd["dest"], cmd.get("block_migration"), cmd["source"], mig,
                                self.md[mig.id])
        emit({"event": "cast_sent", "method": "live_migration", "again": True})

    def abort(self, cmd):
        inst, mig = self.objects_for(cmd)
        self.api.live_migration_abort(self.ctxt, inst, mig.id)
        emit({"event": "cast_sent", "method": "live_migration_abort"})

    def force_complete(self, cmd):
        inst, mig = self.objects_for(cmd)
        self.api.live_migration_force_complete(self.ctxt, inst, mig)
        emit({"event": "cast_sent", "method": "live_migration_force_complete"})

    def flood(self, cmd):
        """cmd["n"] calls to cmd["host"] whose callers went away (their reply
        exchanges do not exist), published as oslo's rabbit driver publishes a
        call; then one call from this process, answered or refused, timed."""
        import time
        import uuid as uuidlib
        import kombu
        url = config.CONF.transport_url.replace("rabbit://", "amqp://", 1)
        with kombu.Connection(url) as conn:
            producer = conn.Producer()
            for i in range(cmd["n"]):
                msg = {"method": "ferry_lab_flood", "args": {}, "version": "6.0",
                       "_msg_id": uuidlib.uuid4().hex, "_reply_q": "reply_vanished_%d_%s" % (i, uuidlib.uuid4().hex),
                       "_unique_id": uuidlib.uuid4().hex, "_timeout": 60}
                msg.update({"_context_" + k: v for k, v in self.ctxt.to_dict().items()})
                body = json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(msg)})
                producer.publish(body, exchange="nova", routing_key="compute." + cmd["host"],
                                 content_type="application/json", content_encoding="utf-8")
        emit({"event": "flood_sent", "n": cmd["n"]})
        cctxt = self.api.router.client(self.ctxt).prepare(server=cmd["host"], version="6.0", timeout=60)
        t0 = time.monotonic()
        try:
            cctxt.call(self.ctxt, "ferry_lab_ping")
            answer = "result"
        except Exception as e:  # noqa: the refusal is an answer too
            answer = type(e).__name__
        emit({"event": "flood_answered", "seconds": time.monotonic() - t0, "answer": answer})

    def show(self, cmd):
        inst, mig = self.objects_for(cmd)
        emit({"event": "state", "status": mig.status, "host": inst.host, "node": inst.node,
              "task_state": inst.task_state, "power_state": inst.power_state,
              "memory_total": mig.memory_total, "memory_processed": mig.memory_processed})


def main(url, token):
    with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as f:
        f.write("[DEFAULT]\ntransport_url = %s\nrpc_response_timeout = 60\nlong_rpc_timeout = 600\n"
                "[upgrade_levels]\ncompute = zed\n" % url)
    config.parse_args(["nova-conductor-standin", "--config-file", f.name])
    objects.register_all()
    if rpc.TRANSPORT is None:
        rpc.init(config.CONF)
    db = DB()
    # nova.rpc.get_server would pick the eventlet executor; this process uses threads.
    server = messaging.get_rpc_server(rpc.TRANSPORT, messaging.Target(topic="conductor", server="ferry-lab"),
                                      [ConductorStandIn(db)], executor="threading",
                                      serializer=rpc.RequestContextSerializer(objects_base.NovaObjectSerializer()),
                                      access_policy=messaging.DefaultRPCAccessPolicy)
    server.start()
    driver = Driver(db, token)
    emit({"event": "ready"})
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            getattr(driver, cmd["op"])(cmd)
        except Exception as e:  # noqa: report and go on
            emit(dict(event="driver_error", trace=traceback.format_exc(), **error_info(e)))
    server.stop()
    server.wait()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
