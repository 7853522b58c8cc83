#!/bin/bash
# devstack plugin for ferry: builds ferryd, writes /etc/ferry/ferryd.yaml from
# nova.conf's values (host, transport_url, instances_path and the [libvirt]
# live_migration_* knobs, under the same names), and runs ferryd as a devstack
# service.
#
# Native mode only: ferryd then answers this host's live-migration RPCs
# itself, so nova-compute must not run on the host (disable_service n-cpu).
# Companion mode, where ferryd runs beside nova-compute, is not built yet;
# the plugin refuses to start ferryd next to n-cpu rather than let two
# consumers split the compute.<host> queue.

function install_ferry {
    if ! command -v go >/dev/null; then
        die $LINENO "ferry needs Go (>= 1.25) on PATH"
    fi
    (cd $FERRY_DIR && go build -o $FERRY_BIN ./cmd/ferryd) || die $LINENO "building ferryd failed"
}

function _nova_opt {
    iniget $NOVA_CONF "$1" "$2"
}

function configure_ferry {
    sudo install -d -m 0755 $FERRY_CONF_DIR
    sudo install -d -m 0700 $FERRY_STATE_DIR
    local host transport instances cache inbound
    host=$(_nova_opt DEFAULT host)
    host=${host:-$(hostname)}
    transport=$(_nova_opt DEFAULT transport_url)
    instances=$(_nova_opt DEFAULT instances_path)
    instances=${instances:-$NOVA_STATE_PATH/instances}
    cache=$(_nova_opt image_cache subdirectory_name)
    cache=${cache:-_base}
    inbound=$(_nova_opt libvirt live_migration_inbound_addr)
    inbound=${inbound:-$FERRY_MIGRATION_ADDR}
    local knobs="" oslo="" k v
    for k in live_migration_downtime live_migration_completion_timeout live_migration_timeout_action \
             live_migration_permit_post_copy live_migration_permit_auto_converge live_migration_bandwidth \
             live_migration_scheme live_migration_with_native_tls; do
        v=$(_nova_opt libvirt $k)
        [[ -n "$v" ]] && knobs+="  $k: ${v,,}"$'\n'
    done
    v=$(_nova_opt DEFAULT max_concurrent_live_migrations)
    # Nova reads 0 as "unlimited"; ferry wants a bound and keeps its default, 1.
    [[ -n "$v" && "$v" != 0 ]] && knobs+="  max_concurrent_live_migrations: $v"$'\n'
    # The queue settings must match the deployment's, or ferryd refuses to
    # start (a durability mismatch would break the other consumers).
    for k in amqp_durable_queues amqp_auto_delete rabbit_quorum_queue rabbit_ha_queues rabbit_qos_prefetch_count; do
        v=$(_nova_opt oslo_messaging_rabbit $k)
        [[ -n "$v" ]] && oslo+="  $k: ${v,,}"$'\n'
    done
    v=$(_nova_opt oslo_messaging_rabbit heartbeat_timeout_threshold)
    [[ -n "$v" ]] && oslo+="  heartbeat_timeout_threshold: ${v}s"$'\n'
    for k in rpc_response_timeout long_rpc_timeout; do
        v=$(_nova_opt DEFAULT $k)
        [[ -n "$v" ]] && oslo+="  $k: ${v}s"$'\n'
    done
    # Placement: where ferryd settles a migration's allocations, with the
    # credentials nova-compute uses (nova.conf's [placement]).
    local placement=""
    v=$(_nova_opt placement auth_type)
    placement+="  auth_type: ${v:-none}"$'\n'
    for k in auth_url username password project_name user_domain_name project_domain_name region_name \
             valid_interfaces endpoint_override; do
        v=$(_nova_opt placement $k)
        [[ "$k" == valid_interfaces ]] && v=${v%%,*} # ferry takes the first of Nova's list
        v=${v//\\/\\\\}
        v=${v//\"/\\\"}
        [[ -n "$v" ]] && placement+="  $k: \"$v\""$'\n'
    done
    placement=${placement%$'\n'}
    # An empty block is written as {}; the brace is escaped because an
    # unescaped one ends the ${...:-} expansion early and leaves a stray "}".
    sudo tee $FERRY_CONF_DIR/ferryd.yaml >/dev/null <<YAML
version: 1
host: $host
transport_url: "$transport"
libvirt_uri: qemu:///system
live_migration_inbound_addr: $inbound
instances_path: $instances
image_cache_subdirectory_name: $cache
state_dir: $FERRY_STATE_DIR
oslo_messaging_rabbit:
${oslo:-  {\}}
migration:
${knobs:-  {\}}
placement:
${placement}
YAML
    sudo chmod 0600 $FERRY_CONF_DIR/ferryd.yaml
}

function start_ferry {
    if is_service_enabled n-cpu && [[ "$FERRY_MODE" == "native" ]]; then
        die $LINENO "ferryd in native mode cannot share compute.<host> with nova-compute: disable n-cpu or wait for companion mode"
    fi
    run_process ferryd "$FERRY_BIN --config $FERRY_CONF_DIR/ferryd.yaml" root root
}

function stop_ferry {
    stop_process ferryd
}

if is_service_enabled ferryd; then
    if [[ "$1" == "stack" && "$2" == "install" ]]; then
        install_ferry
    elif [[ "$1" == "stack" && "$2" == "post-config" ]]; then
        configure_ferry
    elif [[ "$1" == "stack" && "$2" == "extra" ]]; then
        start_ferry
    fi
    if [[ "$1" == "unstack" ]]; then
        stop_ferry
    fi
fi
