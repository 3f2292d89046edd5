#!/usr/bin/env bash
# Installs what the build, the examples and the tests need, by package name
# from Debian, PyPI and crates.io. The Python packages go into the project's
# virtual environment .venv/ (scripts/env.sh), made from ${PYTHON:-python3};
# nothing is installed into that interpreter itself. Idempotent: fast when
# all is present.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"

need_apt=()
[ -x /bin/busybox ] || need_apt+=(busybox-static)
command -v java >/dev/null || need_apt+=(openjdk-17-jre-headless)
command -v unshare >/dev/null || need_apt+=(util-linux)
if [ ${#need_apt[@]} -gt 0 ]; then
    apt_install "${need_apt[@]}" || true
fi

if ! command -v cargo >/dev/null; then
    echo "setup: cargo is required (https://rustup.rs)" >&2
    exit 1
fi
rustup target list --installed 2>/dev/null | grep -q x86_64-unknown-linux-gnu \
    || rustup target add x86_64-unknown-linux-gnu >/dev/null 2>&1 || true

venv_ready
