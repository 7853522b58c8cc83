#!/bin/bash
# Installs what the demo and the tests need on a fresh Debian 12 machine
# (root), and starts RabbitMQ when it is not running. Quick when all is there.
# Package scripts must not start services: a root-namespace libvirtd would
# bring Debian's default network with dnsmasq, and the lab runs its own
# libvirtd per host instead.
set -euo pipefail

pkgs=(
	libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils
	busybox-static iproute2 kmod rabbitmq-server
	python3-oslo.messaging python3-nova python3-placement
	# integration/stack: Debian's OpenStack Zed around the lab
	mariadb-server mariadb-client uwsgi-plugin-python3 python3-openstackclient
	keystone glance-api placement-api nova-api nova-conductor nova-scheduler
	nova-compute nova-compute-qemu neutron-server neutron-linuxbridge-agent
	ipset iptables ebtables bridge-utils
)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "deps: installing ${missing[*]}"
	made_policy=0
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\n# ferry deps.sh: no service starts during package installs\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 755 /usr/sbin/policy-rc.d
		made_policy=1
	fi
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	[ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
	echo "deps: installed"
fi
# The lab takes its guest kernel from this package (downloaded, not installed).
if ! apt-cache show linux-image-amd64 >/dev/null 2>&1; then
	apt-get update -qq
fi

if ! timeout 20 rabbitmqctl -q status >/dev/null 2>&1; then
	echo "deps: starting rabbitmq-server"
	rabbitmq-server -detached
	for i in $(seq 1 60); do
		timeout 10 rabbitmqctl -q await_startup >/dev/null 2>&1 && break
		sleep 1
	done
	timeout 20 rabbitmqctl -q status >/dev/null
fi
echo "deps: ok"
