#!/usr/bin/env bash
# Prepare an Android phone, inside Termux, to run edgekit bundles over ssh (see README.md).
#
#   bash setup.sh [--key "ssh-ed25519 AAAA... you@laptop"] [--venv DIR] [RUNTIME]
#
# RUNTIME: onnxruntime | ai-edge-litert | tflite-runtime | none (default: none).
# Installs python, numpy and openssh with pkg; creates a virtualenv (default ~/.edgekit-venv)
# that sees Termux's numpy; tries the runtime as a binary wheel only (a source build of these
# on Termux normally fails after a long time) and says so when there is none; adds --key to
# ~/.ssh/authorized_keys and starts sshd on port 8022. Safe to run again.
# NOT VERIFIED ON A PHONE: written from Termux's documented behaviour; no device was available.
set -euo pipefail

venv="$HOME/.edgekit-venv"
key=""
runtime="none"
while [ $# -gt 0 ]; do
  case "$1" in
    --key) key="${2:?--key needs a public key}"; shift 2 ;;
    --venv) venv="${2:?--venv needs a folder}"; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    onnxruntime|ai-edge-litert|tflite-runtime|none) runtime="$1"; shift ;;
    *) echo "setup.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

if [ -z "${PREFIX:-}" ] || [ "${PREFIX#*com.termux}" = "$PREFIX" ]; then
  echo "setup.sh: run this inside Termux on the phone (PREFIX is not Termux's)." >&2
  exit 2
fi

echo "== packages: python, numpy, openssh"
pkg install -y python python-numpy openssh >/dev/null

echo "== virtualenv: $venv"
if [ ! -x "$venv/bin/python" ]; then
  python -m venv --system-site-packages "$venv"   # Termux's numpy is a system package
fi
"$venv/bin/python" -c "import numpy; print('numpy', numpy.__version__)"

if [ "$runtime" != "none" ]; then
  echo "== runtime: $runtime (binary wheels only)"
  if ! "$venv/bin/python" -m pip install -q --only-binary=:all: "$runtime"; then
    cat >&2 <<EOF
setup.sh: there is no $runtime wheel for Termux (PyPI's are built for glibc Linux, Termux is bionic).
  Look for a Termux package (pkg search onnxruntime; pkg search tflite) or build it yourself;
  see targets/android/README.md, "What can run". numpy and sshd are set up regardless.
EOF
    runtime_missing=1
  fi
fi

if [ -n "$key" ]; then
  echo "== ssh key"
  case "$key" in ssh-*|ecdsa-*|sk-*) ;; *) echo "setup.sh: --key must be a public key line (ssh-ed25519 AAAA...)" >&2; exit 2 ;; esac
  mkdir -p "$HOME/.ssh"
  chmod 700 "$HOME/.ssh"
  touch "$HOME/.ssh/authorized_keys"
  chmod 600 "$HOME/.ssh/authorized_keys"
  grep -qxF "$key" "$HOME/.ssh/authorized_keys" || printf '%s\n' "$key" >> "$HOME/.ssh/authorized_keys"
fi

echo "== sshd on port 8022"
pgrep -x sshd >/dev/null || sshd

cat <<EOF

Ready. On the computer:
  adb forward tcp:8022 tcp:8022
  edgekit bench BUNDLE --on 'ssh://u0@127.0.0.1:8022?python=$venv/bin/python'
EOF
if [ "${runtime_missing:-0}" = 1 ]; then
  echo "(no $runtime here yet: a bench will end with INFRA_ERROR 'runtime ... is not installed')"
  exit 3
fi
