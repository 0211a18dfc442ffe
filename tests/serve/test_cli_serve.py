"""`diffembed serve` wiring, in-process: the key file, start-up checks, and what reaches uvicorn.

uvicorn.run is replaced by a recorder, so these tests check the command line without binding a port
(the real process is exercised by test_server_http.py and test_auth.py).
"""

from __future__ import annotations

import pytest
from cli_helpers import run_cli as run_cli_split

import diffembed
import diffembed.index.search as search_module
from diffembed import Embedder
from diffembed.cli.serve import read_api_key
from diffembed.errors import InputError
from diffembed.serve.protocol import JsonErrorH11Protocol


def run_cli(args, monkeypatch, capsys) -> tuple[int, str]:
    code, out, err = run_cli_split(args, monkeypatch, capsys)
    return code, out + err


@pytest.fixture()
def uvicorn_calls(monkeypatch):
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    return calls


@pytest.fixture()
def tiny_embedder(monkeypatch, tiny_dir):
    """`serve` loads its model through diffembed.Embedder: point it at the tiny model."""
    folder = str(tiny_dir("bert"))
    monkeypatch.setattr(diffembed, "Embedder", lambda model=None, **kw: Embedder(folder, **kw))


def test_read_api_key(tmp_path):
    f = tmp_path / "key"
    f.write_text("\n  abc123 \t\n")
    assert read_api_key(f) == "abc123"
    f.write_text("  \n")
    with pytest.raises(InputError, match="is empty"):
        read_api_key(f)
    f.write_text("two words")
    with pytest.raises(InputError, match="whitespace"):
        read_api_key(f)
    with pytest.raises(InputError, match="does not exist"):
        read_api_key(tmp_path / "missing")


@pytest.mark.parametrize("args,needle", [
    (["--api-key-file", "{tmp}/missing"], "does not exist"),
    (["--api-key-file", "{tmp}/empty"], "is empty"),
    (["--index", "{tmp}/no-index"], "is not a folder"),
    (["--log-level", "loud"], "unknown --log-level"),
    (["--keep-alive-timeout", "0"], "--keep-alive-timeout must be above 0"),
    (["--body-timeout", "-1"], "--body-timeout must be above 0"),
])
def test_start_up_mistakes_fail_before_loading_a_model(monkeypatch, capsys, tmp_path, uvicorn_calls, args, needle):
    (tmp_path / "empty").write_text("\n")
    monkeypatch.setattr(diffembed, "Embedder", lambda *a, **k: pytest.fail("a model was loaded"))
    code, out = run_cli(["serve", *[a.format(tmp=tmp_path) for a in args]], monkeypatch, capsys)
    assert code == 2
    assert "error:" in out and needle in out
    assert uvicorn_calls == []


def test_limits_above_the_model_window_are_refused(monkeypatch, capsys, tiny_embedder, uvicorn_calls):
    code, out = run_cli(["serve", "--max-tokens-per-input", "100000"], monkeypatch, capsys)
    assert code == 2 and "exceeds the model window" in out
    assert uvicorn_calls == []


def test_flags_reach_the_app_and_uvicorn(monkeypatch, capsys, tmp_path, tiny_embedder, uvicorn_calls):
    key = tmp_path / "key"
    key.write_text("sekrit\n")
    code, out = run_cli(["serve", "--host", "0.0.0.0", "--port", "9123", "--api-key-file", key, "--max-inputs", "7",
                         "--batch-wait-ms", "3", "--served-model-name", "my-model", "--log-level", "warning",
                         "--keep-alive-timeout", "2.5", "--body-timeout", "9"],
                        monkeypatch, capsys)
    assert code == 0, out
    assert "http://0.0.0.0:9123" in out and "auth on" in out  # the start-up line
    (app, kwargs), = uvicorn_calls
    assert kwargs == {"host": "0.0.0.0", "port": 9123, "workers": 1, "log_level": "warning",
                      "http": JsonErrorH11Protocol, "timeout_keep_alive": 2.5}
    s = app.state.settings
    assert (s.api_key, s.max_inputs_per_request, s.batch_wait_ms, s.model_name) == ("sekrit", 7, 3.0, "my-model")
    assert (s.keep_alive_timeout_s, s.body_timeout_s) == (2.5, 9.0)
    assert s.max_tokens_per_input == 126  # the tiny model's window: 128 positions minus [CLS] and [SEP]


def test_index_is_opened_with_the_served_model(monkeypatch, capsys, tmp_path, tiny_embedder, uvicorn_calls):
    opened = []

    class Closing:
        def __init__(self, embedder):
            self.embedder = embedder

        def search(self, query, k, mode, *, vector=None):
            return []

        def close(self):
            opened.append("closed")

    def fake_open(folder, embedder=None, **kwargs):
        assert embedder is None  # the searcher loads the model: the index is read once
        opened.append((folder, kwargs))
        return Closing(diffembed.Embedder(kwargs["model"], device=kwargs["device"], dtype=kwargs["dtype"]))

    monkeypatch.setattr(search_module, "open_searcher", fake_open)
    (tmp_path / "idx").mkdir()
    code, out = run_cli(["serve", "--index", tmp_path / "idx", "--model", "given"], monkeypatch, capsys)
    assert code == 0, out
    assert opened == [(tmp_path / "idx", {"model": "given", "device": None, "dtype": None}), "closed"]
    (app, _), = uvicorn_calls
    assert app.state.settings.max_tokens_per_input == 126  # the searcher's (tiny) model is the one served
    assert f"index {tmp_path / 'idx'}" in out


def test_index_model_is_served_when_no_model_is_given(monkeypatch, capsys, tmp_path, tiny_dir, uvicorn_calls):
    """Without --model, `serve --index` loads the model the index was built with (and the index opens)."""
    from diffembed.index import IndexStore, add_paths, open_for_adding

    folder = str(tiny_dir("bert"))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("the king and the queen .")
    store, settings, emb = open_for_adding(tmp_path / "idx", model=folder, chunk_tokens=8)
    add_paths(store, settings, emb, [tmp_path / "docs"], show_progress=False)
    store.close()
    loaded, opens = [], []
    monkeypatch.setattr(diffembed, "Embedder", lambda model=None, **kw: loaded.append(model) or Embedder(model, **kw))
    real_init = IndexStore.__init__
    monkeypatch.setattr(IndexStore, "__init__", lambda self, *a, **k: opens.append(a) or real_init(self, *a, **k))
    code, out = run_cli(["serve", "--index", tmp_path / "idx"], monkeypatch, capsys)
    assert code == 0, out
    assert loaded == [str(tiny_dir("bert").resolve())]
    assert len(opens) == 1  # the index is opened once, for its model and its searches
    code, out = run_cli(["serve", "--index", tmp_path / "docs"], monkeypatch, capsys)
    assert code == 2 and "not a diffembed index" in out
