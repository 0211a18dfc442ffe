#!/usr/bin/env bash
# One command from a fresh clone: install, then run the main job on real text.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
exec .venv/bin/diffembed demo "$@"
