#!/bin/busybox sh
# ferry lab guest init: mount the pseudo filesystems, load the virtio block
# driver, then hand over to the agent (heartbeat, dirtier, disk ticks).
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
for m in $(/bin/busybox cat /lib/modules/load-order); do
	/bin/busybox insmod /lib/modules/$m.ko || echo "INIT insmod $m failed"
done
i=0
while [ ! -e /sys/block/vda ] && [ $i -lt 100 ]; do
	/bin/busybox sleep 0.1
	i=$((i + 1))
done
exec /agent
