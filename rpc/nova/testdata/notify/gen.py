#!/usr/bin/python3
"""Nova's own notifications around a live migration, on the source host, for ferry's payload tests.

  /usr/bin/python3 gen.py > notifications.json
  /usr/bin/python3 gen.py edge > notifications-edge.json

Runs python3-nova's (Zed) compute_utils.notify_about_instance_usage and notify_about_instance_action
with [notifications] notification_format = both and oslo.messaging's 'test' notification driver, for
every notification nova-compute's _post_live_migration, _rollback_live_migration,
live_migration_abort and live_migration_force_complete emit on the source, in their order, with the
instance as the source holds it at each point. The Instance goes through NovaObjectSerializer and back
first, as the live_migration cast carries it. Prints one JSON document: the request context as it came
in the cast (its token nulled, as ferry journals it), the instance primitive, and each notification:
the serialized context oslo hands the driver, the message and the priority.
"""
import copy
import datetime
import json
import sys
import tempfile

from nova import config
from nova import context as nova_context
from nova import objects
from nova import rpc
from nova.compute import utils as compute_utils
from nova.network import model as network_model
from nova.objects import base as obj_base
from nova.objects import fields
from oslo_messaging.notify import _impl_test

HOST = "src1"
DEST = "dest1"

NETWORK_INFO = [{
    "id": "a1b2c3d4-0000-4000-8000-000000000001", "address": "fa:16:3e:00:00:01",
    "network": {"id": "b1b2c3d4-0000-4000-8000-000000000002", "bridge": "brq-b1b2c3d4-00", "label": "private",
                "subnets": [{"cidr": "10.0.0.0/24", "dns": [], "gateway": {"address": "10.0.0.1", "type": "gateway",
                                                                           "version": 4, "meta": {}},
                             "ips": [{"address": "10.0.0.5", "type": "fixed", "version": 4, "meta": {},
                                      "floating_ips": [{"address": "172.24.4.9", "type": "floating",
                                                        "version": 4, "meta": {}}]}],
                             "routes": [], "version": 4, "meta": {"dhcp_server": "10.0.0.2"}},
                            {"cidr": "fd00::/64", "dns": [], "gateway": {"address": None, "type": "gateway",
                                                                         "version": None, "meta": {}},
                             "ips": [{"address": "fd00::5", "type": "fixed", "version": 6, "meta": {},
                                      "floating_ips": []}],
                             "routes": [], "version": 6, "meta": {}}],
                "meta": {"injected": False, "tenant_id": "d0f1e2c3b4a5968778695a4b3c2d1e0f", "mtu": 1450}},
    "type": "bridge", "details": {"port_filter": True, "connectivity": "l2"}, "devname": "tapa1b2c3d4-00",
    "ovs_interfaceid": None, "qbh_params": None, "qbg_params": None, "active": True, "vnic_type": "normal",
    "profile": {}, "preserve_on_delete": False, "delegate_create": True, "meta": {}}]


def setup():
    with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as f:
        f.write("[DEFAULT]\ntransport_url = fake:/\nhost = %s\n"
                "[oslo_messaging_notifications]\ndriver = test\n"
                "[notifications]\nnotification_format = both\n"
                "[glance]\napi_servers = http://glance.example:9292\n" % HOST)
    config.parse_args(["nova-compute", "--config-file", f.name])
    objects.register_all()
    rpc.init(config.CONF)


