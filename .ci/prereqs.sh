#!/usr/bin/env bash
# Install the system programs the tests drive for real: the OpenSSH server and client, Debian's adb
# client and rsync (tests/transport), and Chromium (tests/integration/test_report.py renders the report
# in it). Idempotent and quiet; returns at once when all are there.
# .ci/run calls it before the tests. Needs root (or sudo) only when something is missing.
set -euo pipefail

missing=()
[ -x /usr/sbin/sshd ] || command -v sshd >/dev/null 2>&1 || missing+=(openssh-server)
{ command -v ssh && command -v scp && command -v ssh-keygen; } >/dev/null 2>&1 || missing+=(openssh-client)
command -v adb >/dev/null 2>&1 || missing+=(adb)
command -v rsync >/dev/null 2>&1 || missing+=(rsync)
{ command -v chromium || command -v chromium-browser; } >/dev/null 2>&1 || missing+=(chromium)

if [ ${#missing[@]} -gt 0 ]; then
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "prereqs: need root to install ${missing[*]}" >&2; exit 1; }
    sudo=(sudo)
  fi
  echo "prereqs: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# sshd refuses to start as root without its privilege-separation folder (systemd usually makes it)
if [ "$(id -u)" -eq 0 ] && [ ! -d /run/sshd ]; then
  mkdir -p /run/sshd
  chmod 0755 /run/sshd
fi
