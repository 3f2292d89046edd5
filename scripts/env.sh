# shellcheck shell=bash
# Sourced, not run: the project's environment, written once for every script.
#
#   apt_install PKG...   installs Debian packages (as root; otherwise says
#                        which are missing and returns 1)
#   venv_ready           makes the project's virtual environment .venv/ (from
#                        ${PYTHON:-python3} with -m venv), installs
#                        scripts/requirements.txt into it when they changed,
#                        and activates it in the calling shell: exports
#                        VENV_PYTHON, VIRTUAL_ENV, PYSPARK_PYTHON and PATH.
#
# No package is ever installed into the base interpreter: on Debian 12 and
# Ubuntu 23.04+ it is externally managed (PEP 668) and pip refuses.

SIDECAR_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_DIR="$SIDECAR_ROOT/.venv"
VENV_PYTHON="$VENV_DIR/bin/python"
VENV_REQUIREMENTS="$SIDECAR_ROOT/scripts/requirements.txt"

apt_install() {
    if [ "$(id -u)" != 0 ]; then
        echo "setup: missing Debian packages ($*); run as root or install them" >&2
        return 1
    fi
    echo "setup: installing Debian packages: $*" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

# Creates $VENV_DIR unless a working one is there.
_venv_create() {
    if "$VENV_PYTHON" -c '' 2>/dev/null; then
        return 0
    fi
    local base="${PYTHON:-python3}" err
    if ! command -v "$base" >/dev/null; then
        echo "setup: no Python interpreter '$base': install python3 or set PYTHON to one" >&2
        return 1
    fi
    echo "setup: creating the virtual environment $VENV_DIR from $(command -v "$base")" >&2
    rm -rf "$VENV_DIR"
    if err="$("$base" -m venv "$VENV_DIR" 2>&1)"; then
        return 0
    fi
    rm -rf "$VENV_DIR"
    if "$base" -c 'import ensurepip, venv' 2>/dev/null; then
        echo "$err" >&2
        echo "setup: '$base -m venv $VENV_DIR' failed" >&2
        return 1
    fi
    # Debian and Ubuntu ship venv's pip bootstrap (ensurepip) separately.
    local ver
    ver="$("$base" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    echo "setup: $base cannot make a virtual environment without Debian's python3-venv" >&2
    apt_install python3-venv "python$ver-venv" || return 1
    if ! "$base" -m venv "$VENV_DIR"; then
        rm -rf "$VENV_DIR"
        echo "setup: '$base -m venv $VENV_DIR' failed after installing python3-venv" >&2
        return 1
    fi
}

venv_ready() {
    _venv_create || exit 1
    # The requirements as last installed: a re-run with the same list
    # installs nothing (delete .venv/ to start over).
    local stamp="$VENV_DIR/.requirements.installed"
    if ! cmp -s "$VENV_REQUIREMENTS" "$stamp"; then
        echo "setup: installing scripts/requirements.txt into $VENV_DIR" >&2
        "$VENV_PYTHON" -m pip install --quiet --disable-pip-version-check -r "$VENV_REQUIREMENTS" \
            || { echo "setup: pip could not install scripts/requirements.txt into $VENV_DIR" >&2; exit 1; }
        cp "$VENV_REQUIREMENTS" "$stamp"
    fi
    export VENV_PYTHON VIRTUAL_ENV="$VENV_DIR" PYSPARK_PYTHON="$VENV_PYTHON"
    case ":$PATH:" in
        *":$VENV_DIR/bin:"*) ;;
        *) export PATH="$VENV_DIR/bin:$PATH" ;;
    esac
}