def request_context(edge=False):
    """The context the conductor's live_migration cast carries (an admin's request; edge: a member's,
    with Keystone's domains)."""
    if edge:
        return nova_context.RequestContext(
            user_id="1b2c3d4e5f60718293a4b5c6d7e8f901", project_id="9f8e7d6c5b4a39281706f5e4d3c2b1a0",
            is_admin=False, roles=["member"], request_id="req-11111111-2222-4333-8444-555555555555",
            auth_token="gAAAAAB-secret-token", user_name="alice", project_name="demo",
            user_domain_id="default", project_domain_id="default", remote_address="192.0.2.11",
            timestamp=datetime.datetime(2026, 12, 3, 6, 59, 58))
    return nova_context.RequestContext(
        user_id="7a1c0c5f2e0b4c3d9f8e7d6c5b4a3921", project_id="d0f1e2c3b4a5968778695a4b3c2d1e0f",
        is_admin=True, roles=["admin", "member", "reader"], request_id="req-6d2b1a0c-1f3e-4a5b-9c8d-7e6f5a4b3c2d",
        global_request_id="req-0a9b8c7d-6e5f-4a3b-2c1d-0e9f8a7b6c5d", auth_token="gAAAAAB-secret-token",
        user_name="admin", project_name="admin", remote_address="192.0.2.10",
        timestamp=datetime.datetime(2026, 12, 3, 6, 59, 58, 123456))


def instance(edge=False):
    t = datetime.datetime
    flavor = objects.Flavor(id=1, name="m1.small", memory_mb=2048, vcpus=1, root_gb=20, ephemeral_gb=1,
                            flavorid="42", swap=0, rxtx_factor=1.0, vcpu_weight=0, disabled=False,
                            is_public=True, extra_specs={"hw:cpu_policy": "shared"}, description="small")
    inst = objects.Instance(
        id=7, uuid="f6a9e4d2-3b1c-4c55-9d1e-0c6f1a2b3c4d", user_id="7a1c0c5f2e0b4c3d9f8e7d6c5b4a3921",
        project_id="d0f1e2c3b4a5968778695a4b3c2d1e0f", image_ref="c0ffee00-1111-4222-8333-444455556666",
        kernel_id="", ramdisk_id="", hostname="vm1", host=HOST, node=HOST + ".example.org",
        memory_mb=2048, vcpus=1, root_gb=20, ephemeral_gb=1, instance_type_id=1,
        power_state=1, vm_state="active", task_state="migrating", progress=None,
        display_name="vm1", display_description="vm1", reservation_id="r-3b1c4c55", launch_index=0,
        key_name="mykey", key_data="ssh-ed25519 AAAA", architecture="x86_64", os_type="linux",
        availability_zone="nova", cell_name=None, locked=False, locked_by=None, auto_disk_config=False,
        access_ip_v4=None, access_ip_v6=None, config_drive="", launched_on=HOST,
        created_at=t(2026, 11, 30, 8, 0, 0, tzinfo=datetime.timezone.utc),
        updated_at=t(2026, 12, 3, 6, 59, 57, 654321, tzinfo=datetime.timezone.utc),
        launched_at=t(2026, 11, 30, 8, 0, 12, tzinfo=datetime.timezone.utc),
        terminated_at=None, deleted_at=None, deleted=False, shutdown_terminate=False, disable_terminate=False,
        root_device_name="/dev/vda", default_ephemeral_device=None, default_swap_device=None,
        metadata={"role": "web"},
        system_metadata={"image_min_disk": "20", "image_min_ram": "0", "image_disk_format": "qcow2",
                         "image_container_format": "bare", "image_base_image_ref": "c0ffee00-1111-4222-8333-444455556666",
                         "owner_user_name": "admin", "boot_roles": "admin,member,reader"},
        flavor=flavor, old_flavor=None, new_flavor=None,
        info_cache=objects.InstanceInfoCache(instance_uuid="f6a9e4d2-3b1c-4c55-9d1e-0c6f1a2b3c4d",
                                             network_info=network_model.NetworkInfo.hydrate(NETWORK_INFO)),
        numa_topology=None, migration_context=None, pci_requests=None, security_groups=objects.SecurityGroupList())
    if edge:  # what the common case leaves out: set, true, zero-less and missing values
        inst.progress = 42
        inst.auto_disk_config = True
        inst.power_state = 4
        inst.locked = True
        inst.locked_by = "admin"
        inst.system_metadata = {"locked_reason": "maintenance", "image_hw_disk_bus": "virtio"}
        inst.cell_name = "cell1"
        inst.kernel_id = None
        inst.ramdisk_id = None
        inst.hostname = None
        inst.access_ip_v4 = "192.0.2.33"
        inst.key_name = None
        inst.terminated_at = t(2026, 12, 1, 1, 2, 3, tzinfo=datetime.timezone.utc)
        inst.metadata = {}
        inst.flavor.description = None
        inst.flavor.extra_specs = {}
        inst.info_cache = objects.InstanceInfoCache(instance_uuid=inst.uuid,
                                                    network_info=network_model.NetworkInfo.hydrate([]))
    inst.obj_reset_changes(recursive=True)
    return inst


