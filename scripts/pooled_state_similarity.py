"""How alike a causal decoder's pooled states are before training (docs/recipe-results.md).

Last-token pooling of the packaged SmolLM2-135M, kept causal, over the first N passages of a BEIR
folder: the mean pairwise cosine of the pooled state when the text is bare and ends with the EOS (the
runtime's causal format) and when it is rendered through the tokenizer's chat template (pooling its
final token). The closer to 1, the less the pooled state tells texts apart at the start.

    HF_HUB_OFFLINE=1 python scripts/pooled_state_similarity.py data/pairs/dev-beir-300 -n 40
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

from diffembed.modeling.loader import resolve_model_path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", type=Path, help="a BEIR folder (corpus.jsonl)")
    ap.add_argument("-n", type=int, default=40, help="passages to compare")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--max-tokens", type=int, default=127)
    args = ap.parse_args()
    folder, _ = resolve_model_path(args.model)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()  # stock decoders load causal
    with (args.dataset / "corpus.jsonl").open(encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line, _ in zip(f, range(args.n))]
    clipped = [tok(t, add_special_tokens=False)["input_ids"][:args.max_tokens] for t in texts]
    formats = {
        "bare text + EOS": [ids + [tok.eos_token_id] for ids in clipped],
        "chat template": [tok.apply_chat_template([{"role": "user", "content": tok.decode(ids)}], tokenize=True,
                                                  return_dict=True)["input_ids"] for ids in clipped],
    }
    for name, seqs in formats.items():
        with torch.no_grad():
            vecs = torch.stack([F.normalize(model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1], dim=-1)
                                for ids in seqs])
        n = len(vecs)
        mean = ((vecs @ vecs.T).sum() - n) / (n * n - n)
        last = tok.convert_ids_to_tokens(seqs[0][-1:])[0]
        print(f"{name}: pooled token {last!r}, mean pairwise cosine {mean:.3f} over {n} passages")


if __name__ == "__main__":
    main()
