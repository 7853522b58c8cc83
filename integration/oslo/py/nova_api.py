#!/usr/bin/python3
"""Drive a compute host through python3-nova's own ComputeAPI (Zed), with real Nova objects.

  nova_api.py URL DEST SOURCE

Sends check_can_live_migrate_destination (call) to DEST and live_migration (cast) to SOURCE, exactly
as the conductor does, and prints one JSON line: what came back, and whether the objects the Go side
echoed deserialized to the very objects that were sent.
"""
import json
import sys
import tempfile

from oslo_utils import timeutils

from nova import config
from nova import context as nova_context
from nova import objects
from nova import rpc
from nova.compute import rpcapi
from nova.objects import fields


def norm(p):
    """A primitive with every nova_object.changes list sorted: obj_to_primitive lists a set, whose
    order differs between two equal sets built in different insertion orders (with the right hash
    seed, Python's own JSON round trip of this Instance compares unequal ~7% of the time)."""
    if isinstance(p, dict):
        return {k: sorted(v) if k == "nova_object.changes" else norm(v) for k, v in p.items()}
    if isinstance(p, list):
        return [norm(v) for v in p]
    return p


def main(url, dest, source):
    with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as f:
        f.write("[DEFAULT]\ntransport_url = %s\nrpc_response_timeout = 30\nlong_rpc_timeout = 60\n"
                "[upgrade_levels]\ncompute = zed\n" % url)
    config.parse_args(["nova-ferry-test", "--config-file", f.name])
    objects.register_all()
    rpc.init(config.CONF) if rpc.TRANSPORT is None else None
    ctxt = nova_context.RequestContext("7a1c0c5f2e0b4c3d9f8e7d6c5b4a3921", "d0f1e2c3b4a5968778695a4b3c2d1e0f",
                                       is_admin=True, roles=["admin"], request_id="req-ferry-1")
    flavor = objects.Flavor(id=1, name="m1.small", memory_mb=256, vcpus=1, root_gb=1, ephemeral_gb=0,
                            flavorid="42", swap=0, rxtx_factor=1.0, vcpu_weight=0, disabled=False,
                            is_public=True, extra_specs={}, description=None)
    instance = objects.Instance(id=7, uuid="f6a9e4d2-3b1c-4c55-9d1e-0c6f1a2b3c4d", host=source, node=source,
                                user_id=ctxt.user_id, project_id=ctxt.project_id, power_state=1,
                                vm_state="active", task_state="migrating", memory_mb=256, vcpus=1,
                                root_gb=1, ephemeral_gb=0, display_name="vm1", metadata={"k": "v"},
                                system_metadata={}, flavor=flavor, launched_at=timeutils.utcnow(),
                                numa_topology=None, migration_context=None)
    instance.obj_reset_changes()
    migration = objects.Migration(id=12, uuid="5f3c2a10-7e4b-4d8e-a1c2-33445566aabb", source_compute=source,
                                  dest_compute=dest, source_node=source, dest_node=dest, dest_host=None,
                                  instance_uuid=instance.uuid, status="accepted",
                                  migration_type=fields.MigrationType.LIVE_MIGRATION, hidden=False,
                                  memory_total=None, memory_processed=None, memory_remaining=None,
                                  disk_total=None, disk_processed=None, disk_remaining=None,
                                  cross_cell_move=False, old_instance_type_id=1, new_instance_type_id=1,
                                  user_id=ctxt.user_id, project_id=ctxt.project_id)
    api = rpcapi.ComputeAPI()
    out = {}
    back = api.check_can_live_migrate_destination(ctxt, instance, dest, None, None, migration, None)
    out["returned_class"] = type(back).__name__
    out["echo_equal"] = False
    out["echo_uuid"] = getattr(back, "uuid", None)
    if type(back).__name__ == "Instance":
        a, b = norm(instance.obj_to_primitive()), norm(back.obj_to_primitive())
        out["echo_equal"] = a == b
        if a != b:  # say where they differ
            out["echo_diff"] = {k: [repr(a.get(k)), repr(b.get(k))] for k in set(a) | set(b) if a.get(k) != b.get(k)}
            da, db = a.get("nova_object.data", {}), b.get("nova_object.data", {})
            out["echo_data_diff"] = {k: [repr(da.get(k)), repr(db.get(k))] for k in set(da) | set(db) if da.get(k) != db.get(k)}
    migrate_data = objects.LibvirtLiveMigrateData(is_shared_instance_path=False, is_shared_block_storage=False,
                                                  block_migration=True, instance_relative_path=instance.uuid,
                                                  filename="tmpab12cd34", image_type="default",
                                                  graphics_listen_addr_vnc="127.0.0.1",
                                                  graphics_listen_addr_spice="127.0.0.1",
                                                  serial_listen_addr=None, is_volume_backed=False,
                                                  dst_wants_file_backed_memory=False, vifs=[])
    api.live_migration(ctxt, instance, dest, None, source, migration, migrate_data)
    out["cast_sent"] = True
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:4])
