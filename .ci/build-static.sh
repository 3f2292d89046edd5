#!/usr/bin/env bash
# Build `sidecar-entrypoint` as a fully static x86_64 Linux binary (glibc,
# `crt-static`) so that a `FROM scratch` image can run it, and print its path.
#
#   .ci/build-static.sh            -> prints .../target/static/x86_64-unknown-linux-gnu/release/sidecar-entrypoint
#
# Why the explicit `--target`: with it, RUSTFLAGS apply only to the target
# artefacts, not to build scripts and proc macros (which must stay dynamic).
# Why a separate target dir: different RUSTFLAGS would otherwise invalidate
# the normal build cache that every other build in the workspace shares.
#
# Progress goes to stderr; stdout carries only the path, so callers can do
# `bin=$(.ci/build-static.sh)`.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target=x86_64-unknown-linux-gnu
target_dir="${SIDECAR_STATIC_TARGET_DIR:-$root/target/static}"

cd "$root"
RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static" \
    cargo build --release -p sidecar-entrypoint \
    --target "$target" --target-dir "$target_dir" >&2

bin="$target_dir/$target/release/sidecar-entrypoint"
if [[ ! -x "$bin" ]]; then
    echo "build-static: $bin was not produced" >&2
    exit 1
fi

# A dynamic binary would fail in a scratch image with a confusing
# "no such file or directory" (the missing loader): refuse it here instead.
if command -v file >/dev/null 2>&1; then
    desc="$(file -b "$bin")"
    case "$desc" in
        *"statically linked"* | *"static-pie linked"*) ;;
        *)
            echo "build-static: $bin is not static: $desc" >&2
            exit 1
            ;;
    esac
fi
if readelf -l "$bin" 2>/dev/null | grep -q 'Requesting program interpreter'; then
    echo "build-static: $bin requests a program interpreter (dynamic loader)" >&2
    exit 1
fi

echo "$bin"
