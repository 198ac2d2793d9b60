#!/usr/bin/env bash
# Prepare a Raspberry Pi (64-bit OS) to run edgekit bundles over ssh (see README.md).
#
#   bash setup.sh [--venv DIR] [--performance] [litert|tflite-runtime|onnxruntime|executorch|all]
#
# Creates a virtualenv (default ~/edgekit-venv) with numpy and the runtime, from binary wheels
# only, imports them to prove they load, and prints the `edgekit bench --on` line to use.
#   litert          ai-edge-litert (default; runs the raspberry-pi-5 TFLite bundles)
#   tflite-runtime  tflite-runtime 2.14 with numpy<2 (the older, smaller LiteRT runtime)
#   onnxruntime     ONNX Runtime (CPU)
#   executorch      ExecuTorch (pulls torch: large)
# --performance sets the CPU governor to "performance" until reboot (uses sudo).
# Safe to run again. NOT VERIFIED ON A PI: only checked on x86_64 Linux (it refuses to install there).
set -euo pipefail

venv="$HOME/edgekit-venv"
runtime="litert"
performance=0
while [ $# -gt 0 ]; do
  case "$1" in
    --venv) venv="${2:?--venv needs a folder}"; shift 2 ;;
    --performance) performance=1; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    litert|tflite-runtime|onnxruntime|executorch|all) runtime="$1"; shift ;;
    *) echo "setup.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

arch="$(uname -m)"
if [ "$arch" != "aarch64" ]; then
  echo "setup.sh: this is $arch; a Raspberry Pi needs a 64-bit OS (aarch64) for these runtimes' wheels." >&2
  echo "          Reinstall with Raspberry Pi OS (64-bit)." >&2
  exit 2
fi
command -v python3 >/dev/null || { echo "setup.sh: python3 is missing: sudo apt install python3" >&2; exit 2; }
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "setup.sh: Python $(python3 -V 2>&1) is too old; the runner needs 3.10 or later." >&2
  exit 2
fi
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  echo "setup.sh: the venv module is missing: sudo apt install python3-venv" >&2
  exit 2
fi

echo "== virtualenv: $venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip_install() { "$venv/bin/python" -m pip install -q --only-binary=:all: "$@"; }
pip_install --upgrade pip

case "$runtime" in
  litert) pip_install numpy ai-edge-litert; check="ai_edge_litert.interpreter" ;;
  tflite-runtime) pip_install 'numpy<2' 'tflite-runtime==2.14.0'; check="tflite_runtime.interpreter" ;;
  onnxruntime) pip_install numpy onnxruntime; check="onnxruntime" ;;
  executorch) pip_install numpy executorch; check="executorch.runtime" ;;
  all) pip_install numpy ai-edge-litert onnxruntime; check="ai_edge_litert.interpreter onnxruntime" ;;
esac
for module in numpy $check; do
  "$venv/bin/python" -c "import importlib; importlib.import_module('$module'); print('ok: $module')"
done

governors=(/sys/devices/system/cpu/cpu*/cpufreq/scaling_governor)
if [ "$performance" = 1 ]; then
  echo "== CPU governor -> performance (until reboot)"
  echo performance | sudo tee "${governors[@]}" >/dev/null
fi
if [ -r "${governors[0]}" ]; then
  echo "governor: $(sort -u "${governors[@]}" | tr '\n' ' ')"
fi
if command -v vcgencmd >/dev/null; then
  echo "$(vcgencmd measure_temp), $(vcgencmd get_throttled) (must be 0x0 for stable numbers)"
fi

cat <<EOF

Ready. On the computer:
  edgekit bench BUNDLE --on 'ssh://$(id -un)@$(hostname).local?python=$venv/bin/python'
EOF
