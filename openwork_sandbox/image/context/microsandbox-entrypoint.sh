#!/bin/sh
# Start OpenWork the way the upstream images do: `openwork serve` with external sidecars (the
# binaries baked in /usr/local/bin), or with OPENWORK_LAUNCH=server openwork-server alone, which
# starts opencode itself (the end of this file); remote access on OPENWORK_PORT
# (OPENWORK_REMOTE_ACCESS=0 keeps openwork-server on 127.0.0.1, for host networking).
#
# Unlike upstream there are no default tokens: the client and host tokens must be passed in, as
# files (OPENWORK_TOKEN_FILE, OPENWORK_HOST_TOKEN_FILE: `invoke up` mounts them read-only under
# /srv/openwork/secrets) or, for a hand-made `docker run`, as OPENWORK_TOKEN / OPENWORK_HOST_TOKEN.
# Without them the script exits 64 rather than serve a well-known secret. Token values are never printed.
#
# Everything the programs keep that a user would miss lives under /data (a bind mount that
# outlives the sandbox): HOME defaults to /data/home, so opencode's database, config and state
# (XDG_*_HOME under HOME) survive a new container or VM. A /data that cannot be written ends the
# script with exit 73 and one line saying so, rather than a server that keeps nothing.
#
# The boundary (started as root, as `invoke up` starts it): the server side (the orchestrator,
# openwork-server, their gates) and the agent (opencode and every command it runs) are kept apart.
# - /srv/openwork is root's, 0700: the agent cannot enter it. It holds the token files (secrets/,
#   read-only) and the server's private store (store/: issued tokens, OPENWORK_TOKEN_STORE), both
#   mounted there by `up`; a store found in the agent's home (older layouts) is moved in.
# - The server side and the agent run as the owner of /data (the user's uid on the host, so every
#   file stays the user's; when /data is root's, uid 61001, which is given the folders), the server
#   side with CAP_DAC_READ_SEARCH as an ambient capability: it can enter /srv/openwork, and a
#   process without that capability cannot read its memory, environment or descriptors (/proc).
# - opencode-gate leaves the server side before it starts opencode: an environment of its own
#   (no token), no capabilities, no_new_privs (see opencode-gate).
# Started as another user (`docker run --user`), nothing can be separated: it says so and goes on.
#
# A Kubernetes pod (`invoke manifests`) is the other way: OPENWORK_POD_ROLE=server|agent, an internal
# interface the manifest sets, names this container's side. The pod keeps the sides apart (two
# non-root containers, separate PID namespaces, the token files mounted in the server's only), so
# nothing here splits privileges and the role must not start as root (exit 64). `server`: openwork-server
# behind its gate on OPENWORK_PORT, pointed at opencode on 127.0.0.1:OPENWORK_OPENCODE_PORT; `agent`:
# opencode there behind its gate, no token. Both read opencode's basic-auth password from
# OPENCODE_SERVER_PASSWORD_FILE, and run under openwork-supervise (restarts, and a PID 1 that reaps;
# its health is the pod's: GET /health on 127.0.0.1:OPENWORK_PORT).
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

PRIVATE=/srv/openwork  # root's, 0700: the token files and the server's store, out of the agent's reach

POD_ROLE="${OPENWORK_POD_ROLE:-}"  # see the head of this file
case "$POD_ROLE" in
  "") ;;
  server|agent)
    if [ "$(id -u)" = 0 ]; then
      echo "microsandbox-entrypoint: OPENWORK_POD_ROLE=$POD_ROLE is for a pod's non-root containers; run it as a non-root user (runAsUser)" >&2
      exit 64
    fi ;;
  *) echo "microsandbox-entrypoint: OPENWORK_POD_ROLE=$POD_ROLE is not server or agent" >&2; exit 64 ;;
esac

# A token comes from its file when OPENWORK_*_FILE names one (the file's first line, read as root);
# so does opencode's password in a pod (OPENCODE_SERVER_PASSWORD_FILE).
for var in OPENWORK_TOKEN OPENWORK_HOST_TOKEN OPENCODE_SERVER_PASSWORD; do
  eval "file=\${${var}_FILE:-}"
  if [ -n "$file" ]; then
    if ! value="$(head -n 1 "$file" 2>/dev/null)"; then
      echo "microsandbox-entrypoint: ${var}_FILE=$file cannot be read by uid $(id -u); mount the token files read-only there" >&2
      exit 64
    fi
    eval "$var=\$value"
  fi
  unset "${var}_FILE"
