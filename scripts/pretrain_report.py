"""Plot a pretraining run and print its summary: python scripts/pretrain_report.py RUN_DIR OUT.png [--json OUT.json]."""

import argparse
import json
from pathlib import Path

from diffembed.training.report import markdown_table, plot_run, summarize
from diffembed.training.run_log import read_log

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("run_dir", type=Path)
parser.add_argument("png", type=Path)
parser.add_argument("--json", type=Path, default=None, help="also write the summary (and the raw log) here")
parser.add_argument("--title", default="masked-diffusion pretraining")
args = parser.parse_args()

records = read_log(args.run_dir / "metrics.jsonl")
if not records:
    raise SystemExit(f"error: {args.run_dir / 'metrics.jsonl'} is missing or empty")
plot_run(args.run_dir / "metrics.jsonl", args.png, args.title)
summary = summarize(records)
if args.json:
    args.json.write_text(json.dumps({"summary": summary, "metrics": records}, indent=1) + "\n")
print(markdown_table(summary))
print(json.dumps({k: v for k, v in summary.items() if k != "sets"}))
