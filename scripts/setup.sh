#!/usr/bin/env bash
# Set up nornir-k8sha on a fresh Debian 12 machine: the system packages the validators and the
# embedded lab use, and a virtualenv in .venv with the project installed (editable) and its test
# tools. Safe to run again. Needs root for apt; without root it only builds the virtualenv.
set -euo pipefail
cd "$(dirname "$0")/.."

# Packages on this machine: the real validators (haproxy -c, keepalived -t, openssl verify) and
# what `lab up` needs to build the lab (it installs these itself too when missing).
SYSTEM_PACKAGES=(
  haproxy keepalived frr etcd-server etcd-client openssl ca-certificates util-linux
  iproute2 nftables kmod procps psmisc
  systemd-container mmdebstrap debian-archive-keyring user-mode-linux patchelf
  openssh-client openssh-server
)

if [ "$(id -u)" = 0 ]; then
  missing=()
  for p in "${SYSTEM_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    # Debian's policy-rc.d convention keeps the services from starting on this machine.
    created_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
      chmod +x /usr/sbin/policy-rc.d
      created_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    [ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  fi
else
  echo "setup: not root: skipping system packages (${SYSTEM_PACKAGES[*]})" >&2
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e '.[dev]' 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -c 'import nornir_k8sha' || { echo "setup: install failed" >&2; exit 1; }
# The package's bytecode, as pip writes it for a regular install: an editable install run with
# bytecode writing off (PYTHONDONTWRITEBYTECODE) compiles every module it imports on every
# command otherwise (~45 ms of each `check`, issue 12.3). A module edited later is compiled
# again in memory until the next setup, as before.
.venv/bin/python -m compileall -q nornir_k8sha >/dev/null
echo "setup: ok ($(.venv/bin/python --version), nornir-k8sha installed in .venv)"
