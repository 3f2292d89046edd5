#!/usr/bin/env bash
# Build the Foundry `dd` example image, offline, idempotently.
#
#   examples/foundry-dd/build.sh            -> image sidecar-foundry-dd:latest
#   IMAGE=my/tag:1 examples/foundry-dd/build.sh
#   SOURCE_LABEL=key=value examples/foundry-dd/build.sh   (labels the image; the
#                                           tests name the sources they built it from)
#
# Needs: cargo, a Docker engine, and /bin/busybox from Debian's
# busybox-static (installed with apt-get when missing). Pulls nothing:
# the image is FROM scratch.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
image="${IMAGE:-sidecar-foundry-dd:latest}"
busybox="${BUSYBOX:-/bin/busybox}"

log() { echo "foundry-dd: $*" >&2; }

# 1. A static busybox for /bin/sh, dd, tee, ...
if [[ ! -x "$busybox" ]]; then
    log "installing busybox-static (no $busybox)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq busybox-static >&2
    busybox=/bin/busybox
fi
case "$(file -b "$busybox" 2>/dev/null || echo unknown)" in
    *"statically linked"* | *"static-pie linked"* | unknown) ;;
    *) log "$busybox is not statically linked (install busybox-static, not busybox)"; exit 1 ;;
esac

# 2. The static entrypoint.
bin="$(bash "$root/.ci/build-static.sh")"

# 3. A minimal build context: only what the Dockerfile copies.
ctx="$(mktemp -d "${TMPDIR:-/tmp}/foundry-dd-ctx.XXXXXX")"
trap 'rm -rf "$ctx"' EXIT
cp "$here/Dockerfile" "$here/passwd" "$here/group" "$ctx/"
cp "$busybox" "$ctx/busybox"
# The release profile keeps line tables for backtraces; the image does not
# need them (the unstripped binary stays in target/static).
if command -v strip >/dev/null 2>&1; then
    strip -o "$ctx/sidecar-entrypoint" "$bin"
else
    cp "$bin" "$ctx/sidecar-entrypoint"
fi
# Stable mtimes and modes so that an unchanged input reuses the layer cache.
chmod 0755 "$ctx/busybox" "$ctx/sidecar-entrypoint"
chmod 0644 "$ctx/Dockerfile" "$ctx/passwd" "$ctx/group"
touch -d '2000-01-01T00:00:00Z' "$ctx"/*

# 4. Build. Without the buildx plugin the classic builder is the only one
# that works; it is enough for this Dockerfile (no cache mounts, no secrets).
if ! docker buildx version >/dev/null 2>&1; then
    export DOCKER_BUILDKIT=0
fi
log "building $image"
old_id="$(docker image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)"
label=()
[[ -n "${SOURCE_LABEL:-}" ]] && label=(--label "$SOURCE_LABEL")
docker build --quiet --pull=false "${label[@]}" -t "$image" "$ctx" >&2
new_id="$(docker image inspect --format '{{.Id}}' "$image")"
# A rebuild leaves the previous image untagged; remove it unless in use.
if [[ -n "$old_id" && "$old_id" != "$new_id" ]]; then
    docker image rm "$old_id" >/dev/null 2>&1 || true
fi

size="$(docker image inspect --format '{{.Size}}' "$image")"
log "built $image: $size bytes ($(( (size + 1023) / 1024 )) KiB)"
echo "$image"
