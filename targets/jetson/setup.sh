#!/usr/bin/env bash
# Prepare an NVIDIA Jetson (JetPack 6) to run edgekit ONNX bundles over ssh (see README.md).
#
#   bash setup.sh [--venv DIR] [--wheel FILE_OR_URL | --index-url URL] [--max-clocks]
#
# Creates a virtualenv (default ~/edgekit-venv) with numpy and ONNX Runtime, and prints the
# execution providers it offers and the `edgekit bench --on` line to use.
#   --wheel FILE_OR_URL  an onnxruntime_gpu wheel built for this JetPack (Jetson Zoo)
#   --index-url URL      a pip index serving onnxruntime-gpu for this JetPack (Jetson AI Lab)
#   (neither)            PyPI's CPU-only onnxruntime, with a loud warning
#   --max-clocks         run `sudo jetson_clocks` (clocks at the current power mode's maximum)
# Safe to run again. NOT VERIFIED ON A JETSON: only checked on x86_64 Linux (it refuses to install there).
set -euo pipefail

venv="$HOME/edgekit-venv"
wheel=""
index_url=""
max_clocks=0
while [ $# -gt 0 ]; do
  case "$1" in
    --venv) venv="${2:?--venv needs a folder}"; shift 2 ;;
    --wheel) wheel="${2:?--wheel needs a file or URL}"; shift 2 ;;
    --index-url) index_url="${2:?--index-url needs a URL}"; shift 2 ;;
    --max-clocks) max_clocks=1; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
if [ -n "$wheel" ] && [ -n "$index_url" ]; then
  echo "setup.sh: give --wheel or --index-url, not both" >&2
  exit 2
fi

if [ ! -r /etc/nv_tegra_release ]; then
  echo "setup.sh: /etc/nv_tegra_release is missing: this is not a Jetson running JetPack (L4T)." >&2
  exit 2
fi
echo "L4T: $(head -n 1 /etc/nv_tegra_release)"
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "setup.sh: Python $(python3 -V 2>&1) is too old; the runner needs 3.10+ (JetPack 6)." >&2
  exit 2
fi
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  echo "setup.sh: the venv module is missing: sudo apt install python3-venv" >&2
  exit 2
fi

echo "== virtualenv: $venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip_install() { "$venv/bin/python" -m pip install -q "$@"; }
pip_install --upgrade pip
pip_install --only-binary=:all: numpy

if [ -n "$wheel" ]; then
  pip_install "$wheel"
elif [ -n "$index_url" ]; then
  pip_install --only-binary=:all: --index-url "$index_url" onnxruntime-gpu
else
  echo "WARNING: no --wheel / --index-url: installing PyPI's CPU-only onnxruntime." >&2
  echo "         TensorRT and CUDA will NOT be used; every run will report a CPU fallback." >&2
  pip_install --only-binary=:all: onnxruntime
fi

providers="$("$venv/bin/python" -c 'import onnxruntime as o; print(o.__version__, o.get_available_providers())')"
echo "onnxruntime: $providers"
case "$providers" in
  *TensorrtExecutionProvider*) ;;
  *) echo "WARNING: TensorrtExecutionProvider is not available in this onnxruntime." >&2 ;;
esac

if command -v nvpmodel >/dev/null; then
  echo "power mode: $(sudo -n nvpmodel -q 2>/dev/null | tr '\n' ' ' || echo 'run: sudo nvpmodel -q')"
fi
if [ "$max_clocks" = 1 ]; then
  echo "== jetson_clocks (until reboot)"
  sudo jetson_clocks
fi

cat <<EOF

Ready. On the computer:
  edgekit bench BUNDLE --on 'ssh://$(id -un)@$(hostname).local?python=$venv/bin/python'
EOF
