#!/usr/bin/env bash
# The issue-13 evidence run: the contextual stage (recipes/minilm-contextual.yaml) on the packaged
# MiniLM, then SQuAD v1.1 dev scored before and after (evaluation only; never trained or tuned on):
# ConTEB-style chunk retrieval naive vs late (64-token chunks, `data build --kind contextual`) and
# question -> paragraph, plus the builder's own contextual dev set. First MAX_QUERIES judged queries.
# Resumable: a finished stage is skipped, an interrupted one continues from its last checkpoint, and
# an existing eval JSON is not recomputed. Extra arguments go to `diffembed train` as overrides, e.g.
#   ARM=pairs-start bash scripts/train_minilm_contextual.sh model.path=runs/minilm-pairs/pairs/final output_dir=runs/minilm-pairs-contextual
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
DE=.venv/bin/diffembed
OUT=docs/training
Q=${MAX_QUERIES:-2000}
ARM=${ARM:-minilm}
mkdir -p "$OUT"
[ -d data/contextual-500 ] || $DE data contextual --out data/contextual-500 --max-chunk-chars 500
[ -d data/squad-contextual ] || $DE data build ../shared/data/squad-v1.1-dev.json.gz --kind contextual --chunk-tokens 64 --out data/squad-contextual
[ -d data/squad-retrieval ] || $DE data build ../shared/data/squad-v1.1-dev.json.gz --kind retrieval --out data/squad-retrieval
score() {  # score MODEL TAG
  [ -f "$OUT/squadctx-$2.json" ] || $DE eval data/squad-contextual --model "$1" --mode both --max-queries "$Q" \
      --precision float32,int8,binary --json "$OUT/squadctx-$2.json"
  [ -f "$OUT/squad-$2.json" ] || $DE eval data/squad-retrieval --model "$1" --max-queries "$Q" \
      --precision float32,int8,binary --json "$OUT/squad-$2.json"
  [ -f "$OUT/ctxdev-$2.json" ] || $DE eval data/contextual-500/dev-contextual --model "$1" --mode both \
      --json "$OUT/ctxdev-$2.json"
}
start=default
for arg in "$@"; do case $arg in model.path=*) start=${arg#model.path=} ;; esac; done
score "$start" "$ARM-start"
out=$($DE train -c recipes/minilm-contextual.yaml -q "$@" | awk -F'\t' '$1=="contextual"{print $2}')
score "$out" "$ARM-contextual"
echo "done: $OUT"
