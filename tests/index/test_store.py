import numpy as np
import pytest

from diffembed.errors import IndexStoreError
from diffembed.index.store import IndexStore, NewDocument


def doc(doc_id, n, dim=16, text="t"):
    rng = np.random.default_rng(abs(hash(doc_id)) % 2**32)
    x = rng.standard_normal((n, dim))
    return NewDocument(doc_id=doc_id, content_hash=f"h-{doc_id}-{n}", source=None, n_chars=n * 10,
                       spans=[(10 * i, 10 * i + 10) for i in range(n)], texts=[f"{text}{i}" for i in range(n)],
                       bits=np.packbits(x >= 0, axis=-1), int8=np.round(x * 10).astype(np.int8))


def test_put_replace_remove_and_generation(tmp_path):
    store = IndexStore(tmp_path / "ix", create=True)
    g0 = store.generation
    store.put_documents([doc("a", 3), doc("b", 2)])
    assert store.counts() == (2, 5) and store.generation == g0 + 1
    store.put_documents([doc("a", 1)])  # replacing drops the old chunks
    assert store.counts() == (2, 3)
    ids, codes, gen = store.all_bits(2)
    assert len(ids) == 3 and codes.shape == (3, 2) and gen == store.generation
    store.remove_documents(["b"])
    assert store.counts() == (1, 1)


def test_remove_is_all_or_nothing(tmp_path):
    store = IndexStore(tmp_path / "ix", create=True)
    store.put_documents([doc("a", 2)])
    gen = store.generation
    with pytest.raises(IndexStoreError, match="'nope'.*nothing removed"):
        store.remove_documents(["a", "nope"])
    assert store.counts() == (1, 2) and store.generation == gen


def test_failed_transaction_leaves_previous_state(tmp_path):
    store = IndexStore(tmp_path / "ix", create=True)
    store.put_documents([doc("a", 2)])
    broken = doc("b", 2)
    broken.bits = None  # fails after "c" was inserted, inside the same transaction
    with pytest.raises(TypeError):
        store.put_documents([doc("c", 1), broken])
    assert store.counts() == (1, 2)
    assert store.content_hashes(["a", "b", "c"]) == {"a": "h-a-2"}


def test_not_an_index_and_schema_version(tmp_path):
    with pytest.raises(IndexStoreError, match="not a diffembed index"):
        IndexStore(tmp_path / "none")
    store = IndexStore(tmp_path / "ix", create=True)
    store.db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    store.close()
    with pytest.raises(IndexStoreError, match="schema version 99"):
        IndexStore(tmp_path / "ix")
    (tmp_path / "file").write_text("x")
    with pytest.raises(IndexStoreError, match="not a folder"):
        IndexStore(tmp_path / "file", create=True)
