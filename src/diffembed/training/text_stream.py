"""Stream unlabelled text as fixed-length token rows for continued (masked-diffusion) pretraining.

Why it looks like this:

* Determinism, for exact resume. Epoch ``e`` reads the files in an order that depends only on the
  set of files, ``seed`` and ``e`` (``random.Random(f"{seed}:{e}")``), documents in file order, and
  the tokenizer is deterministic; so a resumed run replays the stream and drops the rows it already
  trained on (``rows(skip=n)``) instead of saving reader state. Every epoch holds the same number of
  rows, so whole epochs are skipped without reading them; only the last partial one is replayed.
* EOS-separated packing (RoBERTa's FULL-SENTENCES). Documents are tokenised without special tokens,
  each followed by one separator (EOS by default) and concatenated; the stream is cut into rows of
  ``seq_len`` with no padding, a document may run on into the next row, and attention spans the row.
* The last partial row of every epoch is dropped (also with ``loop=True``), so an epoch's rows
  depend on nothing outside it; that is what lets whole epochs be skipped on resume.
* The held-out split is by document: a stable hash of the document key (its resolved path, plus
  ``#<record>`` for jsonl/parquet), so train and held-out never share text and the split survives
  added files and a changed seed.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from diffembed import sources
from diffembed.errors import DataFileError, InputError
from diffembed.sources import CORPUS_FILES

SPLITS = ("train", "heldout", "all")
BATCH_DOCS = 64  # documents per tokenizer call
BATCH_CHARS = 4_000_000  # ...or fewer, when the documents are long


def list_files(paths: Sequence[str | Path]) -> list[Path]:
    """The corpus files (``sources.CORPUS_FILES``: what ``index add`` reads, each also gzipped, plus
    parquet) given directly or found in folders; an error when there are none."""
    files = sources.list_files(paths, CORPUS_FILES)
    if not files:
        raise DataFileError(f"no supported text files in {', '.join(str(p) for p in paths)}")
    return files


def is_heldout(doc_key: str, fraction: float) -> bool:
    """Whether a document is held out: blake2b of its key, so the same on every machine and run."""
    if fraction <= 0:
        return False
    digest = hashlib.blake2b(doc_key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


class PackedStream:
    """Rows of ``seq_len`` token ids packed from documents, in a deterministic, resumable order.

    Counters, reset by each ``rows()`` call and counting every read (each epoch again, replayed rows
    too; documents are read up to one tokenizer batch ahead of the rows): ``documents_read`` (in the
    split), ``documents_skipped_non_utf8``, ``tokens_read`` (separators included) and
    ``epochs_started`` (epochs jumped whole on resume included: the current epoch + 1).
    """

    def __init__(self, files: Sequence[Path], tokenizer, seq_len: int, *, split: str = "all",
                 heldout_fraction: float = 0.0, seed: int = 0, loop: bool = True,
                 text_field: str = "text", shuffle_files: bool = True, separator_id: int | None = None):
        if not files:
            raise DataFileError("no files to stream")
        if split not in SPLITS:
            raise InputError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
        if not 0.0 <= heldout_fraction <= 1.0:
            raise InputError(f"heldout_fraction must be in [0, 1], not {heldout_fraction}")
        if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
            raise InputError(f"seq_len must be a positive integer, not {seq_len!r}")
        sep = separator_id if separator_id is not None else getattr(tokenizer, "eos_token_id", None)
        if sep is None:
            raise InputError("the tokenizer has no eos token: pass separator_id")
        self.files = sorted({Path(f).resolve() for f in files}, key=str)
        self.tokenizer, self.seq_len, self.separator_id = tokenizer, seq_len, int(sep)
        self.split, self.heldout_fraction, self.seed, self.loop = split, heldout_fraction, seed, loop
        self.text_field, self.shuffle_files = text_field, shuffle_files
        self._reset_counters()

    def rows(self, skip: int = 0) -> Iterator[list[int]]:
        """Rows of exactly ``seq_len`` ids; ``skip=n`` yields what ``rows()`` yields after its first n."""
        if skip < 0:
            raise InputError(f"skip must be >= 0, not {skip}")
        self._reset_counters()
        epoch, rows_per_epoch = 0, None
        while True:
            if rows_per_epoch and skip >= rows_per_epoch:  # every epoch has as many rows: jump them
                jumped, skip = divmod(skip, rows_per_epoch)
                epoch += jumped
                self.epochs_started += jumped
            self.epochs_started += 1
            count = 0
            for row in self._epoch_rows(epoch):
                count += 1
                if skip:
                    skip -= 1
                    continue
                yield row
            if count == 0:
                raise DataFileError(self._empty_message())
            if not self.loop:
                return
            rows_per_epoch = count
            epoch += 1

    def epoch_files(self, epoch: int) -> list[Path]:
        """The file order of one epoch."""
        order = list(self.files)
        if self.shuffle_files:
            random.Random(f"{self.seed}:{epoch}").shuffle(order)
        return order

    def documents(self, files: Iterable[Path] | None = None) -> Iterator[tuple[str, str]]:
        """(doc_key, text) of this split, from ``files`` (default: all, sorted), empty ones dropped.

        A plain/HTML file is one document keyed by its resolved path; a jsonl line or parquet row is
        keyed ``f"{path}#{record_index}"`` (0-based among records). A plain file outside the split is
        not even read; one that is not UTF-8 is skipped and counted."""
        skipped: list[str] = []
        for path in self.files if files is None else files:
            key = str(Path(path).resolve())
            if CORPUS_FILES.kind(path) in ("text", "html") and not self._in_split(key):
                continue
            for i, text in sources.file_texts(path, self.text_field, skipped):
                doc_key = key if i is None else f"{key}#{i}"
                if text.strip() and self._in_split(doc_key):
                    self.documents_read += 1
                    yield doc_key, text
            self.documents_skipped_non_utf8 += len(skipped)
            skipped.clear()

    def _epoch_rows(self, epoch: int) -> Iterator[list[int]]:
        n, buf = self.seq_len, []
        for ids in self._token_docs(self.documents(self.epoch_files(epoch))):
            buf.extend(ids)
            full = len(buf) // n
            for i in range(full):
                yield buf[i * n:(i + 1) * n]
            buf = buf[full * n:]
        # the partial tail in ``buf`` is dropped: see the module docstring

    def _token_docs(self, docs: Iterator[tuple[str, str]]) -> Iterator[list[int]]:
        """Token ids + separator per document, tokenised in batches; documents with no token dropped."""
        for texts in _batches(text for _, text in docs):
            enc = self.tokenizer(texts, add_special_tokens=False, return_attention_mask=False,
                                 return_token_type_ids=False, verbose=False)
            for ids in enc["input_ids"]:
                if ids:
                    self.tokens_read += len(ids) + 1
                    yield [*ids, self.separator_id]

    def _in_split(self, key: str) -> bool:
        if self.split == "all":
            return True
        return is_heldout(key, self.heldout_fraction) == (self.split == "heldout")

    def _empty_message(self) -> str:
        what = f"the {self.split!r} split (heldout_fraction={self.heldout_fraction})"
        if self.tokens_read == 0:
            return f"{what} of {len(self.files)} file(s) holds no text"
        return f"{what} holds {self.tokens_read} tokens, fewer than one row of seq_len={self.seq_len}"

    def _reset_counters(self) -> None:
        self.documents_read = 0
        self.documents_skipped_non_utf8 = 0
        self.tokens_read = 0
        self.epochs_started = 0


def _batches(texts: Iterator[str]) -> Iterator[list[str]]:
    batch, chars = [], 0
    for text in texts:
        batch.append(text)
        chars += len(text)
        if len(batch) >= BATCH_DOCS or chars >= BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch
