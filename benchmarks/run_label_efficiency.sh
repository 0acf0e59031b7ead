#!/usr/bin/env bash
# The label-efficiency runs reported in docs/benchmarks.md (seed 50, batch 100).
# --n-jobs 1: on a shared 2-core machine two XGBoost/OpenMP threads spin-wait on each other and a round
# gets 10-50x slower; one thread per process is the fast setting there.
set -euo pipefail
cd "$(dirname "$0")/.."
export PREFECT_SERVER_ANALYTICS_ENABLED=false GX_ANALYTICS_ENABLED=false DVC_NO_ANALYTICS=1 MLFLOW_ENABLE_TELEMETRY=false OMP_NUM_THREADS=1
PY=.venv/bin/python
BENCH=benchmarks/.venv-bench/bin/python   # bash benchmarks/setup_bench_env.sh (scikit-activeml, small-text)
D=/work/shared/datasets
# spam: labelloop random/margin/hybrid + the libraries' margin, 5 repeats
$BENCH benchmarks/compare_libraries_efficiency.py --data $D/spam.parquet \
    --strategies random,margin,hybrid,skactiveml_margin,smalltext_breaking_ties \
    --seed-size 50 --batch-size 100 --rounds ${SPAM_ROUNDS:-20} --repeats 5 --n-jobs 1 --out benchmarks/results/spam_libs
# scikit-activeml's diversity-only methods on spam
$BENCH benchmarks/compare_libraries_efficiency.py --data $D/spam.parquet \
    --strategies random,margin,hybrid,skactiveml_coreset,skactiveml_typiclust \
    --seed-size 50 --batch-size 100 --rounds ${SPAM_ROUNDS:-20} --repeats 5 --n-jobs 1 --out benchmarks/results/spam_div
# minority-recall variants of the hybrid (class-balanced quota / exploitation), spam and satellite
$PY benchmarks/label_efficiency.py --data $D/spam.parquet --strategies random,margin,hybrid,hybrid_lb,hybrid_lb_q3 \
    --variant hybrid_lb=quota_balance:labelled \
    --variant hybrid_lb_q3=exploit_fraction:0.6,quota_fraction:0.3,explore_fraction:0.1,quota_balance:labelled \
    --seed-size 50 --batch-size 100 --rounds ${SPAM_ROUNDS:-20} --repeats 5 --n-jobs 1 --out benchmarks/results/spam_minority
$PY benchmarks/label_efficiency.py --data $D/satellite.parquet --strategies random,margin,hybrid,hybrid_lb,hybrid_lb_q3 \
    --variant hybrid_lb=quota_balance:labelled \
    --variant hybrid_lb_q3=exploit_fraction:0.6,quota_fraction:0.3,explore_fraction:0.1,quota_balance:labelled \
    --seed-size 50 --batch-size 100 --rounds ${SAT_ROUNDS:-35} --repeats 3 --n-jobs 1 --out benchmarks/results/satellite_minority
$PY benchmarks/label_efficiency.py --data $D/spam.parquet --strategies hybrid_iw --variant hybrid_iw=exploit_weighting:inverse_labelled \
    --seed-size 50 --batch-size 100 --rounds ${SPAM_ROUNDS:-20} --repeats 5 --n-jobs 1 --out benchmarks/results/spam_minority_iw
$PY benchmarks/label_efficiency.py --data $D/satellite.parquet --strategies hybrid_iw --variant hybrid_iw=exploit_weighting:inverse_labelled \
    --seed-size 50 --batch-size 100 --rounds ${SAT_ROUNDS:-35} --repeats 3 --n-jobs 1 --out benchmarks/results/satellite_minority_iw
$BENCH benchmarks/compare_libraries_efficiency.py --data $D/satellite.parquet \
    --strategies random,margin,hybrid,skactiveml_margin,smalltext_breaking_ties \
    --seed-size 50 --batch-size 100 --rounds ${SAT_ROUNDS:-35} --repeats 3 --n-jobs 1 --out benchmarks/results/satellite_libs
$PY benchmarks/label_efficiency.py --data $D/letter.parquet --strategies random,margin,hybrid \
    --seed-size 50 --batch-size 100 --rounds ${LETTER_ROUNDS:-35} --repeats 3 --n-jobs 1 --out benchmarks/results/letter
$BENCH benchmarks/compare_libraries_efficiency.py --data $D/letter.parquet \
    --strategies margin,skactiveml_margin,smalltext_breaking_ties \
    --seed-size 50 --batch-size 100 --rounds ${LETTER_ROUNDS:-35} --repeats 3 --n-jobs 1 --out benchmarks/results/letter_libs
# letter's random never reaches the target within 3,550 labels: replay its picks further
$PY benchmarks/extend_random.py --data $D/letter.parquet --summary benchmarks/results/letter/summary.json \
    --from 3550 --to 12050 --step 500 --n-jobs 1
$PY benchmarks/extend_random.py --data $D/letter.parquet --summary benchmarks/results/letter/summary.json \
    --from 10650 --to 11550 --step 100 --n-jobs 1 --out benchmarks/results/letter/random_extended_100.csv
# issue #14, real teams' tables (25% holdout as in the issue): churn with its categorical columns (and the
# full-pool model on its numeric columns only), fine_foods' text with TF-IDF word n-grams + logistic regression
$PY benchmarks/label_efficiency.py --data $D/churn.parquet --strategies random,margin,hybrid \
    --seed-size 50 --batch-size 100 --rounds 30 --repeats 5 --test-size 0.25 --metric macro_f1 --n-jobs 1 --no-mlflow \
    --no-progress --out benchmarks/results/churn_r5
$PY benchmarks/label_efficiency.py --data $D/churn.parquet --strategies random --drop-col state,area_code,international_plan,voice_mail_plan \
    --seed-size 50 --batch-size 100 --rounds 0 --repeats 5 --test-size 0.25 --metric macro_f1 --n-jobs 1 --no-mlflow \
    --no-progress --out benchmarks/results/churn_numeric_r5
$PY benchmarks/label_efficiency.py --data $D/fine_foods.parquet --strategies random,margin,hybrid --text-params '{"char_ngrams": null}' \
    --seed-size 50 --batch-size 100 --rounds 30 --repeats 5 --test-size 0.25 --metric accuracy --n-jobs 1 --no-mlflow \
    --no-progress --out benchmarks/results/fine_foods_r5
