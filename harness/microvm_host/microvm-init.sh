#!/bin/sh
# PID 1 of the emulated host (scripts/microvm-host): the run's own init comes through the 9p share
mount -t proc proc /proc 2>/dev/null
mount -t sysfs sys /sys 2>/dev/null
mount -t devtmpfs dev /dev 2>/dev/null  # the kernel may have mounted it already
modprobe 9pnet_virtio 2>/dev/null; modprobe 9p 2>/dev/null
mkdir -p /share
if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 share /share; then
  echo "microvm-init: cannot mount the 9p share" >/dev/console
  echo o >/proc/sysrq-trigger; sleep 60
fi
exec /usr/bin/tini -s -- /bin/bash /share/init.sh
