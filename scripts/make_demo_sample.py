"""Build the packaged demo sample (src/diffembed/data/squad_sample.jsonl) from SQuAD v1.1 dev.

Each line is one Wikipedia article: its title and paragraphs joined into one text, plus every
question with the character offset of its answer in that text (so the gold chunk is the one holding
that offset). Run: python scripts/make_demo_sample.py [path/to/squad-v1.1-dev.json.gz]
"""

import gzip
import json
import sys
from pathlib import Path

ARTICLES = ["Sky_(United_Kingdom)", "Victoria_(Australia)", "1973_oil_crisis", "Amazon_rainforest",
            "Packet_switching", "Black_Death"]


def main() -> None:
    src = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parents[1] / "../shared/data/squad-v1.1-dev.json.gz")
    out = Path(__file__).parents[1] / "src/diffembed/data/squad_sample.jsonl"
    data = {a["title"]: a for a in json.load(gzip.open(src))["data"]}
    with out.open("w", encoding="utf-8") as f:
        for name in ARTICLES:
            article = data[name]
            title = name.replace("_", " ")
            text, questions = title, []
            for para in article["paragraphs"]:
                text += "\n\n"
                base = len(text)
                text += para["context"]
                for qa in para["qas"]:
                    start = base + qa["answers"][0]["answer_start"]
                    assert text[start:].startswith(qa["answers"][0]["text"])
                    questions.append({"id": qa["id"], "question": qa["question"], "answer_start": start})
            f.write(json.dumps({"_id": name, "title": title, "text": text, "questions": questions}, ensure_ascii=False) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
