"""The packaged all-MiniLM-L6-v2 gives the same embeddings as sentence-transformers."""

import json
from importlib import resources

import numpy as np
import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def real_texts():
    lines = resources.files("diffembed.data").joinpath("squad_sample.jsonl").read_text(encoding="utf-8").splitlines()
    articles = [json.loads(line) for line in lines]
    paragraphs = [p for a in articles for p in a["text"].split("\n\n")][:60]
    questions = [q["question"] for a in articles for q in a["questions"][:5]]
    return paragraphs + questions + ["x", "Ünïcödé façade — naïve café", "한국어 문장입니다."]


def test_minilm_matches_sentence_transformers(minilm, real_texts):
    from sentence_transformers import SentenceTransformer

    from diffembed.modeling.loader import default_model_path

    st = SentenceTransformer(str(default_model_path()), device="cpu")
    ours = minilm.encode(real_texts)
    theirs = st.encode(real_texts, normalize_embeddings=True, convert_to_numpy=True)
    cos = (ours * theirs).sum(axis=1)
    assert cos.min() >= 0.9999, f"lowest cosine {cos.min():.6f} at {real_texts[int(cos.argmin())]!r}"


def test_minilm_late_chunking_one_chunk_equals_encode(minilm, real_texts):
    text = real_texts[0]
    np.testing.assert_allclose(minilm.encode_contextual([[text]])[0][0], minilm.encode(text), atol=1e-5)


def test_minilm_retrieves_the_right_paragraph(minilm):
    docs = ["The Eiffel Tower is a wrought-iron lattice tower in Paris, France.",
            "Photosynthesis converts light energy into chemical energy in plants.",
            "The Python programming language emphasises code readability."]
    q = minilm.encode_query(["Which tower is in Paris?", "How do plants make energy from light?"])
    best = (q @ minilm.encode(docs).T).argmax(axis=1)
    assert best.tolist() == [0, 1]
