"""Decoders become encoders through config.is_causal = False, with no model fork."""

import pytest
import torch

from diffembed import Embedder
from diffembed.modeling import load_model
from diffembed.modeling.bidirectional import attends_to_future


@pytest.mark.parametrize("family", ["qwen3", "llama", "gemma3"])
def test_later_token_changes_first_state_only_when_bidirectional(tiny_dir, family):
    bidi = load_model(tiny_dir(family))
    causal = load_model(tiny_dir(family), bidirectional=False)
    assert bidi.bidirectional and not causal.bidirectional
    vocab = bidi.model.config.vocab_size
    assert attends_to_future(bidi.model, vocab)
    assert not attends_to_future(causal.model, vocab)


@pytest.mark.parametrize("family", ["qwen3", "llama"])
def test_padding_does_not_leak_into_bidirectional_states(tiny_dir, family):
    emb = Embedder(str(tiny_dir(family)), show_progress=False)
    short = "the cat sat"
    alone = emb.encode([short], normalize=False)
    padded = emb.encode([short, "the dog sat on the mat in the old house by the river"], normalize=False, batch_tokens=10_000)
    assert torch.allclose(torch.from_numpy(alone[0]), torch.from_numpy(padded[0]), atol=1e-5)


def test_llama_saved_with_lm_head_loads_as_base_model(tiny_dir):
    loaded = load_model(tiny_dir("llama"))
    assert type(loaded.model).__name__ == "LlamaModel"
    assert loaded.model.config.is_causal is False
    assert loaded.pooling == "mean"


def test_encoder_cannot_be_made_causal(tiny_dir):
    from diffembed.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="encoder"):
        load_model(tiny_dir("bert"), bidirectional=False)


@pytest.mark.parametrize("family,flag", [("qwen3", True), ("llama", True), ("bert", True)])
def test_info_reports_measured_direction(tiny_dir, family, flag, monkeypatch, capsys):
    import json
    import sys

    from diffembed.cli.app import main

    monkeypatch.setattr(sys, "argv", ["diffembed", "info", str(tiny_dir(family)), "--json"])
    try:
        main()
    except SystemExit as exc:
        assert exc.code in (0, None)
    details = json.loads(capsys.readouterr().out)
    assert details["bidirectional"] is flag
    assert details["attends_to_future"] is flag
