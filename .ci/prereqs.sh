#!/usr/bin/env bash
# Install the system programs the tests drive for real: the OpenSSH server and client, Debian's adb
# client and rsync (tests/transport), Chromium (tests/integration/test_report.py renders the report
# in it), and QEMU >= 10 user-mode, proot and debootstrap (tests/integration/test_emu.py: the emulated
# arm64 target; QEMU comes from bookworm-backports, Debian 12's own 7.2 emulates SME wrongly). Idempotent and quiet; returns at once when all are there.
# .ci/run calls it before the tests. Needs root (or sudo) only when something is missing.
set -euo pipefail

missing=()
[ -x /usr/sbin/sshd ] || command -v sshd >/dev/null 2>&1 || missing+=(openssh-server)
{ command -v ssh && command -v scp && command -v ssh-keygen; } >/dev/null 2>&1 || missing+=(openssh-client)
command -v adb >/dev/null 2>&1 || missing+=(adb)
command -v rsync >/dev/null 2>&1 || missing+=(rsync)
{ command -v chromium || command -v chromium-browser; } >/dev/null 2>&1 || missing+=(chromium)
command -v proot >/dev/null 2>&1 || missing+=(proot)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
qemu_major="$({ qemu-aarch64-static --version 2>/dev/null || true; } | sed -n 's/.*version \([0-9]*\)\..*/\1/p' | head -1)"
backports=()
if [ "${qemu_major:-0}" -lt 10 ]; then
  backports=(qemu-user-static)
fi

if [ ${#missing[@]} -gt 0 ] || [ ${#backports[@]} -gt 0 ]; then
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "prereqs: need root to install ${missing[*]}" >&2; exit 1; }
    sudo=(sudo)
  fi
  echo "prereqs: installing ${missing[*]} ${backports[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  if [ ${#backports[@]} -gt 0 ] && ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      | "${sudo[@]}" tee /etc/apt/sources.list.d/bookworm-backports.sources >/dev/null
  fi
  "${sudo[@]}" apt-get update -qq
  if [ ${#missing[@]} -gt 0 ]; then
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  if [ ${#backports[@]} -gt 0 ]; then
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends -t bookworm-backports "${backports[@]}" >/dev/null
  fi
fi

# sshd refuses to start as root without its privilege-separation folder (systemd usually makes it)
if [ "$(id -u)" -eq 0 ] && [ ! -d /run/sshd ]; then
  mkdir -p /run/sshd
  chmod 0755 /run/sshd
fi
