#!/bin/sh
# Start OpenWork the way the upstream microsandbox image does: `openwork serve` with external
# sidecars (the binaries baked in /usr/local/bin), remote access on OPENWORK_PORT
# (OPENWORK_REMOTE_ACCESS=0 keeps openwork-server on 127.0.0.1, for host networking).
#
# Unlike upstream there are no default tokens: OPENWORK_TOKEN (client) and OPENWORK_HOST_TOKEN
# (host/owner) must be passed in (`invoke up` generates and keeps them per sandbox). Without them
# the script exits 64 rather than serve a well-known secret. Token values are never printed.
#
# Everything the programs keep that a user would miss lives under /data (a bind mount that
# outlives the sandbox): HOME defaults to /data/home, so opencode's database, config and state
# (XDG_*_HOME under HOME) and openwork-server's token store ($HOME/.config/openwork/tokens.json)
# survive a new container or VM. A /data that cannot be written ends the script with exit 73 and
# one line saying so, rather than a server that keeps nothing. Run as root with a /data owned by
# someone else (a runtime that cannot run as the user), it hands earlier files back to that owner
# and runs the server as that owner (setpriv), so every file it makes belongs to the user.
set -eu

: "${OPENWORK_WORKSPACE:=/workspace}"
: "${OPENWORK_DATA_DIR:=/data/openwork-orchestrator}"
: "${OPENWORK_SIDECAR_DIR:=/data/sidecars}"
: "${OPENWORK_PORT:=8787}"
: "${OPENWORK_OPENCODE_PORT:=4096}"
: "${OPENWORK_APPROVAL_MODE:=auto}"
: "${OPENWORK_CORS_ORIGINS:=*}"
: "${OPENWORK_CONNECT_HOST:=127.0.0.1}"
: "${OPENWORK_REMOTE_ACCESS:=1}"  # 0: openwork-server on 127.0.0.1 only (Docker with host networking)

missing=""
[ -n "${OPENWORK_TOKEN:-}" ] || missing="OPENWORK_TOKEN"
[ -n "${OPENWORK_HOST_TOKEN:-}" ] || missing="${missing:+$missing and }OPENWORK_HOST_TOKEN"
if [ -n "$missing" ]; then
  echo "microsandbox-entrypoint: $missing not set; pass them in (e.g. docker run -e OPENWORK_TOKEN=... -e OPENWORK_HOST_TOKEN=...); this image has no default tokens" >&2
  exit 64
fi

# Inside a microVM processes start with HOME=/ (or none), and opencode then breaks; a uid with no
# passwd entry gets HOME=/ from Docker, and /root is the image user's default (root's home is
# thrown away with the container): all of them mean "not chosen by the caller".
if [ -z "${HOME:-}" ] || [ "$HOME" = "/" ] || [ "$HOME" = "/root" ]; then
  HOME=/data/home  # on the /data bind mount: it outlives the sandbox
fi

# /data must be writable: a server that runs and keeps nothing is worse than one that does not start.
probe="/data/.openwork-write-probe.$$"
if ! { mkdir -p /data && printf 'probe\n' > "$probe"; } 2>/dev/null; then
  echo "microsandbox-entrypoint: /data is not writable by uid $(id -u) (read-only, full, or owned by another user); the sandbox would keep nothing: make the host folder mounted at /data writable for this user" >&2
  exit 73
fi
rm -f "$probe"

# Root in a sandbox whose /data belongs to a user (a runtime that cannot run as that user): hand
# what earlier runs made back to that owner, and run the server as the owner from here on.
run_as=""
if [ "$(id -u)" = 0 ]; then
  owner="$(stat -c %u:%g /data)"
  if [ "${owner%%:*}" != 0 ]; then
    for dir in /data "$OPENWORK_WORKSPACE"; do
      [ -d "$dir" ] && find "$dir" -xdev \( ! -user "${owner%%:*}" -o ! -group "${owner##*:}" \) \
        -exec chown -h "$owner" {} + 2>/dev/null || true
    done
    if command -v setpriv >/dev/null 2>&1; then
      run_as="setpriv --reuid=${owner%%:*} --regid=${owner##*:} --clear-groups --"
    fi
  fi
fi

if [ -n "$run_as" ]; then
  : "${USER:=$(id -un "${owner%%:*}" 2>/dev/null || echo "${owner%%:*}")}"
else
  : "${USER:=$(id -un 2>/dev/null || id -u)}"
fi
: "${SHELL:=/bin/sh}"
: "${XDG_CONFIG_HOME:=$HOME/.config}"
: "${XDG_DATA_HOME:=$HOME/.local/share}"
: "${XDG_STATE_HOME:=$HOME/.local/state}"
: "${XDG_CACHE_HOME:=$HOME/.cache}"
export HOME USER SHELL XDG_CONFIG_HOME XDG_DATA_HOME XDG_STATE_HOME XDG_CACHE_HOME
export OPENWORK_WORKSPACE OPENWORK_DATA_DIR OPENWORK_SIDECAR_DIR OPENWORK_PORT OPENWORK_OPENCODE_PORT
remote=--remote-access
case "$OPENWORK_REMOTE_ACCESS" in
  0|false|no|off) remote="" ;;
esac
export OPENWORK_REMOTE_ACCESS
# The tokens reach `openwork serve` through its environment (it reads OPENWORK_TOKEN and
# OPENWORK_HOST_TOKEN when --openwork-token/--openwork-host-token are not given), so they never
# appear in a process's command line (`ps` on a Docker host shows the container's processes).
export OPENWORK_TOKEN OPENWORK_HOST_TOKEN

$run_as mkdir -p "$HOME" "$XDG_CONFIG_HOME" "$XDG_DATA_HOME" "$XDG_STATE_HOME" "$XDG_CACHE_HOME" \
  "$OPENWORK_WORKSPACE" "$OPENWORK_DATA_DIR" "$OPENWORK_SIDECAR_DIR"

# openwork-supervise restarts `openwork serve` when it (or a program it runs) dies, and passes
# SIGTERM/SIGINT on to it; OPENWORK_SUPERVISE=0 runs it without (exactly as upstream: exec).
supervise=/usr/local/bin/openwork-supervise
case "${OPENWORK_SUPERVISE:-1}" in 0|false|no|off) supervise="" ;; esac

exec $run_as $supervise openwork serve \
  --workspace "$OPENWORK_WORKSPACE" \
  $remote \
  --openwork-port "$OPENWORK_PORT" \
  --opencode-host 127.0.0.1 \
  --opencode-port "$OPENWORK_OPENCODE_PORT" \
  --approval "$OPENWORK_APPROVAL_MODE" \
  --cors "$OPENWORK_CORS_ORIGINS" \
  --connect-host "$OPENWORK_CONNECT_HOST" \
  --allow-external \
  --sidecar-source external \
  --opencode-source external \
  --openwork-server-bin /usr/local/bin/openwork-server-gate \
  --opencode-bin /usr/local/bin/opencode-gate  # opencode behind a start gate (see opencode-gate.js)
