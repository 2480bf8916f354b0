#!/usr/bin/env bash
# Every GPU check in one prepared run of at most LIMIT seconds (default 550), on a machine without network:
#   1. bench/gpu.py: tokens/s, MFU against the measured matmul peak, peak memory, per attention backend;
#   2. the GPU scoreboard: gpu-small pretrained on a time budget (what is left after the bench, within
#      0.75..2.5 minutes), then sst2, emotion, trec and squad fine-tuned from it and from scratch, all
#      eight at once on the one GPU, then `pipeline evaluate` → scoreboard.md;
#   3. the whole test suite, beside the fine-tunes (tests time nothing; the fine-tunes' budgets adapt to the pace).
# Everything that must come back goes into ONE file, $OUT/gpu-results.tgz: the device tool returns only a few
# files per call (a first run lost its scoreboard that way). Prepare here, then run there:
#   bash ../shared/gpu-kit/prepare.sh && .venv/bin/python bench/gpu/carry_corpora.py   # .gpu/, < 64 MiB
#   (device) source .gpu/env.sh; OUT=... bash bench/gpu/run.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/gpu-out}
LIMIT=${LIMIT:-555}
START=$(date +%s)
left() { echo $(( LIMIT - ($(date +%s) - START) )); }
mkdir -p "$OUT"
[ -f .gpu/env.sh ] && source .gpu/env.sh > "$OUT/env.log" 2>&1
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
python3 -c "import flash_attn" 2>/dev/null && echo "flash-attn: installed" >> "$OUT/env.log"
PY=.venv/bin/python
RUNS=runs/gpu  # under runs/ (ignored by git): kept on a warm machine between calls

echo "[$(( LIMIT - $(left) ))s] bench" | tee -a "$OUT/timeline.txt"
timeout $(( $(left) - 350 )) $PY bench/gpu.py --deadline 170 --out "$OUT/bench/gpu" > "$OUT/bench.log" 2>&1
echo "bench rc $?" >> "$OUT/timeline.txt"

# The scoreboard: what remains, less ~4 minutes for compilation, the fine-tunes and the report.
minutes=$($PY -c "print(f'{min(2.5, max(0.75, ($(left) - 270) / 60)):.2f}')")
echo "[$(( LIMIT - $(left) ))s] pretrain gpu-small, max_train_minutes=$minutes" | tee -a "$OUT/timeline.txt"
timeout $(( $(left) - 170 )) $PY -m pipeline pretrain --recipe recipes/pretrain/gpu-small.yaml \
  --out $RUNS/pretrain/gpu-small max_train_minutes=$minutes overwrite=true > "$OUT/pretrain.log" 2>&1
echo "pretrain rc $?" >> "$OUT/timeline.txt"

echo "[$(( LIMIT - $(left) ))s] fine-tunes + tests" | tee -a "$OUT/timeline.txt"
ft_limit=$(( $(left) - 45 ))
# The fine-tunes share the GPU: each gets a time budget of optimizer steps (pipeline/budget.py), so that all
# finish, with their evaluations, inside the limit; the recipes are otherwise as shipped.
ft_minutes=$($PY -c "print(f'{max(0.4, ($ft_limit - 75) / 60):.2f}')")
echo "fine-tunes: max_train_minutes=$ft_minutes each" >> "$OUT/timeline.txt"
# -v: every test's name and outcome as it ends, so a suite cut short by the limit still names its failures.
nice -n 19 timeout $ft_limit $PY -m pytest -v -n 6 -p no:cacheprovider > "$OUT/tests.log" 2>&1 &
tests=$!
pids=()
for task in sst2 emotion trec squad; do
  for init in pretrained scratch; do
    run=$RUNS/finetune/$task$([ $init = scratch ] && echo -scratch)
    OMP_NUM_THREADS=1 timeout $ft_limit $PY -m pipeline finetune --task $task --ckpt $RUNS/pretrain/gpu-small/final \
      --out $run init=$init overwrite=true max_train_minutes=$ft_minutes > "$OUT/finetune-$task-$init.log" 2>&1 &
    pids+=($!)
  done
done
for p in "${pids[@]}"; do wait "$p"; echo "finetune pid $p rc $?" >> "$OUT/timeline.txt"; done

echo "[$(( LIMIT - $(left) ))s] evaluate" | tee -a "$OUT/timeline.txt"
timeout $(( $(left) - 5 )) $PY -m pipeline evaluate --runs $RUNS --report "$OUT/scoreboard" > "$OUT/evaluate.log" 2>&1
echo "evaluate rc $?" >> "$OUT/timeline.txt"
wait $tests; echo "tests rc $?" >> "$OUT/timeline.txt"
mkdir -p "$OUT/runs"
for f in $RUNS/*/*/{run.json,eval.json,corpus.json,config.yaml,metrics.jsonl}; do
  [ -f "$f" ] && mkdir -p "$OUT/runs/$(dirname "${f#$RUNS/}")" && cp "$f" "$OUT/runs/${f#$RUNS/}"
done
echo "[$(( LIMIT - $(left) ))s] done" | tee -a "$OUT/timeline.txt"
tar czf /tmp/gpu-results.tgz -C "$OUT" . && mv /tmp/gpu-results.tgz "$OUT/" \
  && find "$OUT" -mindepth 1 ! -name gpu-results.tgz -delete
