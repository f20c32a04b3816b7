#!/bin/bash
# The tutorial-flow benchmark in one device call: tunesmith, Unsloth and transformers + peft + TRL, each in
# its own process, on the same random-init Llama-3.1-8B-shape model with the real Llama-3.1 tokenizer;
# ends with the table. Run from the repository root on the GPU machine, carrying .anchor-whl, .anchors (as
# for run_all.sh) and .bench-data (../shared/tokenizers/llama3_1 as llama3_1, and the first 200 rows of
# ../shared/data/medical_dialogue_zh.jsonl):
#   bash bench/run_tutorial.sh "75 4 en ts unsloth hf" "75 16 en ts unsloth"
# Each spec: STEPS BITS DATA VARIANT...; a variant ts@N runs tunesmith with max_memory_gb=N (ts@unsloth: N is
# the peak of the spec's Unsloth run, which must come before it), ts-padded with padding_free=False.
# BENCH_BUDGET_S=N skips variants not started within N seconds; BENCH_VARIANT_TIMEOUT (default 400) stops one.
set -u
LOGS=${BENCH_LOGS:-/tmp/tutorial-logs}; mkdir -p $LOGS /tmp/anchor-site
OUTDIR=${OUT:-/tmp}
[ -f /tmp/anchor-site/.done ] || { for f in .anchor-whl/*.whl .anchor-whl/*.zip; do python3 -m zipfile -e "$f" /tmp/anchor-site; done; touch /tmp/anchor-site/.done; }
export PYTHONPATH=/tmp/anchor-site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1
# BENCH_SHAPE=qwen3-4b (a bench/random_model.py shape) with BENCH_TOKENIZER=.bench-data/qwen3: another family
# (gemma3-4b with ../shared/tokenizers/gemma3 copied to .bench-data/gemma3: 33 MB, within the carry limit)
SHAPE=${BENCH_SHAPE:-llama3.1-8b}; MODEL=/tmp/model-$SHAPE; TUT=/tmp/tut-$SHAPE
if [ "$SHAPE" = llama3.1-8b ]; then
  [ -f $MODEL/config.json ] || ARCH=8b python3 .anchors/anchor_bench.py prep $MODEL 2>&1 | tail -1
else
  [ -f $MODEL/config.json ] || python3 bench/random_model.py $SHAPE $MODEL 2>&1 | tail -1
fi
[ -f $TUT/config.json ] || python3 bench/bench_tutorial.py prep $MODEL ${BENCH_TOKENIZER:-.bench-data/llama3_1} $TUT
for spec in "$@"; do
  set -- $spec; steps=$1 bits=$2 data=$3; shift 3
  for v in "$@"; do
    if [ -n "${BENCH_BUDGET_S:-}" ] && [ $SECONDS -gt "$BENCH_BUDGET_S" ]; then echo "skipped $v $bits $data (BENCH_BUDGET_S)"; continue; fi
    engine=${v%@*}; cap=""; [ "$engine" != "$v" ] && cap=${v#*@}
    pf=""; [ "$engine" = ts-padded ] && { engine=ts; pf=0; }
    if [ "$cap" = unsloth ]; then
      cap=$(python3 -c 'import json, sys; print(next(json.loads(x[7:])["peak_gib"] for x in open(sys.argv[1]) if x.startswith("RESULT ")))' \
        $LOGS/$SHAPE-$data-$bits-unsloth.log 2>/dev/null) || { echo "skipped $v $bits $data (no Unsloth peak)"; continue; }
    fi
    log=$LOGS/$SHAPE-$data-$bits-$v.log
    BENCH_4BIT=$([ "$bits" = 4 ] && echo 1 || echo 0) BENCH_DATA=$data BENCH_MAX_MEMORY_GB=$cap BENCH_PADDING_FREE=$pf \
      timeout ${BENCH_VARIANT_TIMEOUT:-400} python3 bench/bench_tutorial.py run $TUT $engine $steps > $log 2>&1
    echo "rc=$? $v $bits $data"; grep -E "RESULT|PROFILE|checkpointing plan" $log || tail -8 $log
  done
done
for f in $LOGS/*.log; do echo "=== $f"; cat $f; done > $OUTDIR/tutorial.log
python3 bench/bench_tutorial.py table $LOGS | tee $OUTDIR/tutorial-table.md
