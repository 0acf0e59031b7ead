#!/usr/bin/env bash
# Create benchmarks/.venv-bench: labelloop (editable) + the comparison libraries.
# Usage: bash benchmarks/setup_bench_env.sh   (from the repo root; needs .venv/bin/uv from `make install`)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="$ROOT/benchmarks/.venv-bench"
UV="$ROOT/.venv/bin/uv"
if [ ! -x "$UV" ]; then python3 -m venv "$ROOT/.venv" && "$ROOT/.venv/bin/pip" install --quiet uv; fi
[ -x "$VENV/bin/python" ] || "$UV" venv --python "$ROOT/.venv/bin/python" "$VENV"
# If a later version of a comparison library pulls torch, pin the local CPU wheel first:
#   "$UV" pip install --python "$VENV/bin/python" torch==2.13.0
"$UV" pip install --python "$VENV/bin/python" -e "$ROOT" -r "$ROOT/benchmarks/requirements.txt"
"$VENV/bin/python" -c "import skactiveml, small_text, labelloop; print('bench env ok:', skactiveml.__version__, small_text.__version__)"
