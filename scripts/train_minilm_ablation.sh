#!/usr/bin/env bash
# The issue-12 evidence run: fine-tune the packaged MiniLM on data/pairs (built by `diffembed data pairs`)
# twice, with QAT + Matryoshka (recipes/minilm-pairs.yaml as is) and without (float loss, full
# dimension only), then score the start model and both results on SQuAD v1.1 dev question -> paragraph
# retrieval (evaluation only; never trained on) at float32/int8/binary x 128/256/full.
# Resumable: finished stages are skipped, an interrupted one continues from its last checkpoint,
# and an existing eval JSON is not recomputed.
#   bash scripts/train_minilm_ablation.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
DE=.venv/bin/diffembed
OUT=docs/training
Q=${MAX_QUERIES:-2000}
mkdir -p "$OUT"
[ -d data/squad-retrieval ] || $DE data build ../shared/data/squad-v1.1-dev.json.gz --kind retrieval --out data/squad-retrieval
grid=(--precision float32,int8,binary --dimensions 128,256,full --max-queries "$Q")
[ -f "$OUT/squad-minilm-start.json" ] || $DE eval data/squad-retrieval "${grid[@]}" --json "$OUT/squad-minilm-start.json"
$DE train -c recipes/minilm-pairs.yaml -q
$DE eval data/squad-retrieval --model runs/minilm-pairs/pairs/final "${grid[@]}" --json "$OUT/squad-minilm-qat.json"
$DE train -c recipes/minilm-pairs.yaml -q output_dir=runs/minilm-pairs-plain \
    stages.pairs.loss.quantization=float 'stages.pairs.loss.matryoshka_dims=[]'
$DE eval data/squad-retrieval --model runs/minilm-pairs-plain/pairs/final "${grid[@]}" --json "$OUT/squad-minilm-plain.json"
for v in start qat plain; do
  m=runs/minilm-pairs/pairs/final; [ $v = plain ] && m=runs/minilm-pairs-plain/pairs/final
  [ $v = start ] && m=default
  [ -f "$OUT/dev-minilm-$v.json" ] || $DE eval data/pairs/dev-beir --model "$m" "${grid[@]}" --json "$OUT/dev-minilm-$v.json"
done
echo "done: $OUT"
