"""Pretraining step throughput: diffembed's masked-only LM head vs the plain full-logit step.

One training step is forward + backward + AdamW on a batch of masked-diffusion rows. Two ways to
compute the same loss, on the same model, rows and masks:
- diffembed: `MaskedDenoiser` (hidden states of masked positions only go through the LM head);
- peer: the plain transformers way, `model(input_ids).logits` over every position, then
  `diffusion_loss` (what an MDLM/LLaDA-style loop written on top of transformers does).
Both losses are checked equal before timing. Models: the tiny 2-layer Llama of the unit tests and
SmolLM2-135M (the packaged GGUF, converted once). Rows for SmolLM2 are real text (Debian's python3.11-doc); the tiny model,
whose word-level vocabulary would read that text as unknown tokens, gets random token rows.

Reproduce:
    .venv/bin/python benchmarks/pretrain_throughput.py --json benchmarks/results/pretrain_throughput.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from itertools import islice
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

DOCS = Path("/usr/share/doc/python3.11/html/_sources/library")


def rows_from_docs(tokenizer, seq_len: int, n: int) -> list[list[int]]:
    from diffembed.training.text_stream import PackedStream, list_files

    if not DOCS.is_dir():
        sys.exit(f"{DOCS} not found: apt-get install python3.11-doc")
    stream = PackedStream(list_files([DOCS]), tokenizer, seq_len, loop=False, shuffle_files=False)
    return list(islice(stream.rows(), n))


def make_batch(pm, rows, seed: int):
    from diffembed.training.objectives import maskable_positions, mask_rows

    ids = torch.tensor(rows)
    attn = torch.ones_like(ids)
    maskable = maskable_positions(ids, attn, pm.special_ids)
    mb = mask_rows(ids, maskable, pm.mask_id, [seed * 1000 + i for i in range(len(rows))], objective="diffusion")
    return mb, attn


def time_steps(step, n_steps: int) -> float:
    step()  # warm-up
    start = time.perf_counter()
    for _ in range(n_steps):
        step()
    return (time.perf_counter() - start) / n_steps


def diffusion_loss(logits, mb, attn):
    """The peer's loss: CE / t over masked positions from full logits, per sequence length, batch mean."""
    import torch.nn.functional as F

    ce = F.cross_entropy(logits.float().transpose(1, 2), mb.labels, ignore_index=-100, reduction="none")
    return (ce.sum(dim=1) / mb.t / attn.sum(dim=1).clamp(min=1)).mean()


def bench(name: str, pm, rows, n_steps: int) -> dict:
    from diffembed.training.denoiser import MaskedDenoiser
    mb, attn = make_batch(pm, rows, seed=0)
    lm = pm.lm
    denoiser = MaskedDenoiser(lm, "diffusion").train()
    opt = torch.optim.AdamW(lm.parameters(), lr=1e-5)

    with torch.no_grad():
        ours = denoiser(mb.input_ids, attn, mb.labels, mb.t)["loss"].item()
        peer = diffusion_loss(lm(input_ids=mb.input_ids, attention_mask=attn).logits, mb, attn).item()
    assert abs(ours - peer) <= 1e-4 * abs(peer), (ours, peer)

    def ours_step():
        loss = denoiser(mb.input_ids, attn, mb.labels, mb.t)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def peer_step():
        logits = lm(input_ids=mb.input_ids, attention_mask=attn).logits
        diffusion_loss(logits, mb, attn).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    tokens = mb.input_ids.numel()
    results = {}
    for label, fn in (("peer", peer_step), ("diffembed", ours_step), ("peer_2", peer_step), ("diffembed_2", ours_step)):
        results[label] = time_steps(fn, n_steps)
    t_ours = min(results["diffembed"], results["diffembed_2"])
    t_peer = min(results["peer"], results["peer_2"])
    out = {"model": name, "params": sum(p.numel() for p in lm.parameters()), "batch": list(mb.input_ids.shape),
           "masked_fraction": float(mb.masked.float().mean()), "steps_timed": n_steps,
           "diffembed_s_per_step": t_ours, "peer_s_per_step": t_peer,
           "diffembed_tokens_per_s": tokens / t_ours, "peer_tokens_per_s": tokens / t_peer,
           "speedup": t_peer / t_ours, "loss_check": {"diffembed": ours, "peer": peer}}
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per repetition (135M)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from pretrain_helpers import build_tiny_lm

    from diffembed.training.pretrain_config import ModelSection, ObjectiveSection
    from diffembed.training.pretrain_model import load_pretrain_model

    tiny_dir = Path("bench_out/tiny_lm")
    if not (tiny_dir / "config.json").exists():
        build_tiny_lm(tiny_dir)
    results = []
    for name, path, steps in (("tiny-llama-2x32", str(tiny_dir), 50), ("smollm2-135m", "smollm2-135m", args.steps)):
        torch.manual_seed(0)
        pm = load_pretrain_model(ModelSection(path=path), ObjectiveSection())
        if name.startswith("tiny"):  # its word-level vocabulary would turn real text into <unk>s
            g = torch.Generator().manual_seed(0)
            low = max(pm.special_ids) + 1
            rows = torch.randint(low, pm.lm.config.vocab_size, (args.batch, args.seq_len), generator=g).tolist()
        else:
            rows = rows_from_docs(pm.tokenizer, args.seq_len, args.batch)
        results.append(bench(name, pm, rows, steps))
        del pm
    payload = {"date": dt.date.today().isoformat(), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "cpu_count": os.cpu_count(), "load_avg_start": os.getloadavg(), "results": results}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
