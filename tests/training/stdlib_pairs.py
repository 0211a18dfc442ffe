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
                doc = inspect.getdoc(o)
                paras = [p.strip() for p in (doc or "").split("\n\n") if p.strip()]
                if len(paras) < 2:
                    continue
                first, rest = " ".join(paras[0].split()), " ".join(" ".join(paras[1:]).split())
                if len(first.split()) >= 4 and len(rest.split()) >= 10:
                    found.setdefault(first, (key, rest[:600]))
    return [{"id": k, "query": q, "positive": p} for q, (k, p) in sorted(found.items())]


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


def tiny_bert_for(texts: list[str], folder: Path, hidden: int = 64, seed: int = 0) -> Path:
    """A random 2-layer BERT with a WordPiece vocabulary trained on `texts` (so real text is not all [UNK])."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(
        vocab_size=2000, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")
    torch.manual_seed(seed)
    model = BertModel(BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=hidden, num_hidden_layers=2,
                                 num_attention_heads=4, intermediate_size=2 * hidden, max_position_embeddings=256))
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder
