#!/usr/bin/env bash
# The deployment of docker-compose.yml run for real with podman, and checked:
#   1. installs podman, runc and podman-compose when missing (apt), makes debian:bookworm-slim
#      available (pulled, else debootstrapped from this machine's apt mirror), and uses
#      docker/containers.conf through CONTAINERS_CONF (the system's own is left alone);
#   2. builds the images (docker/Dockerfile), timing the build;
#   3. brings the compose project up in the order of health: Kafka, Redis and PostgreSQL
#      healthy, then the services (payment with two replicas) and the tracker healthy;
#   4. places orders with the shop container and, mid-run, kills one payment replica;
#   5. the shop's audit must pass: every saga terminal, stock and money balanced (nothing
#      lost, nothing applied twice); then a saga is read from the host through the tracker's
#      API and through the `choreo` CLI;
#   6. removes every container, network and volume of the project, on success, failure or
#      signal (and a run killed outright is cleaned by the next one, at its start).
#   scripts/deploy-test.sh [--orders N] [--keep]   (--keep: leave the deployment running)
# Environment: CHOREO_DEPLOY_ORDERS (default 300), CHOREO_DEPLOY_TIMEOUT (seconds the shop
# waits for the sagas to end, default 600).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

orders=${CHOREO_DEPLOY_ORDERS:-300}
keep=0
while [ $# -gt 0 ]; do
    case "$1" in
    --orders) orders=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    *) echo "usage: $0 [--orders N] [--keep]" >&2; exit 2 ;;
    esac
done

# One project name: a rerun finds (and removes) what a killed run left; a pid file keeps
# two runs on one machine from removing each other's deployment.
project=choreo-deploytest
label="io.podman.compose.project=$project"
export CONTAINERS_CONF="$root/docker/containers.conf"
say() { printf '[deploy %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

# --- 1. tools -------------------------------------------------------------------------
sudo_=()
[ "$(id -u)" -eq 0 ] || sudo_=(sudo)
missing=()
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || missing+=(runc)
command -v podman-compose >/dev/null || missing+=(podman-compose)
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} (apt)"
    "${sudo_[@]}" apt-get update -q
    DEBIAN_FRONTEND=noninteractive "${sudo_[@]}" apt-get install -y -q --no-install-recommends \
        podman runc podman-compose debootstrap netavark aardvark-dns iptables uidmap
fi
if ! podman image exists debian:bookworm-slim && ! command -v debootstrap >/dev/null; then
    DEBIAN_FRONTEND=noninteractive "${sudo_[@]}" apt-get install -y -q --no-install-recommends \
        debootstrap
fi
if [ ! -x .venv/bin/choreo ]; then
    scripts/setup.sh # the host's choreo CLI reads the saga back (step 5)
fi

# A pid file, not flock: the containers' processes would inherit a lock's descriptor
# and hold it after this script is killed.
pidfile="${TMPDIR:-/tmp}/$project.pid"
other=$(cat "$pidfile" 2>/dev/null || true)
if [ -n "$other" ] && [ "$other" != $$ ] && kill -0 "$other" 2>/dev/null; then
    say "another deploy test (pid $other) is running on this machine"
    exit 1
fi
echo $$ >"$pidfile"

compose() { podman-compose -p "$project" -f "$root/docker-compose.yml" "$@"; }

teardown() {
    compose down -v -t 5 >/dev/null 2>&1 || true
    # What compose did not know of (a run killed between create and start, a replica):
    # everything carrying the project's label.
    local ids
    ids=$(podman ps -aq --filter "label=$label")
    [ -z "$ids" ] || podman rm -f -t 2 $ids >/dev/null 2>&1 || true
    ids=$(podman network ls -q --filter "label=$label")
    [ -z "$ids" ] || podman network rm -f $ids >/dev/null 2>&1 || true
    ids=$(podman volume ls -q --filter "label=$label")
    [ -z "$ids" ] || podman volume rm -f $ids >/dev/null 2>&1 || true
}

leftovers() {
    printf '%s' "$(podman ps -aq --filter "label=$label")$(podman network ls -q \
        --filter "label=$label")$(podman volume ls -q --filter "label=$label")"
}

on_exit() {
    local status=$?
    trap - EXIT INT TERM HUP
    if [ "$keep" -eq 1 ] && [ "$status" -eq 0 ]; then
        say "left running (--keep); remove with: CONTAINERS_CONF=$CONTAINERS_CONF" \
            "podman-compose -p $project down -v"
        exit 0
    fi
    if [ "$status" -ne 0 ]; then
        say "failed (exit $status); containers and their last log lines:"
        podman ps -a --filter "label=$label" --format '{{.Names}} {{.Status}}' || true
        for name in $(podman ps -a --filter "label=$label" --format '{{.Names}}'); do
            echo "--- $name"
            podman logs --tail 15 "$name" 2>&1 | sed 's/^/    /' || true
        done
    fi
    say "tearing down"
    teardown
    rm -f "${compose_log:-}" "${shop_log:-}" "$pidfile"
    if [ -n "$(leftovers)" ]; then
        say "LEFT BEHIND: $(leftovers)"
        status=1
    else
        say "nothing left: no container, network or volume labelled $label"
    fi
    exit "$status"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

if [ -n "$(leftovers)" ]; then
    say "removing what an earlier, killed run left"
    teardown
fi

# --- 2. images --------------------------------------------------------------------------
started=$SECONDS
scripts/deploy/base-image.sh debian:bookworm-slim
say "debian:bookworm-slim ready in $((SECONDS - started))s"
build_args=(-f docker/Dockerfile)
# A TLS-inspecting proxy's CA (Debian keeps site CAs there) for the build stages only.
if [ -d /usr/local/share/ca-certificates ]; then
    build_args+=(-v /usr/local/share/ca-certificates:/usr/local/share/ca-certificates:ro)
fi
started=$SECONDS
for target in choreo:choreo-demo:latest kafka:choreo-kafka:3.9.1 redis:choreo-redis:latest \
    postgres:choreo-postgres:15; do
    stage=${target%%:*}
    tag=${target#*:}
    say "building $tag (stage $stage)"
    podman build -q "${build_args[@]}" --target "$stage" -t "$tag" . >/dev/null
done
build_seconds=$((SECONDS - started))
say "images built in ${build_seconds}s"
podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep choreo- | sed 's/^/    /'

# --- 3. up, in the order of health --------------------------------------------------------
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
export CHOREO_KAFKA_PORT=${CHOREO_KAFKA_PORT:-$(free_port)}
export CHOREO_REDIS_PORT=${CHOREO_REDIS_PORT:-$(free_port)}
export CHOREO_POSTGRES_PORT=${CHOREO_POSTGRES_PORT:-$(free_port)}
export CHOREO_TRACKER_PORT=${CHOREO_TRACKER_PORT:-$(free_port)}
token=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
export CHOREO_TRACKER_TOKEN=$token
CHOREO_POSTGRES_PASSWORD=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
export CHOREO_POSTGRES_PASSWORD
run_started=$SECONDS

# podman runs no health checks by itself without systemd: run them here, as `docker
# compose` would before starting what depends on them.
wait_healthy() {
    local deadline=$((SECONDS + $1)) name pending
    shift
    while :; do
        pending=()
        for name in "$@"; do
            podman healthcheck run "$name" >/dev/null 2>&1 || pending+=("$name")
        done
        [ ${#pending[@]} -gt 0 ] || return 0
        if [ $SECONDS -ge $deadline ]; then
            say "not healthy in time: ${pending[*]}"
            return 1
        fi
        sleep 2
    done
}
names_of() {
    local service
    for service in "$@"; do
        podman ps --filter "label=$label" --filter "label=com.docker.compose.service=$service" \
            --format '{{.Names}}'
    done
}
compose_log=$(mktemp "${TMPDIR:-/tmp}/choreo-compose.XXXXXX")
# podman-compose starts what it is given and the dependencies it already started (their
# "name in use" errors are expected), and prints much: its output goes to a log, shown
# when something fails.
up() { compose up -d --no-build "$@" >>"$compose_log" 2>&1 || { cat "$compose_log"; return 1; }; }
elapsed() { echo "$((SECONDS - run_started))s"; }

say "up: kafka, redis, postgres"
up kafka redis postgres
wait_healthy 300 $(names_of kafka redis postgres)
say "healthy after $(elapsed): kafka, redis, postgres"
services=(orders inventory payment shipping tracker)
say "up: ${services[*]}"
up "${services[@]}"
wait_healthy 300 $(names_of "${services[@]}")
say "healthy after $(elapsed): ${services[*]}"
say "scaling payment to 2 replicas"
CHOREO_PAYMENT_REPLICAS=2 up payment
wait_healthy 300 $(names_of payment)
say "healthy after $(elapsed): $(names_of payment | tr '\n' ' ')"
podman ps --filter "label=$label" --format '    {{.Names}}  {{.Image}}  {{.Status}}  {{.Ports}}'

# --- 4. orders, and a payment replica killed mid-run ----------------------------------------
payments=($(names_of payment))
if [ ${#payments[@]} -ne 2 ]; then
    say "expected 2 payment replicas, found ${#payments[@]}"
    exit 1
fi
say "placing $orders orders (shop container)"
shop_log=$(mktemp "${TMPDIR:-/tmp}/choreo-shop.XXXXXX")
compose run --rm --no-deps -T shop python3 -m services_demo.multiprocess \
    --attach http://tracker:8088 --kafka kafka:9092 --redis redis://redis:6379/0 \
    --payment-store "postgresql://choreo:$CHOREO_POSTGRES_PASSWORD@postgres:5432/shop" \
    --orders "$orders" --timeout "${CHOREO_DEPLOY_TIMEOUT:-600}" </dev/null >"$shop_log" 2>&1 &
shop_pid=$!

# Kill a replica once a third of the sagas have started, i.e. in the middle of the run.
api="http://127.0.0.1:$CHOREO_TRACKER_PORT"
sagas_seen() {
    curl -fsS -H "Authorization: Bearer $token" "$api/sagas?limit=1" 2>/dev/null |
        python3 -c 'import json, sys; print(json.load(sys.stdin).get("total", 0))' 2>/dev/null ||
        echo 0
}
victim=${payments[1]}
while kill -0 "$shop_pid" 2>/dev/null && [ "$(sagas_seen)" -lt $((orders / 3)) ]; do
    sleep 1
done
say "killing $victim (SIGKILL) with $(sagas_seen) sagas started"
podman kill -s KILL "$victim" >/dev/null
status=0
wait "$shop_pid" || status=$?
cat "$shop_log"
rm -f "$shop_log"
say "$victim after the kill: $(podman inspect -f '{{.State.Status}} (restarts: {{.RestartCount}})' \
    "$victim" 2>/dev/null || echo gone)"
if [ "$status" -ne 0 ]; then
    say "the shop's audit failed (exit $status)"
    exit 1
fi
say "audit passed: every saga terminal, stock and money balanced"

# --- 5. a saga read from the host, through the API and the CLI -----------------------------
gid=$(curl -fsS -H "Authorization: Bearer $token" "$api/sagas?limit=1" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["items"][0]["gid"])')
say "GET $api/sagas/$gid"
curl -fsS -H "Authorization: Bearer $token" "$api/sagas/$gid" |
    python3 -c 'import json, sys; s = json.load(sys.stdin); print("    gid", s["gid"], "status", s["status"])'
say "choreo saga show $gid --tracker $api"
CHOREO_TRACKER_TOKEN=$token .venv/bin/choreo --tracker "$api" saga show "$gid"
say "run: $(elapsed) (up, $orders orders, checks); build: ${build_seconds}s"
