#!/usr/bin/env bash
# The label-efficiency runs reported in docs/benchmarks.md (seed 50, batch 100, 3 repeats).
set -euo pipefail
cd "$(dirname "$0")/.."
export PREFECT_SERVER_ANALYTICS_ENABLED=false GX_ANALYTICS_ENABLED=false DVC_NO_ANALYTICS=1 MLFLOW_ENABLE_TELEMETRY=false
PY=.venv/bin/python
D=/work/shared/datasets
$PY benchmarks/label_efficiency.py --data $D/spam.parquet --strategies random,margin,hybrid --rounds ${SPAM_ROUNDS:-20} --repeats 3 --out benchmarks/results/spam
$PY benchmarks/label_efficiency.py --data $D/satellite.parquet --strategies random,margin,hybrid --rounds ${SAT_ROUNDS:-30} --repeats 3 --out benchmarks/results/satellite
$PY benchmarks/label_efficiency.py --data $D/letter.parquet --strategies random,margin,hybrid --rounds ${LETTER_ROUNDS:-25} --repeats 3 --out benchmarks/results/letter
