"""A small real-text retrieval task that needs no download: Python's own standard-library
docstrings (text no one here wrote). Query: a docstring's first paragraph; positive: the rest of it.
Train and dev are split by a hash of the object's name."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
from pathlib import Path

MODULES = ["json", "os", "re", "collections", "itertools", "functools", "string", "shutil", "textwrap", "pathlib",
           "random", "statistics", "heapq", "bisect", "csv", "urllib.parse", "difflib", "inspect", "argparse",
           "logging", "subprocess", "tarfile", "zipfile", "gzip", "base64", "datetime", "calendar", "fractions",
           "decimal", "tempfile", "glob", "fnmatch", "copy", "pprint", "enum", "typing", "threading", "queue",
           "socket", "ssl", "email.message", "http.client", "sqlite3", "pickle", "io", "codecs", "locale",
           "gettext", "operator", "contextlib", "abc", "dataclasses", "ast", "tokenize", "traceback", "warnings",
           "weakref", "uuid", "ipaddress", "mimetypes", "smtplib", "imaplib", "ftplib", "configparser", "plistlib",
           "secrets", "hmac", "struct", "sched", "asyncio"]


def stdlib_pairs() -> list[dict]:
    found: dict[str, tuple[str, str]] = {}
    for name in MODULES:
        mod = importlib.import_module(name)
        for attr, obj in sorted(vars(mod).items()):
            if attr.startswith("_"):
                continue
            cands = [(f"{name}.{attr}", obj)]
            if inspect.isclass(obj):
                cands += [(f"{name}.{attr}.{m}", o) for m, o in sorted(vars(obj).items())
                          if not m.startswith("_") and callable(o)]
            for key, o in cands:
                if not (inspect.isfunction(o) or inspect.isclass(o) or inspect.isbuiltin(o)
                        or inspect.ismethoddescriptor(o)):
                    continue
                # Only what the module itself defines: what else it holds depends on which other
                # modules were imported first (the task must not change with test order).
                # (transformers, for one, adds methods to logging.Logger).
                if getattr(obj, "__module__", None) != name or getattr(o, "__module__", None) not in (name, None):
                    continue
                doc = inspect.getdoc(o)
                paras = [p.strip() for p in (doc or "").split("\n\n") if p.strip()]
                if len(paras) < 2:
                    continue
                first, rest = " ".join(paras[0].split()), " ".join(" ".join(paras[1:]).split())
                if len(first.split()) >= 4 and len(rest.split()) >= 10:
                    found.setdefault(first, (key, rest[:600]))
    return [{"id": k, "query": q, "positive": p} for q, (k, p) in sorted(found.items())]


def task_digest() -> str:
    """A fingerprint of the task's text, to check it is the same whatever ran before."""
    return hashlib.sha256(json.dumps(stdlib_pairs()).encode()).hexdigest()[:16]


def is_dev(row: dict) -> bool:
    return int(hashlib.blake2b(row["id"].encode(), digest_size=8).hexdigest(), 16) % 5 == 0


def write_task(root: Path) -> tuple[Path, Path, list[str]]:
    """(train.jsonl, a BEIR dev folder, every text for a tokenizer)."""
    from diffembed.eval.datasets import write_retrieval_dataset

    rows = stdlib_pairs()
    train = [r for r in rows if not is_dev(r)]
    dev = [r for r in rows if is_dev(r)]
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train), encoding="utf-8")
    dev_dir = write_retrieval_dataset(root / "dev", {r["id"]: {"title": "", "text": r["positive"]} for r in dev},
                                      {f"q-{r['id']}": r["query"] for r in dev},
                                      {f"q-{r['id']}": {r["id"]: 1} for r in dev})
    return root / "train.jsonl", dev_dir, [r["query"] + " " + r["positive"] for r in train]


def tiny_bert_for(texts: list[str], folder: Path, hidden: int = 64, seed: int = 0, vocab_size: int = 3000) -> Path:
    """A random 2-layer BERT with a word vocabulary of `texts` (so real text is not all [UNK]).

    The vocabulary is the most frequent words, ties broken alphabetically: tokenizers' own trainers
    break ties in hash order, which made the task change from one run to the next."""
    from collections import Counter

    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()
    counts = Counter(w for t in texts for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(t)))
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))][: vocab_size - len(specials)]
    vocab = {tok: i for i, tok in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")
    torch.manual_seed(seed)
    model = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=2,
                                 num_attention_heads=4, intermediate_size=2 * hidden, max_position_embeddings=256))
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder
