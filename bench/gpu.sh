#!/usr/bin/env bash
# GPU check: the gpu-small recipe for a few hundred steps with sdpa, then with flash_attention_2
# (flex_attention where flash-attn is not installed). Prints tokens/s and MFU against the GPU's
# dense bf16 peak (H200: 989 TFLOP/s). Needs the project's venv (make install) and the data mirror.
#   bash bench/gpu.sh [STEPS] [PEAK_TFLOPS]
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-300}
PEAK=${2:-989}
export PIPELINE_DATA_DIR=${PIPELINE_DATA_DIR:-$(cd .. && pwd)/shared/data} HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
[ -x .venv/bin/python ] || make install
PY=.venv/bin/python
second=flash_attention_2
$PY -c "import flash_attn" 2>/dev/null || second=flex_attention
out=$(mktemp -d)
for attn in sdpa $second; do
  $PY -m pipeline pretrain --recipe recipes/pretrain/gpu-small.yaml --out "$out/$attn" \
    max_steps=$STEPS logging_steps=25 eval_steps=100000 save_steps=100000 num_samples=0 \
    attn_implementation=$attn doc_masking=$([ $attn = flex_attention ] && echo false || echo true)
  $PY - "$out/$attn" "$PEAK" "$attn" <<'PYEOF'
import json, sys
from pathlib import Path
run, peak, attn = Path(sys.argv[1]), float(sys.argv[2]) * 1e12, sys.argv[3]
rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
train = [r for r in rows if r["split"] == "train"][2:]  # skip compilation and warm-up windows
tps = sum(r["tokens_per_s"] for r in train) / len(train)
flops = json.loads((run / "run.json").read_text())["flops_per_token"]
print(f"{attn}: {tps:,.0f} tokens/s, MFU {tps * flops / peak:.1%} of {peak / 1e12:.0f} TFLOP/s bf16")
PYEOF
done
