"""Split raw text into token-budget chunks that end at sentence boundaries where they can.

Works on the tokenizer's own tokens and character offsets, so chunk budgets are exact and every
chunk carries the character span it came from.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

# A sentence ends at a terminal mark (Latin, Korean and CJK full stops, ! ?, ellipses), then any
# closing quotes or brackets (Korean writes “…다.” and 「…」), then whitespace; or at an ideographic
# full stop with no space after it (Chinese and Japanese write none); or at a blank line. A quote
# followed by a Korean quotative particle (“…다.” 라고 말했다) is reported speech inside a sentence.
_TERMINALS = ".!?。！？｡．…‥"
_CLOSERS = "\"')\\]”’」』》〉）»›"
_QUOTATIVE = r"(?:이?라고|하고|라며|하며|라는|고)(?=\s)"
_BOUNDARY = re.compile(rf"(?<=[{_TERMINALS}])\s+|(?<=[{_TERMINALS}])[{_CLOSERS}]+\s+(?!{_QUOTATIVE})"
                       rf"|(?<=[。！？｡])[{_CLOSERS}]*(?=\S)|\n\s*\n")


@dataclass(frozen=True)
class TextChunk:
    token_start: int
    token_end: int
    char_start: int
    char_end: int


def sentence_starts(text: str) -> list[int]:
    """Character offsets where a new sentence begins (always includes 0)."""
    return [0] + [m.end() for m in _BOUNDARY.finditer(text) if m.end() < len(text)]


def trim_offsets(text: str, offsets: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Offsets without the whitespace some tokenizers count into a token: SentencePiece's ``▁word``
    and byte-level BPE's ``Ġword`` start at the space before the word. Left in, a sentence or word
    start would land inside the token before it, and chunk spans would begin with a space."""
    out = []
    for s, e in offsets:
        while s < e and text[s].isspace():
            s += 1
        out.append((s, e))
    return out


def split_chunks(text: str, offsets: list[tuple[int, int]], budget: int) -> list[TextChunk]:
    """Greedily pack whole sentences into chunks of at most ``budget`` tokens.

    A sentence longer than the budget is cut before the last token within the budget that starts a
    word, else before the last one that starts a new character. Cutting blindly every ``budget``
    tokens would split characters: some tokenizers give one character several tokens with the same
    offsets (BERT's NFD normaliser turns a Hangul syllable into 2-3 jamo pieces; byte-level BPE
    splits multi-byte characters), which would put one character in two chunks. Only a single
    character with more tokens than the budget makes a chunk exceed it. Offsets are compared without
    leading whitespace (``trim_offsets``), so a token that is only a space never starts a chunk.
    """
    if budget < 1:
        raise ValueError("chunk budget must be positive")
    offsets = trim_offsets(text, offsets)
    n = len(offsets)
    if n == 0:
        return []
    char_safe: list[int] = []
    word_safe: list[int] = []
    max_end = -1
    for j, (s, e) in enumerate(offsets):
        if j > 0 and s >= max_end and e > s:
            char_safe.append(j)
            if s > 0 and text[s - 1].isspace():
                word_safe.append(j)
        if e > s:
            max_end = max(max_end, e)

    def last_in(cuts: list[int], lo: int, hi: int) -> int | None:  # largest cut v with lo < v <= hi
        i = bisect.bisect_right(cuts, hi) - 1
        return cuts[i] if i >= 0 and cuts[i] > lo else None

    def hard_cut(a: int, b: int) -> int:
        """Where to cut the sentence tokens [a, b) (longer than the budget)."""
        for cuts in (word_safe, char_safe):
            cut = last_in(cuts, a, a + budget)
            if cut is not None:
                return cut
        i = bisect.bisect_right(char_safe, a)  # one character with more tokens than the budget
        return min(char_safe[i], b) if i < len(char_safe) else b

    # Token index at which each sentence starts.
    sentence_tok: list[int] = []
    j = 0
    for start in sentence_starts(text):
        while j < n and offsets[j][0] < start:
            j += 1
        if j < n and (not sentence_tok or sentence_tok[-1] != j):
            sentence_tok.append(j)
    if not sentence_tok or sentence_tok[0] != 0:
        sentence_tok.insert(0, 0)
    pieces: list[tuple[int, int]] = []
    for a, b in zip(sentence_tok, sentence_tok[1:] + [n]):
        while b - a > budget:
            cut = hard_cut(a, b)
            pieces.append((a, cut))
            a = cut
        if b > a:
            pieces.append((a, b))
    bounds: list[tuple[int, int]] = []
    for a, b in pieces:
        if bounds and b - bounds[-1][0] <= budget:
            bounds[-1] = (bounds[-1][0], b)
        else:
            bounds.append((a, b))

    chunks = []
    for a, b in bounds:
        spans = [offsets[k] for k in range(a, b) if offsets[k][1] > offsets[k][0]]
        if not spans:  # only offset-less tokens: nothing to show
            continue
        chunks.append(TextChunk(a, b, min(s for s, _ in spans), max(e for _, e in spans)))
    return chunks