def over_rpc(ctxt, inst):
    """The instance as the source's nova-compute holds it after the cast: serialized and back."""
    s = obj_base.NovaObjectSerializer()
    prim = json.loads(json.dumps(s.serialize_entity(ctxt, inst)))
    return prim, s.deserialize_entity(ctxt, copy.deepcopy(prim))


def emit(ctxt, inst, legacy, action, phase, network_info=None, bdms=None):
    notifier = rpc.get_notifier("compute", HOST)
    compute_utils.notify_about_instance_usage(notifier, ctxt, inst, legacy, network_info=network_info)
    compute_utils.notify_about_instance_action(ctxt, inst, HOST, action=action, phase=phase, bdms=bdms)


def main(edge):
    setup()
    ctxt = request_context(edge)
    prim, inst = over_rpc(ctxt, instance(edge))
    A, P = fields.NotificationAction, fields.NotificationPhase
    marks = []

    def mark(name):
        marks.append((name, len(_impl_test.NOTIFICATIONS)))

    # _post_live_migration: network_info from the cache, before the bindings move.
    nw = inst.get_network_info()
    mark("post")
    emit(ctxt, inst, "live_migration._post.start", A.LIVE_MIGRATION_POST, P.START, network_info=nw)
    emit(ctxt, inst, "live_migration._post.end", A.LIVE_MIGRATION_POST, P.END, network_info=nw)
    # _rollback_live_migration: the BDMs read from the database (none: companion mode carries no
    # volumes); the task state cleared and the progress zeroed before the end.
    _, inst = over_rpc(ctxt, instance(edge))
    bdms = objects.BlockDeviceMappingList(objects=[])
    mark("rollback")
    emit(ctxt, inst, "live_migration._rollback.start", A.LIVE_MIGRATION_ROLLBACK, P.START, bdms=bdms)
    inst.task_state = None
    inst.progress = 0
    emit(ctxt, inst, "live_migration._rollback.end", A.LIVE_MIGRATION_ROLLBACK, P.END, bdms=bdms)
    # live_migration_abort and live_migration_force_complete: the cast's instance.
    _, inst = over_rpc(ctxt, instance(edge))
    mark("abort")
    emit(ctxt, inst, "live.migration.abort.start", A.LIVE_MIGRATION_ABORT, P.START)
    emit(ctxt, inst, "live.migration.abort.end", A.LIVE_MIGRATION_ABORT, P.END)
    mark("force_complete")
    emit(ctxt, inst, "live.migration.force.complete.start", A.LIVE_MIGRATION_FORCE_COMPLETE, P.START)
    emit(ctxt, inst, "live.migration.force.complete.end", A.LIVE_MIGRATION_FORCE_COMPLETE, P.END)

    cast_ctx = ctxt.to_dict()
    cast_ctx["auth_token"] = None  # ferry journals the cast's context without its token
    out = {"host": HOST, "glance": "http://glance.example:9292", "context": cast_ctx, "instance": prim,
           "notifications": []}
    for i, n in enumerate(_impl_test.NOTIFICATIONS):
        ctx, msg, priority, _ = n
        group = [name for name, at in marks if at <= i][-1]
        out["notifications"].append({"group": group, "topics": "versioned" if ":" in msg["publisher_id"] else "legacy",
                                     "context": ctx, "message": msg, "priority": priority})
    json.dump(out, sys.stdout, indent=1, sort_keys=True, default=str)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1:] == ["edge"])
