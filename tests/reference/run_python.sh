#!/usr/bin/env bash
# Runs a reference script with the project's Python (torch, transformers,
# safetensors, numpy). Exits 77, which CTest reports as skipped, when that
# interpreter does not exist: run scripts/install-deps.sh to create it.
#   run_python.sh PYTHON SCRIPT [ARGS...]
python="$1"
shift
if [ ! -x "$python" ]; then
  echo "SKIP: $python not found; run scripts/install-deps.sh to create the reference virtualenv"
  exit 77
fi
exec "$python" "$@"
