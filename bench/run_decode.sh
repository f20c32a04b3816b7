#!/bin/bash
# The decode benchmark in one device call: every variant of bench_decode.py in its own process on the same
# random-init Llama-3.1-8B-shape model; ends with the table. Run from the repository root on the GPU machine,
# carrying .anchor-whl and .anchors as for run_all.sh:
#   bash bench/run_decode.sh ts_bf16 unsloth_bf16 hf_bf16 ts_nf4 unsloth_nf4 ...
# BENCH_BUDGET_S=N skips variants not started within N seconds. base:VARIANT runs VARIANT with the tunesmith
# package of an earlier commit, for a before/after in the same call: unpack it here first with
# `mkdir -p .base && git archive COMMIT tunesmith | tar -x -C .base` (ignore .base, carry it).
set -u
LOGS=${BENCH_LOGS:-/tmp/decode-logs}; mkdir -p $LOGS /tmp/anchor-site
OUTDIR=${OUT:-/tmp}
[ -f /tmp/anchor-site/.done ] || { for f in .anchor-whl/*.whl .anchor-whl/*.zip; do python3 -m zipfile -e "$f" /tmp/anchor-site; done; touch /tmp/anchor-site/.done; }
export PYTHONPATH=/tmp/anchor-site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1
D=/tmp/model-8b
[ -f $D/config.json ] || ARCH=8b python3 .anchors/anchor_bench.py prep $D 2>&1 | tail -1
for v in "$@"; do
  if [ -n "${BENCH_BUDGET_S:-}" ] && [ $SECONDS -gt "$BENCH_BUDGET_S" ]; then echo "skipped $v (BENCH_BUDGET_S)"; continue; fi
  code=$PWD label=""
  [ "${v#base:}" != "$v" ] && code=$PWD/.base label=base
  log=$LOGS/${v/:/-}.log
  PYTHONPATH=/tmp/anchor-site:$code BENCH_LABEL=$label timeout 240 python3 bench/bench_decode.py run $D ${v#base:} > $log 2>&1
  echo "rc=$? $v"; grep RESULT $log || tail -8 $log
done
for f in $LOGS/*.log; do echo "=== $f"; cat $f; done > $OUTDIR/decode.log
python3 bench/bench_decode.py table $LOGS | tee $OUTDIR/decode-table.md
