#!/bin/bash
# The run's init in the emulated host (scripts/microvm-host writes it into the share each run).
S=/share
exec >/dev/console 2>&1
log() { echo "microvm-init: $*"; }
phase() { echo "$1 $(cut -d' ' -f1 /proc/uptime)" >>"$S/phases"; }
poweroff_now() { sync; echo o >/proc/sysrq-trigger; sleep 60; }
setup_failed() { log "setup failed: $*"; collect; echo "$*" >"$S/setup-failed"; poweroff_now; }
collect() {
  mkdir -p "$S/logs"
  for f in /var/lib/microvm-services/dockerd.log /var/lib/microvm-services/registry.log; do
    [ -f "$f" ] && tail -c 200000 "$f" >"$S/logs/$(basename "$f")"
  done
  dmesg >"$S/logs/dmesg.txt" 2>/dev/null
}
trap 'collect; poweroff_now' EXIT
phase init
mkdir -p /dev/pts /dev/shm /run /tmp /sys/fs/cgroup
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
for l in fd:/proc/self/fd stdin:/proc/self/fd/0 stdout:/proc/self/fd/1 stderr:/proc/self/fd/2; do
  [ -e "/dev/${l%%:*}" ] || ln -s "${l#*:}" "/dev/${l%%:*}"
done
hostname microvm-host
ip link set lo up || setup_failed "cannot bring up loopback"
( n=0; while :; do n=$((n+1)); echo "$n $(cut -d' ' -f1 /proc/uptime)" >"$S/heartbeat.tmp" && mv -f "$S/heartbeat.tmp" "$S/heartbeat"; sleep 3; done ) &
modprobe kvm_amd || setup_failed "modprobe kvm_amd failed (does the QEMU CPU offer svm?)"
for i in $(seq 50); do [ -c /dev/kvm ] && break; sleep 0.1; done
[ -c /dev/kvm ] || setup_failed "no /dev/kvm after modprobe kvm_amd"
chmod 0666 /dev/kvm
modprobe overlay 2>/dev/null; modprobe br_netfilter 2>/dev/null; modprobe vhost_vsock 2>/dev/null
phase kvm
source "$S/env.sh"
rm -rf "@CHECKOUT@"/* "@CHECKOUT@"/.[!.]* 2>/dev/null
tar -C "@CHECKOUT@" -xf "$S/checkout.tar" || setup_failed "cannot unpack the checkout"
phase checkout
cd "@CHECKOUT@"
if [ -f "$S/registry.tar" ]; then  # the registry's storage with the image in it, before the registry starts
  mkdir -p /var/lib/microvm-services/registry-data
  tar -C /var/lib/microvm-services/registry-data -xf "$S/registry.tar" || setup_failed "cannot unpack the registry's storage"
fi
OPENWORK_SERVICES_DIR=/var/lib/microvm-services OPENWORK_SERVICES_WAIT=${OPENWORK_SERVICES_WAIT:-300} \
  scripts/services start || setup_failed "scripts/services start failed in the emulated host (dockerd or the registry)"
phase services
load_image() {  # prints why it failed; the "image" phase marks its end
  mkdir -p "$S/logs"
  ( while :; do { date; top -bn1 | head -20; } >>"$S/logs/top-during-load.txt"; sleep 20; done ) >/dev/null 2>&1 & top_pid=$!
  docker load -i "$S/image.tar" >"$S/logs/image-load.txt" 2>&1 || { kill $top_pid; echo "docker load of the image failed: $(tail -1 "$S/logs/image-load.txt")"; return 1; }
  kill $top_pid 2>/dev/null
  ref=$(cat "$S/image-ref"); id=$(cat "$S/image-id")
  case "$ref" in *@*) ;; *) docker tag "$id" "$ref" || { echo "docker tag $id $ref failed"; return 1; } ;; esac
  phase image
}
if [ ! -f "$S/image.tar" ]; then
  phase image
elif [ -f "$S/load-in-background" ]; then  # the command waits for $S/image-load.rc when it needs the engine's copy
  ( why=$(load_image); rc=$?; echo "$why" >"$S/image-load.why"; echo $rc >"$S/image-load.rc" ) &
else
  why=$(load_image) || setup_failed "$why"
fi
mapfile -d '' -t cmd <"$S/cmd"
log "running: ${cmd[*]}"
phase cmd-start
( cd "@CHECKOUT@" && exec "${cmd[@]}" ) >"$S/stdout" 2>"$S/stderr" </dev/null
rc=$?
phase cmd-end
echo "$rc" >"$S/rc.tmp" && mv -f "$S/rc.tmp" "$S/rc"
log "command exited $rc; powering off"
