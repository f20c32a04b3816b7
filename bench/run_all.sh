#!/bin/bash
# The whole benchmark in one device call: tunesmith and the anchors (transformers+peft, Unsloth, Liger)
# on the same card, same random-init model, same loop; ends with the table.
# Run from the repository root on the GPU machine, carrying .anchor-whl (bash ../shared/gpu/prepare_anchor_wheels.sh)
# and .anchors (anchor_bench.py copied from ../shared/gpu):
#   bash bench/run_all.sh "8b 2048 2 8 hf_lora unsloth_lora ts_lora" "1b 2048 2 8 unsloth_lora ts_lora"
# Each spec: ARCH SEQ BS STEPS VARIANT...; BENCH_BUDGET_S=N skips variants not started within N seconds; variants ts_* are tunesmith's (bench/bench.py), others the anchors'.
set -u
LOGS=${BENCH_LOGS:-/tmp/bench-logs}; mkdir -p $LOGS /tmp/anchor-site
OUTDIR=${OUT:-/tmp}
[ -f /tmp/anchor-site/.done ] || { for f in .anchor-whl/*.whl .anchor-whl/*.zip; do python3 -m zipfile -e "$f" /tmp/anchor-site; done; touch /tmp/anchor-site/.done; }
export PYTHONPATH=/tmp/anchor-site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 bench/bench.py peak | tee $LOGS/0-peak.log
for spec in "$@"; do
  set -- $spec; arch=$1 seq=$2 bs=$3 steps=$4; shift 4
  export ARCH=$arch; D=/tmp/model-$arch
  [ -f $D/config.json ] || python3 .anchors/anchor_bench.py prep $D 2>&1 | tail -1
  for v in "$@"; do
    if [ -n "${BENCH_BUDGET_S:-}" ] && [ $SECONDS -gt "$BENCH_BUDGET_S" ]; then echo "skipped $arch $v $seq (BENCH_BUDGET_S)"; continue; fi
    log=$LOGS/$arch-$v-$seq.log
    case $v in ts_*) cmd="python3 bench/bench.py run $D $v $seq $bs $steps" ;; *) cmd="python3 .anchors/anchor_bench.py run $D $v $seq $bs $steps" ;; esac
    timeout 200 $cmd > $log 2>&1
    echo "rc=$? $arch $v $seq"; grep RESULT $log || tail -5 $log
  done
done
for f in $LOGS/*.log; do echo "=== $f"; cat $f; done > $OUTDIR/bench.log
python3 bench/bench.py table $LOGS | tee $OUTDIR/table.md
