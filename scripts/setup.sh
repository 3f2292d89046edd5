#!/usr/bin/env bash
# Installs what the build, the examples and the tests need, by package name
# from Debian, PyPI and crates.io. Idempotent: fast when all is present.
set -euo pipefail

need_apt=()
[ -x /bin/busybox ] || need_apt+=(busybox-static)
command -v java >/dev/null || need_apt+=(openjdk-17-jre-headless)
command -v unshare >/dev/null || need_apt+=(util-linux)
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
    else
        echo "setup: missing Debian packages (${need_apt[*]}); run as root or install them" >&2
    fi
fi

if ! command -v cargo >/dev/null; then
    echo "setup: cargo is required (https://rustup.rs)" >&2
    exit 1
fi
rustup target list --installed 2>/dev/null | grep -q x86_64-unknown-linux-gnu \
    || rustup target add x86_64-unknown-linux-gnu >/dev/null 2>&1 || true

PY=${PYTHON:-python3}
if ! "$PY" -c 'import pyspark, pyarrow, pandas, pytest, kubernetes_validate' >/dev/null 2>&1 || ! command -v maturin >/dev/null; then
    "$PY" -m pip install -q --disable-pip-version-check pyspark pyarrow "pandas>=2.2,<3" maturin pytest kubernetes-validate
fi
