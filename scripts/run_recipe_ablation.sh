#!/usr/bin/env bash
# Issue 14's backbone ablation (docs/recipe-results.md): recipes/pplx-smollm2.yaml run once per backbone
# (diffusion, mntp, bidirectional, causal) with the same data, steps and seed, at a budget that fits one
# session on 2 CPU cores. Two lanes of one thread each run side by side (diffusion then bidirectional;
# mntp then causal), each stage checkpoints, and re-running the script resumes or skips what is done.
#
#   bash scripts/run_recipe_ablation.sh            # all four, then the SQuAD evaluations
#   SEED=1 bash scripts/run_recipe_ablation.sh     # a second seed, into runs/abl-s1-<backbone>
#   SEED=1 LANES="diffusion causal" bash scripts/run_recipe_ablation.sh   # some arms only
#
# LANES: the lanes, space-separated, each a comma-separated list of arms run in order. The merge-effect
# evaluation (contextual-only and triplets-only models) runs for seed 0 only, or with MERGE_EFFECT=1.
#
# The budget (steps per stage) is set below as overrides of the recipe; the recipe's own CPU profile
# is about 5x longer. Evaluation uses subsets (diffembed data subset) because embedding the full dev
# corpora with a 135M decoder on CPU costs more than training a stage.
set -euo pipefail
cd "$(dirname "$0")/.."
D="${DIFFEMBED:-.venv/bin/diffembed}"
SEED="${SEED:-0}"
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
RUNS=runs/abl-s$SEED
mkdir -p "$RUNS"

# --- data (once): the triplets' mined negatives and the evaluation subsets -------------------------
[ -f data/pairs/train-mined.jsonl ] || {
  awk 'NR%20==1' data/pairs/train.jsonl > data/pairs/train-every20.jsonl   # every source, 3,884 rows
  OMP_NUM_THREADS=2 "$D" mine data/pairs/train-every20.jsonl -o data/pairs/train-mined.jsonl --count 4; }
[ -d data/pairs/dev-beir-300 ] || "$D" data subset data/pairs/dev-beir -n 300 --seed 0 -o data/pairs/dev-beir-300
[ -d data/contextual-500/dev-contextual-16 ] || \
  "$D" data subset data/contextual-500/dev-contextual -n 16 --seed 0 -o data/contextual-500/dev-contextual-16
SQUAD=../shared/data/squad-v1.1-dev.json.gz
[ -d data/squad3-retrieval ] || "$D" data build "$SQUAD" --kind retrieval --max-articles 3 --out data/squad3-retrieval
[ -d data/squad3-contextual ] || \
  "$D" data build "$SQUAD" --kind contextual --chunk-tokens 64 --max-articles 3 --out data/squad3-contextual

# --- the budget: the same for every backbone ----------------------------------------------------------
# gradient checkpointing changes memory, not the numbers (tests/training); without it two contextual
# stages side by side need more than 24 GiB (the first attempt's mntp arm was OOM-killed)
OV=(
  "output_dir=$RUNS-{backbone}" model.max_length=128 model.gradient_checkpointing=true
  stages.stage0.train.steps=60 stages.stage0.train.max_minutes=90 stages.stage0.checkpoint.every=10
  stages.stage0.eval.every=30 stages.stage0.train.seed=$SEED stages.stage0.train.threads=1
  stages.pairs.train.steps=12 stages.pairs.train.max_minutes=90 stages.pairs.checkpoint.every=4
  stages.pairs.data.dev=null stages.pairs.train.seed=$SEED stages.pairs.train.threads=1
  stages.contextual.train.steps=8 stages.contextual.train.max_minutes=90 stages.contextual.checkpoint.every=4
  stages.contextual.data.dev=null stages.contextual.train.seed=$SEED stages.contextual.train.threads=1
  stages.triplets.train.steps=8 stages.triplets.batch.size=8 stages.triplets.train.max_minutes=90 stages.triplets.checkpoint.every=4
  stages.triplets.data.dev=null stages.triplets.train.seed=$SEED stages.triplets.train.threads=1
  "evaluate.datasets=[data/pairs/dev-beir-300,data/contextual-500/dev-contextual-16]"
  evaluate.max_queries=null "evaluate.stages=[merged]"
)

squad() {  # SQuAD v1.1 dev, first 3 articles: question -> paragraph (3 precisions) and chunks naive/late
  local model=$1 out=$2
  [ -f "$out/squad3-retrieval.json" ] || "$D" eval data/squad3-retrieval --model "$model" \
      --precision float32,int8,binary --max-queries 600 --json "$out/squad3-retrieval.json" > /dev/null
  [ -f "$out/squad3-contextual.json" ] || "$D" eval data/squad3-contextual --model "$model" --mode both \
      --precision float32,binary --max-queries 600 --json "$out/squad3-contextual.json" > /dev/null
}

dev() {  # the builders' dev subsets, for models the recipe's evaluate section does not score
  local model=$1 out=$2
  [ -f "$out/dev-beir-300.json" ] || "$D" eval data/pairs/dev-beir-300 --model "$model" \
      --precision float32,int8,binary --json "$out/dev-beir-300.json" > /dev/null
  [ -f "$out/dev-contextual-16.json" ] || "$D" eval data/contextual-500/dev-contextual-16 --model "$model" \
      --mode both --precision float32,int8,binary --json "$out/dev-contextual-16.json" > /dev/null
}

lane() {
  for b in "$@"; do
    "$D" train -c recipes/pplx-smollm2.yaml backbone="$b" "${OV[@]}" >> "$RUNS-$b.log" 2>&1
    squad "$RUNS-$b/merged/final" "$RUNS-$b"
  done
}

merge_effect() {  # the two stages the merge joins, on the builders' dev sets (SQuAD too with SQUAD_TOO=1)
  for b in "$@"; do
    for s in contextual triplets; do
      mkdir -p "$RUNS-$b/eval-$s"
      dev "$RUNS-$b/$s/final" "$RUNS-$b/eval-$s"
      if [ "${SQUAD_TOO:-0}" = 1 ]; then squad "$RUNS-$b/$s/final" "$RUNS-$b/eval-$s"; fi
    done
  done
}

refs() {  # reference rows on the same sets (once; shared by every seed)
  local out=runs/abl-ref-$1
  mkdir -p "$out"
  squad "$2" "$out"; dev "$2" "$out"
}

# WAIT_PID: an earlier run's process to let finish first (resuming after a kill)
while [ -n "${WAIT_PID:-}" ] && kill -0 "$WAIT_PID" 2>/dev/null; do sleep 10; done
LANES="${LANES:-diffusion,bidirectional mntp,causal}"
MERGE_EFFECT="${MERGE_EFFECT:-$([ "$SEED" = 0 ] && echo 1 || echo 0)}"
pids=()
for l in $LANES; do lane ${l//,/ } & pids+=($!); done
for p in "${pids[@]}"; do wait "$p"; done
pids=()
{ refs minilm default; refs mpnet "$(bash scripts/get_mpnet.sh | tail -1)"; } & pids+=($!)
if [ "$MERGE_EFFECT" = 1 ]; then
  for l in $LANES; do merge_effect ${l//,/ } & pids+=($!); done
fi
for p in "${pids[@]}"; do wait "$p"; done
echo "done: python scripts/recipe_ablation_table.py --json docs/recipe-results/ablation.json --plot docs/recipe-results/ablation.png"
