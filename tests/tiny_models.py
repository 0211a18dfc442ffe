"""Tiny random models and tokenizers built on the fly, shared by the fixtures and the tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch

WORDS = (
    "the a an of to in and or is was are be it this that on for with as by at from city river capital "
    "germany berlin paris france germany's population people million has have many small large old new "
    "red green blue cat dog sat mat house tree water fire earth wind music song book story king queen "
    "war peace first second third year years one two three four five six seven eight nine ten . , ? !"
).split()


def _tokenizer(folder: Path, style: str):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if style == "bert":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    else:
        specials = ["<|endoftext|>", "<unk>", "<|im_end|>", "<|MASK|>", "<s>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(set(WORDS)))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=specials[1]))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    if style == "bert":
        core.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
        )
        tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]",
                                      cls_token="[CLS]", sep_token="[SEP]")
    elif style == "llama":
        core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
        tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="<|endoftext|>")
    else:
        tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<|endoftext|>", unk_token="<unk>",
                                      eos_token="<|im_end|>")
    tok.save_pretrained(folder)
    return len(vocab)


def build_tiny(folder: Path, family: str, max_positions: int = 128, seed: int = 0) -> Path:
    """A 2-layer random model of the given family saved with its tokenizer in ``folder``."""
    from transformers import (BertConfig, BertModel, Gemma3TextConfig, Gemma3TextModel, LlamaConfig,
                              LlamaForCausalLM, Qwen3Config, Qwen3Model)

    folder.mkdir(parents=True, exist_ok=True)
    vocab = _tokenizer(folder, {"bert": "bert", "llama": "llama"}.get(family, "qwen"))
    torch.manual_seed(seed)
    if family == "bert":
        cfg = BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=max_positions, pad_token_id=0)
        model = BertModel(cfg)
    elif family == "llama":
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions)
        model = LlamaForCausalLM(cfg)  # saved with an LM head: the loader must take the base model
    elif family == "gemma3":
        cfg = Gemma3TextConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                               max_position_embeddings=max_positions, sliding_window=4, pad_token_id=0)
        model = Gemma3TextModel(cfg)  # sliding-window layers: bidirectional must reach them too
    else:
        cfg = Qwen3Config(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                          max_position_embeddings=max_positions, pad_token_id=0)
        model = Qwen3Model(cfg)
    model.save_pretrained(folder)
    return folder


# The shape of SmolLM2's and Qwen's templates: a system turn, then each message between markers
CHAT_TEMPLATE = ("{% for m in messages %}{{ '<s> ' + m['role'] + ' ' + m['content'] + ' <|im_end|>' }}"
                 "{% endfor %}{% if add_generation_prompt %}{{ '<s> assistant' }}{% endif %}")


def add_chat_template(folder: Path) -> Path:
    """Give a tiny decoder's tokenizer a chat template, as real instruct-ready decoders ship (SmolLM2);
    sentence-transformers >= 6 then renders every input through it unless told otherwise."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(folder)
    return folder


def build_pplx_layout(folder: Path) -> Path:
    """A folder laid out like the released pplx-embed checkpoints, from a tiny random Qwen3."""
    build_tiny(folder, "qwen3")
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update({
        "model_type": "bidirectional_pplx_qwen3",
        "architectures": ["PPLXQwen3Model"],
        "auto_map": {"AutoConfig": "configuration.PPLXQwen3Config", "AutoModel": "modeling.PPLXQwen3Model"},
        "use_bidirectional_attention": True,
        "use_cache": False,
    })
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    # Remote code that must never run: importing it would raise.
    for name in ("modeling.py", "configuration.py", "st_quantize.py"):
        (folder / name).write_text("raise RuntimeError('remote code was executed')\n")
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "", "type": "st_quantize.FlexibleQuantizer"},
    ]))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 32, "pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False,
        "include_prompt": True,
    }))
    return folder


def folder_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """The weights of a saved model folder (model.safetensors)."""
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


def assert_same_tensors(a: Path, b: Path) -> None:
    """Two saved model folders hold the same tensors, bit for bit."""
    ta, tb = folder_tensors(a), folder_tensors(b)
    assert sorted(ta) == sorted(tb)
    for name in ta:
        assert ta[name].dtype == tb[name].dtype and torch.equal(ta[name], tb[name]), name
