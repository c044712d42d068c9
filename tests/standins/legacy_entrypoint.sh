#!/bin/sh
# TEST FIXTURE: the entrypoint as it was before state moved to /data (main before issue 8), so a test
# can make a sandbox with the old layout (HOME=/root) and prove `up` migrates it. Not used by the image.
# One later change: --opencode-bin is the start gate (issue 11), which keeps no state, so the
# old-layout sandbox starts as reliably as a new one.
# Start OpenWork the way the upstream microsandbox image does: `openwork serve` with external
# sidecars (the binaries baked in /usr/local/bin), remote access on OPENWORK_PORT
# (OPENWORK_REMOTE_ACCESS=0 keeps openwork-server on 127.0.0.1, for host networking).
#
# Unlike upstream there are no default tokens: OPENWORK_TOKEN (client) and OPENWORK_HOST_TOKEN
# (host/owner) must be passed in (`invoke up` generates and keeps them per sandbox). Without them
# the script exits 64 rather than serve a well-known secret. Token values are never printed.
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

# Inside a microVM processes start with HOME=/ (or none), and opencode then breaks.
if [ -z "${HOME:-}" ] || [ "$HOME" = "/" ]; then
  HOME=/root
fi
: "${USER:=root}"
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

mkdir -p "$HOME" "$XDG_CONFIG_HOME" "$XDG_DATA_HOME" "$XDG_STATE_HOME" "$XDG_CACHE_HOME" \
  "$OPENWORK_WORKSPACE" "$OPENWORK_DATA_DIR" "$OPENWORK_SIDECAR_DIR"

exec openwork serve \
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
  --openwork-server-bin /usr/local/bin/openwork-server \
  --opencode-bin /usr/local/bin/opencode-gate  # opencode behind a start gate (see opencode-gate.js)
