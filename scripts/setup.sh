#!/usr/bin/env bash
# Idempotent set-up: a .venv with the project and its dev tools.
#
# Torch: where no NVIDIA GPU is visible we install the CPU build (torch==2.13.0); an unpinned
# torch would pull a CUDA build of several GB. Where `nvidia-smi` sees a GPU we install the
# CUDA build from PyPI. Override with AOM_TORCH_SPEC (e.g. "torch==2.13.0") and
# AOM_TORCH_INDEX (e.g. https://download.pytorch.org/whl/cpu or .../whl/cu128).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${AOM_PYTHON:-}
if [[ -z "$PY" ]]; then
  for cand in python3.11 python3.12 python3.13 python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
      PY=$cand; break
    fi
  done
fi
[[ -n "$PY" ]] || { echo "setup: need Python >= 3.11 on PATH" >&2; exit 1; }

if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv with $PY"
  "$PY" -m venv .venv
fi

stamp=.venv/.aom-setup-$( (cat pyproject.toml scripts/setup.sh) | sha256sum | cut -c1-16)
if [[ -f "$stamp" ]]; then
  exit 0
fi

pip=(.venv/bin/python -m pip install --disable-pip-version-check -q)

has_gpu=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then has_gpu=1; fi
torch_spec=${AOM_TORCH_SPEC:-torch==2.13.0}
torch_args=()
if [[ -n "${AOM_TORCH_INDEX:-}" ]]; then torch_args+=(--extra-index-url "$AOM_TORCH_INDEX"); fi
if ! .venv/bin/python -c 'import torch' >/dev/null 2>&1; then
  if [[ $has_gpu == 1 ]]; then
    echo "setup: GPU found; installing CUDA torch ($torch_spec)"
  else
    echo "setup: no GPU; installing the CPU build of torch ($torch_spec)"
  fi
  "${pip[@]}" "${torch_args[@]}" "$torch_spec"
fi
if [[ $has_gpu == 0 ]] && ! .venv/bin/python -c 'import torch,sys; sys.exit(0 if torch.version.cuda is None else 1)'; then
  echo "setup: warning: a CUDA build of torch is installed on a machine without a GPU" >&2
fi

# The project and its dev tools: with uv (installed into .venv by pip; parallel downloads, about
# 25 s where pip takes about 2 min; --compile-bytecode as pip does: where PYTHONDONTWRITEBYTECODE
# is set, a venv without .pyc files compiles every import again, in every process), or with pip
# where AOM_INSTALLER=pip or uv fails. uv does not read pip's configuration files: PIP_INDEX_URL,
# PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS and PIP_CERT are passed on; a mirror set only in pip.conf is
# not (set AOM_INSTALLER=pip, or the variables).
echo "setup: installing the project and dev tools into .venv"
installed=0
if [[ ${AOM_INSTALLER:-uv} == uv ]] && "${pip[@]}" uv >/dev/null 2>&1; then
  uv_env=()
  if [[ -n "${PIP_INDEX_URL:-}" ]]; then uv_env+=("UV_DEFAULT_INDEX=$PIP_INDEX_URL"); fi
  if [[ -n "${PIP_EXTRA_INDEX_URL:-}" ]]; then uv_env+=("UV_INDEX=$PIP_EXTRA_INDEX_URL"); fi
  # pip separates find-links with spaces, uv with commas
  if [[ -n "${PIP_FIND_LINKS:-}" ]]; then uv_env+=("UV_FIND_LINKS=${PIP_FIND_LINKS// /,}"); fi
  if [[ -n "${PIP_CERT:-}" && -z "${SSL_CERT_FILE:-}" ]]; then uv_env+=("SSL_CERT_FILE=$PIP_CERT"); fi
  if env "${uv_env[@]}" .venv/bin/uv pip install --python .venv/bin/python --compile-bytecode -q -e ".[all,dev]"; then
    installed=1
  else
    echo "setup: uv could not install the project; trying pip" >&2
  fi
fi
if [[ $installed == 0 ]]; then
  "${pip[@]}" -e ".[all,dev]"
fi
rm -f .venv/.aom-setup-*
touch "$stamp"
echo "setup: done (.venv)"
