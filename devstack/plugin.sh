#!/bin/bash
# devstack plugin for ferry: builds ferryd, writes /etc/ferry/ferryd.yaml from
# nova-compute's configuration (host, transport_url, instances_path, the
# [libvirt] live_migration_* knobs and [oslo_messaging_rabbit]'s queue and
# ssl options under the same names, [placement] and [neutron] credentials),
# and runs ferryd as a devstack service.
#
# FERRY_MODE=companion (the default with n-cpu enabled, the deployment
# shape): ferryd runs beside n-cpu and owns live migration. Before ferryd
# starts, `ferryd cutover to-companion` moves the host's compute traffic to
# ferryd's queue, sets the alternate-exchange policy and restarts n-cpu on its
# private exchange (control_exchange = ferry-<host> in nova-cpu.conf).
# `ferryd cutover --config /etc/ferry/ferryd.yaml to-stock` gives the host back.
# FERRY_MODE=native (the lab mode): ferryd answers the host's live-migration
# RPCs itself, so n-cpu must not run on the host.

function install_ferry {
    if ! command -v go >/dev/null; then
        die $LINENO "ferry needs Go (>= 1.25) on PATH"
    fi
    (cd $FERRY_DIR && go build -o $FERRY_BIN ./cmd/ferryd) || die $LINENO "building ferryd failed"
}

# nova-compute's own configuration: devstack's nova-cpu.conf where it has one.
function _nova_compute_conf {
    if [[ -n "$NOVA_CPU_CONF" && -f "$NOVA_CPU_CONF" ]]; then
        echo "$NOVA_CPU_CONF"
    else
        echo "$NOVA_CONF"
    fi
}

function _nova_opt {
    iniget $(_nova_compute_conf) "$1" "$2"
}

# _keystone_section SECTION: nova.conf's credentials for a service, as a
# ferryd Keystone block (auth_type none when nova.conf has none).
function _keystone_section {
    local out="" k v
    v=$(_nova_opt $1 auth_type)
    out+="  auth_type: ${v:-none}"$'\n'
    for k in auth_url username password project_name user_domain_name project_domain_name region_name \
             valid_interfaces endpoint_override; do
        v=$(_nova_opt $1 $k)
        [[ "$k" == valid_interfaces ]] && v=${v%%,*} # ferry takes the first of Nova's list
        v=${v//\\/\\\\}
        v=${v//\"/\\\"}
        [[ -n "$v" ]] && out+="  $k: \"$v\""$'\n'
    done
    echo -n "${out%$'\n'}"
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
    # TLS to the broker: nova.conf's ssl options (or their deprecated
    # names, which oslo still reads), so ferryd dials as nova-compute does.
    local pair new old
    for pair in ssl:rabbit_use_ssl ssl_enforce_fips_mode: ssl_version:kombu_ssl_version \
                ssl_ca_file:kombu_ssl_ca_certs ssl_cert_file:kombu_ssl_certfile ssl_key_file:kombu_ssl_keyfile; do
        new=${pair%%:*} old=${pair#*:}
        v=$(_nova_opt oslo_messaging_rabbit $new)
        [[ -z "$v" && -n "$old" ]] && v=$(_nova_opt oslo_messaging_rabbit $old)
        [[ -z "$v" ]] && continue
        case $new in
            ssl|ssl_enforce_fips_mode) oslo+="  $new: ${v,,}"$'\n' ;;
            *) v=${v//\\/\\\\}; v=${v//\"/\\\"}; oslo+="  $new: \"$v\""$'\n' ;;
        esac
    done
    v=$(_nova_opt oslo_messaging_rabbit heartbeat_timeout_threshold)
    [[ -n "$v" ]] && oslo+="  heartbeat_timeout_threshold: ${v}s"$'\n'
    for k in rpc_response_timeout long_rpc_timeout; do
        v=$(_nova_opt DEFAULT $k)
        [[ -n "$v" ]] && oslo+="  $k: ${v}s"$'\n'
    done
    # Placement: where ferryd settles a migration's allocations, with the
    # credentials nova-compute uses (nova.conf's [placement]).
    local placement
    placement=$(_keystone_section placement)
    # Companion mode: Neutron's credentials (the port bindings), and what
    # the cut-over needs to stop and start n-cpu and edit its configuration.
    local companion=""
    if [[ "$FERRY_MODE" == "companion" ]]; then
        local neutron timeout fatal
        neutron=$(_keystone_section neutron)
        timeout=$(_nova_opt DEFAULT vif_plugging_timeout)
        fatal=$(_nova_opt DEFAULT vif_plugging_is_fatal)
        companion="mode: companion
neutron:
${neutron}
companion:
  vif_plugging_timeout: ${timeout:-300}s
  vif_plugging_is_fatal: $(v=${fatal:-true}; echo ${v,,})
  cutover:
    nova_compute_config: $(_nova_compute_conf)
    stop: [systemctl, stop, devstack@n-cpu.service]
    start: [systemctl, start, devstack@n-cpu.service]"
    fi
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
${companion}
YAML
    sudo chmod 0600 $FERRY_CONF_DIR/ferryd.yaml
}

function start_ferry {
    case "$FERRY_MODE" in
    native)
        if is_service_enabled n-cpu; then
            die $LINENO "ferryd in native mode cannot share compute.<host> with nova-compute: disable n-cpu or use FERRY_MODE=companion"
        fi
        ;;
    companion)
        if ! is_service_enabled n-cpu; then
            die $LINENO "ferryd in companion mode runs beside nova-compute: enable n-cpu or use FERRY_MODE=native"
        fi
        sudo $FERRY_BIN cutover --config $FERRY_CONF_DIR/ferryd.yaml to-companion || die $LINENO "the cut-over to companion mode failed"
        ;;
    *)
        die $LINENO "FERRY_MODE=$FERRY_MODE: want companion or native"
        ;;
    esac
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
