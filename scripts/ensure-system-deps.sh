#!/usr/bin/env bash
# Make sure Debian's blender, ffmpeg and mkvtoolnix (and python3-venv) are installed.
# mkvtoolnix provides mkvmerge, used by the encode-media job type's remux step.
# iproute2 (`ip`) lets the test suite build network namespaces for multi-peer tests.
# As root, install what is missing; otherwise print the exact command to run.
set -euo pipefail

missing=()
command -v blender >/dev/null 2>&1 || missing+=(blender)
command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
command -v mkvmerge >/dev/null 2>&1 || missing+=(mkvtoolnix)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
# --test: what only the test suite needs (the dashboard's browser tests drive Chromium).
if [ "${1:-}" = "--test" ]; then
    [ -x /usr/bin/chromium ] || missing+=(chromium)
fi

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing ${missing[*]} from Debian (apt-get) ..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    echo "Installed: ${missing[*]}"
else
    echo "Flamenco Peer needs these Debian packages: ${missing[*]}" >&2
    echo "Install them with:" >&2
    echo "    sudo apt-get install --no-install-recommends ${missing[*]}" >&2
    exit 1
fi
