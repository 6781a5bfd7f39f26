#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py): on a machine with an NVIDIA GPU, install
# requirements/gpu.txt into a venv of its own, then measure the engine on CUDA float16
# with tiny.en and base (decode times per batch and window; streams sustained with the
# performance tester at 50, 100 and 200 clients of distinct audio) and break it on
# purpose (CUDA out of memory, the GPU breaker); one table at the end.
#
#   bench/gpu_check.sh                     # everything (about 15-25 minutes)
#   bench/gpu_check.sh --clients 50 --models tiny.en --duration 20
#   bench/gpu_check.sh --dry-run           # no GPU: the same steps on the CPU in .venv, tiny shapes
#
# Environment: GPU_VENV (default .venv-gpu; an existing one is reused), PIP_ARGS (extra
# pip arguments, e.g. "--no-index --find-links /wheels" on a machine without PyPI),
# GPU_PYTHON (an interpreter that already has the packages, e.g. a GPU image's own
# python3 with requirements/gpu.txt's packages on PYTHONPATH: no venv is made),
# DATABASE_URL (default: SQLite in a scratch folder), BENCH_AUDIO_DIR (the speech, default
# ../shared/audio; or --audio-dir). Arguments go to bench/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."

dry_run=0
for argument in "$@"; do
  [ "$argument" = "--dry-run" ] && dry_run=1
done

if [ "$dry_run" = 1 ]; then
  python=.venv/bin/python
else
  if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_check: no NVIDIA GPU here (nvidia-smi); use --dry-run to check the steps on the CPU" >&2
    exit 2
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  if [ -n "${GPU_PYTHON:-}" ]; then
    python="$GPU_PYTHON"
  else
    venv="${GPU_VENV:-.venv-gpu}"
    if [ ! -x "$venv/bin/python" ]; then
      python3 -m venv "$venv"
      # shellcheck disable=SC2086  # PIP_ARGS is a list of arguments
      "$venv/bin/pip" install -q ${PIP_ARGS:-} -r requirements/gpu.txt
    fi
    python="$venv/bin/python"
  fi
fi

site=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# CTranslate2 loads cuBLAS and cuDNN at run time; pip put them here (as in the Dockerfile).
export LD_LIBRARY_PATH="$site/nvidia/cublas/lib:$site/nvidia/cudnn/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export DJANGO_SETTINGS_MODULE=fasttalk.settings

if [ "$dry_run" = 0 ]; then
  "$python" -c 'import ctranslate2, sys; n = ctranslate2.get_cuda_device_count(); print(f"CTranslate2 {ctranslate2.__version__} sees {n} CUDA device(s)"); sys.exit(0 if n else 3)'
  # base comes in two packages: join and verify it once, before anything times it.
  "$python" manage.py prepare_models
fi
exec "$python" bench/gpu_check.py "$@"
