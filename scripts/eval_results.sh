#!/usr/bin/env bash
# Reproduce every number in docs/results.md (CPU, about 75 min on 2 cores).
# Needs: bash scripts/setup.sh --dev; the SQuAD/KorQuAD dev files in ../shared/data (or SHARED_DATA=...);
# the all-mpnet-base-v2 peer from bash scripts/get_mpnet.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
data=${SHARED_DATA:-../shared/data}
ds=bench_out/datasets
out=docs/results
mpnet=$(bash scripts/get_mpnet.sh | tail -1)
de=.venv/bin/diffembed
mkdir -p "$out"

$de data build "$data/squad-v1.1-dev.json.gz" --kind retrieval --out $ds/squad-retrieval
$de data build "$data/squad-v1.1-dev.json.gz" --kind contextual --chunk-tokens 64 --out $ds/squad-contextual
$de data build "$data/korquad-v1.0-dev.json.gz" --kind retrieval --out $ds/korquad-retrieval
$de data build "$data/korquad-v1.0-dev.json.gz" --kind contextual --chunk-tokens 64 --out $ds/korquad-contextual

# 1. SQuAD question -> paragraph: MiniLM grid, mpnet through sentence-transformers as the peer
$de eval $ds/squad-retrieval --precision float32,int8,binary --dimensions 128,256,full \
  --baseline "$mpnet" --json $out/squad-retrieval-minilm.json --plot $out/squad-retrieval-minilm.png
# 2. the same peer run through diffembed's runtime (int8 / binary for mpnet too)
$de eval $ds/squad-retrieval --model "$mpnet" --precision float32,int8,binary \
  --json $out/squad-retrieval-mpnet.json
# 3. SQuAD ConTEB-style chunk retrieval: naive vs late, precision x dimensions
$de eval $ds/squad-contextual --mode both --precision float32,int8,binary --dimensions 128,256,full \
  --json $out/squad-contextual-minilm.json --plot $out/squad-contextual-minilm.png
# 4. mpnet naive vs late
$de eval $ds/squad-contextual --model "$mpnet" --mode both \
  --json $out/squad-contextual-mpnet.json --plot $out/squad-contextual-mpnet.png
# 5-7. KorQuAD: English-only models on Korean (expected to fail); mpnet on the first 1,000 queries
$de eval $ds/korquad-retrieval --json $out/korquad-retrieval-minilm.json
$de eval $ds/korquad-retrieval --model "$mpnet" --max-queries 1000 --json $out/korquad-retrieval-mpnet.json
$de eval $ds/korquad-contextual --mode both --json $out/korquad-contextual-minilm.json
