"""Split raw text into token-budget chunks that end at sentence boundaries where they can.

Works on the tokenizer's own tokens and character offsets, so chunk budgets are exact and every
chunk carries the character span it came from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A sentence ends at ., !, ? (or CJK/Korean full stops) followed by whitespace, or at a blank line.
_BOUNDARY = re.compile(r"(?<=[.!?。！？])[\"')\]]*\s+|\n\s*\n")


@dataclass(frozen=True)
class TextChunk:
    token_start: int
    token_end: int
    char_start: int
    char_end: int


def sentence_starts(text: str) -> list[int]:
    """Character offsets where a new sentence begins (always includes 0)."""
    return [0] + [m.end() for m in _BOUNDARY.finditer(text) if m.end() < len(text)]


def split_chunks(text: str, offsets: list[tuple[int, int]], budget: int) -> list[TextChunk]:
    """Greedily pack whole sentences into chunks of at most ``budget`` tokens.

    A sentence longer than the budget is cut at token boundaries. Tokens with empty offsets (rare
    special pieces) stay with their neighbours.
    """
    if budget < 1:
        raise ValueError("chunk budget must be positive")
    n = len(offsets)
    if n == 0:
        return []
    starts = sentence_starts(text)
    # Token index at which each sentence starts.
    sentence_tok: list[int] = []
    j = 0
    for s in starts:
        while j < n and offsets[j][0] < s:
            j += 1
        if j < n and (not sentence_tok or sentence_tok[-1] != j):
            sentence_tok.append(j)
    if not sentence_tok or sentence_tok[0] != 0:
        sentence_tok.insert(0, 0)
    bounds = list(zip(sentence_tok, sentence_tok[1:] + [n]))

    pieces: list[tuple[int, int]] = []
    for a, b in bounds:
        while b - a > budget:
            pieces.append((a, a + budget))
            a += budget
        if b > a:
            pieces.append((a, b))

    chunks: list[tuple[int, int]] = []
    for a, b in pieces:
        if chunks and b - chunks[-1][0] <= budget:
            chunks[-1] = (chunks[-1][0], b)
        else:
            chunks.append((a, b))
    return [TextChunk(a, b, offsets[a][0], offsets[b - 1][1]) for a, b in chunks]