done
missing=""
[ -n "${OPENWORK_TOKEN:-}" ] || missing="OPENWORK_TOKEN"
[ -n "${OPENWORK_HOST_TOKEN:-}" ] || missing="${missing:+$missing and }OPENWORK_HOST_TOKEN"
if [ -n "$missing" ] && [ "$POD_ROLE" != agent ]; then
  echo "microsandbox-entrypoint: $missing not set; pass them in as files (OPENWORK_TOKEN_FILE=..., OPENWORK_HOST_TOKEN_FILE=...) or variables; this image has no default tokens" >&2
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

# Who runs what (see the head of this file). run_as: the server side's start; AGENT_UID:GID: the agent.
run_as=""
AGENT_UID="$(id -u)"
AGENT_GID="$(id -g)"
if [ "$(id -u)" = 0 ]; then
  owner="$(stat -c %u:%g /data)"
  mkdir -p "$PRIVATE"
  chown 0:0 "$PRIVATE" && chmod 0700 "$PRIVATE" || true
  if [ "$(stat -c %u:%a "$PRIVATE")" != 0:700 ]; then
    echo "microsandbox-entrypoint: $PRIVATE must be root's with mode 0700 to keep the tokens from the agent, and cannot be made so" >&2
    exit 78
  fi
  # the server's store: the mounted one, with issued tokens an older layout kept in the agent's home moved in
  if [ -d "$PRIVATE/store" ]; then
    OPENWORK_TOKEN_STORE="$PRIVATE/store/tokens.json"
    old="${HOME:-/data/home}/.config/openwork/tokens.json"
    [ "$old" = "$OPENWORK_TOKEN_STORE" ] || {
      if [ -f "$old" ] && [ ! -f "$OPENWORK_TOKEN_STORE" ]; then mv -f "$old" "$OPENWORK_TOKEN_STORE"; fi
      rm -f "$old"
    }
    export OPENWORK_TOKEN_STORE
  else
    echo "microsandbox-entrypoint: no private store mounted at $PRIVATE/store: issued tokens are kept in \$HOME/.config/openwork, where the agent can read them" >&2
  fi
  if [ "${owner%%:*}" = 0 ]; then
    # /data is root's (the tool run as root, a rootless engine): the sandbox gets a uid of its own
    owner="${OPENWORK_AGENT_UID:-61001}:${OPENWORK_AGENT_GID:-${OPENWORK_AGENT_UID:-61001}}"
  fi
  AGENT_UID="${owner%%:*}"
  AGENT_GID="${owner##*:}"
  # what earlier runs (or root) made there becomes the owner's
  for dir in /data "$OPENWORK_WORKSPACE" "$PRIVATE/store"; do
    [ -d "$dir" ] && find "$dir" -xdev \( ! -user "$AGENT_UID" -o ! -group "$AGENT_GID" \) \
      -exec chown -h "$owner" {} + 2>/dev/null || true
  done
  # the capability that lets the server side, alone, enter $PRIVATE: CAP_DAC_READ_SEARCH where the
  # runtime gives it (`invoke up` does), else CAP_DAC_OVERRIDE (in Docker's default set)
  cap=dac_read_search
  setpriv --inh-caps=+$cap true 2>/dev/null || cap=dac_override
  run_as="setpriv --reuid=$AGENT_UID --regid=$AGENT_GID --clear-groups --inh-caps=+$cap --ambient-caps=+$cap --"
elif [ -z "$POD_ROLE" ]; then
  echo "microsandbox-entrypoint: started as uid $(id -u), not root: the agent cannot be kept from the server's tokens; start the sandbox as root (it drops privileges itself)" >&2
fi
OPENWORK_AGENT_UID="$AGENT_UID"
OPENWORK_AGENT_GID="$AGENT_GID"
export OPENWORK_AGENT_UID OPENWORK_AGENT_GID

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

# Every Bun program here (the orchestrator, opencode, openwork-server) runs without JavaScriptCore's
# optimizing tiers (DFG, and FTL above it) and compiles a function to machine code only once it has
# run about 50,000 times (the default is 500): they wait on the network and on the agent's commands,
# and compiling costs each program memory and CPU for no gain there (measured: opencode 211-214 MiB
# instead of 236-250, its requests no slower; docs/design-notes/cost.md). A value the caller set
# wins; the start gates run with no JIT at all.
: "${BUN_JSC_useDFGJIT:=0}"
: "${BUN_JSC_thresholdForJITAfterWarmUp:=50000}"
: "${BUN_JSC_thresholdForJITSoon:=50000}"
export BUN_JSC_useDFGJIT BUN_JSC_thresholdForJITAfterWarmUp BUN_JSC_thresholdForJITSoon

