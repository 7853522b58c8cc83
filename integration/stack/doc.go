// Package stack builds a real OpenStack around the lab's two libvirt hosts
// from Debian 12's own Zed packages, so that tests, benches and the demo
// meet Nova the way an operator runs it: Keystone (fernet, password auth for
// every service), Glance, Placement, nova-api, nova-conductor and
// nova-scheduler, neutron-server with ML2/linuxbridge and a VXLAN tenant
// network, and, inside each lab host's network, mount and UTS namespaces, a
// stock nova-compute (libvirt driver, virt_type qemu) and a
// neutron-linuxbridge-agent.
//
// Where things listen: the lab hosts' loopbacks are private, so the shared
// services listen on the root namespaces' address on the lab's management
// network (lab.RootMgmtAddr) and, where the server can take two sockets
// (the uwsgi ones), on 127.0.0.1 as well. The catalog names the management
// address. MariaDB (its own datadir, socket and port) serves only the
// root namespaces; RabbitMQ stays as the machine runs it (127.0.0.1), with a
// vhost and user of the stack's own, relayed onto the management address.
//
// Nova-booted guests need the lab's QEMU 7.2 TCG workaround too, but Nova
// writes the domain XML itself: each host's mount namespace has a shim
// bind-mounted over /usr/bin/qemu-system-x86_64 that runs the lab's
// wrapper with the real binary taken from a private bind mount.
//
// Lifecycle: one stack runs on a machine at a time, and it holds the lab
// (and its lock) for its whole life. Start reaps what a killed run left
// (its record is /run/ferry-stack/record.json); Close, or SIGINT/SIGTERM,
// tears it down once. A running stack publishes /run/ferry-stack/state.json
// so that other processes — the test packages of one CI run, a person's
// shell after `make stack` — attach to it instead of starting their own
// (Acquire). Initialised databases are cached per package version under
// /var/cache/ferry-stack, so only the first start on a machine pays for the
// schema migrations.
package stack
