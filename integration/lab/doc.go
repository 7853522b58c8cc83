// Package lab stands up libvirt compute hosts side by side on one machine,
// so that ferry's integration tests and the demo migrate real QEMU guests.
//
// Each host has its own network, mount and UTS namespaces, its own libvirtd
// with private /etc, /run, /var/lib, /var/log and /var/cache trees, a
// distinct host UUID and host name, and two networks: management
// (198.18.0.0/24: libvirt control, peer-to-peer) and migration
// (198.19.0.0/24: RAM and disk streams). The root namespaces reach each
// libvirtd through a unix socket under StateDir; hosts reach each other over
// TCP on their management addresses. Volumes stand in for Cinder: a loop
// block device (a pre-presented SAN LUN) and an NBD export served by
// qemu-nbd on the management bridge, both reachable from every host.
//
// Guests run under TCG (this kind of machine's /dev/kvm is PVM and cannot
// boot a stock kernel) through a wrapper that works around QEMU 7.2's TCG
// dirty-tracking bug. A guest proves liveness with a heartbeat on its serial
// console; Continuity tells whether a migration preserved it.
//
// Everything a run creates is written to StateDir/record.json before it is
// created, so Start first reaps what a crashed or killed run left behind;
// Close and a SIGINT/SIGTERM handler tear the current run down.
package lab