# A pod's container (OPENWORK_POD_ROLE): its one program, under the supervisor, and nothing below.
if [ -n "$POD_ROLE" ]; then
  pod_supervise=/usr/local/bin/openwork-supervise
  case "${OPENWORK_SUPERVISE:-1}" in 0|false|no|off) pod_supervise="" ;; esac
  : "${OPENCODE_SERVER_USERNAME:=opencode}"
  if [ "$POD_ROLE" = agent ]; then
    unset OPENWORK_TOKEN OPENWORK_HOST_TOKEN
    export OPENCODE_SERVER_USERNAME OPENCODE_SERVER_PASSWORD
    cd "$OPENWORK_WORKSPACE"
    exec $pod_supervise /usr/local/bin/opencode-gate serve --hostname 127.0.0.1 --port "$OPENWORK_OPENCODE_PORT"
  fi
  if [ -d "$PRIVATE/store" ]; then
    OPENWORK_TOKEN_STORE="$PRIVATE/store/tokens.json"
    export OPENWORK_TOKEN_STORE
  fi
  OPENWORK_OPENCODE_USERNAME="$OPENCODE_SERVER_USERNAME"
  OPENWORK_OPENCODE_PASSWORD="${OPENCODE_SERVER_PASSWORD:-}"
  unset OPENCODE_SERVER_USERNAME OPENCODE_SERVER_PASSWORD
  export OPENWORK_OPENCODE_USERNAME OPENWORK_OPENCODE_PASSWORD
  host=0.0.0.0
  [ -n "$remote" ] || host=127.0.0.1
  exec $pod_supervise /usr/local/bin/openwork-server-gate --host "$host" --port "$OPENWORK_PORT" \
    --workspace "$OPENWORK_WORKSPACE" --approval "$OPENWORK_APPROVAL_MODE" --cors "$OPENWORK_CORS_ORIGINS" \
    --opencode-base-url "http://127.0.0.1:$OPENWORK_OPENCODE_PORT" --opencode-directory "$OPENWORK_WORKSPACE"
fi

# openwork-supervise restarts `openwork serve` when it (or a program it runs) dies, and passes
# SIGTERM/SIGINT on to it; OPENWORK_SUPERVISE=0 runs it without (exactly as upstream: exec).
supervise=/usr/local/bin/openwork-supervise
case "${OPENWORK_SUPERVISE:-1}" in 0|false|no|off) supervise="" ;; esac

# What runs (OPENWORK_LAUNCH), both through the supervisor and as the server side ($run_as):
# - orchestrator (the default): `openwork serve`, which starts opencode and openwork-server;
# - server (upstream's current worker entrypoint): openwork-server alone, behind its start gate, with
#   OPENWORK_MANAGE_OPENCODE=1: it starts opencode itself through OPENWORK_OPENCODE_BIN, here
#   opencode-gate, so the agent's privilege drop and opencode's start gate stay in force. The server
#   hands opencode OPENWORK_SERVER_TOKEN (the client token); opencode-gate drops it with every other
#   OpenWork token: whoever drives the agent must not get a token from it (threat-model.md).
case "${OPENWORK_LAUNCH:-orchestrator}" in
  server)
    host=0.0.0.0
    [ -n "$remote" ] || host=127.0.0.1
    OPENWORK_MANAGE_OPENCODE=1
    OPENWORK_OPENCODE_BIN=/usr/local/bin/opencode-gate
    export OPENWORK_MANAGE_OPENCODE OPENWORK_OPENCODE_BIN OPENWORK_LAUNCH
    unset OPENWORK_OPENCODE_BASE_URL  # set, the server would manage no opencode
    # the tokens reach it through its environment (OPENWORK_TOKEN, OPENWORK_HOST_TOKEN), as above
    exec $run_as $supervise /usr/local/bin/openwork-server-gate \
      --workspace "$OPENWORK_WORKSPACE" \
      --host "$host" \
      --port "$OPENWORK_PORT" \
      --approval "$OPENWORK_APPROVAL_MODE" \
      --cors "$OPENWORK_CORS_ORIGINS" ;;
  orchestrator)
    # opencode behind a start gate (see opencode-gate.js), openwork-server behind its own
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
      --opencode-bin /usr/local/bin/opencode-gate ;;
  *)
    echo "microsandbox-entrypoint: OPENWORK_LAUNCH=$OPENWORK_LAUNCH is neither orchestrator nor server" >&2
    exit 64 ;;
esac
