"""Korean end to end with multilingual-e5-small by name: `data build --model` chunks by its tokenizer,
and `index add` + `search` find the right page (the README's "Multilingual and Korean" flow).

Uses the session's converted model through ``DIFFEMBED_CACHE`` (``e5_converted`` in conftest.py).
"""

from __future__ import annotations

import json

import pytest
from cli_helpers import run_cli

pytestmark = pytest.mark.integration
E5 = "multilingual-e5-small"

PARAGRAPHS = [
    "서울특별시는 대한민국의 수도이자 최대 도시이다. 한강이 도시의 가운데를 가로질러 흐른다. "
    "조선 시대에는 한양이라고 불렸으며, 1394년 태조가 도읍으로 정하였다.",
    "부산광역시는 대한민국 제2의 도시이자 최대의 항구 도시이다. 해운대 해수욕장과 자갈치 시장으로 유명하다. "
    "매년 가을 부산국제영화제가 열린다.",
    "제주도는 대한민국에서 가장 큰 섬이다. 한라산은 높이 1,947미터로 남한에서 가장 높은 산이다. "
    "감귤과 돌하르방이 제주도의 상징으로 알려져 있다.",
]
QUESTIONS = [("q-seoul", "조선 시대에 서울은 무엇이라고 불렸는가?", 0, "한양"),
             ("q-busan", "부산국제영화제는 언제 열리나?", 1, "매년 가을"),
             ("q-jeju", "남한에서 가장 높은 산은?", 2, "한라산")]


@pytest.fixture
def e5_cache(e5_converted, monkeypatch):
    monkeypatch.setenv("DIFFEMBED_CACHE", str(e5_converted[0]))
    return e5_converted[0]


def _korquad_like(path):
    paragraphs = [{"context": text, "qas": [{"id": qid, "question": q,
                                              "answers": [{"text": a, "answer_start": text.index(a)}]}
                                             for qid, q, p, a in QUESTIONS if p == i]}
                  for i, text in enumerate(PARAGRAPHS)]
    path.write_text(json.dumps({"version": "KorQuAD_v1.0_dev", "data": [{"title": "도시", "paragraphs": paragraphs}]},
                               ensure_ascii=False), encoding="utf-8")
    return path


def test_data_build_chunks_by_the_chosen_models_tokenizer(e5_cache, tmp_path, monkeypatch, capsys):
    source = _korquad_like(tmp_path / "korquad.json")
    stats = {}
    for name, extra in (("e5", ["--model", E5]), ("minilm", [])):
        out = tmp_path / name
        code, _, err = run_cli(["data", "build", source, "--kind", "contextual", "--chunk-tokens", "16",
                                "--out", out, *extra], monkeypatch, capsys)
        assert code == 0, err
        stats[name] = json.loads((out / "build.json").read_text(encoding="utf-8"))
    assert stats["e5"]["settings"]["tokenizer"] == E5
    # MiniLM splits each Hangul syllable into 2-3 jamo tokens: the same budget holds far fewer characters
    assert stats["e5"]["stats"]["chunk_chars_median"] >= 2 * stats["minilm"]["stats"]["chunk_chars_median"]
    docs = [json.loads(line) for line in (tmp_path / "e5" / "documents.jsonl").read_text(encoding="utf-8").splitlines()]
    chunks = docs[0]["chunks"]
    assert chunks[:2] == ["서울특별시는 대한민국의 수도이자 최대 도시이다.", "한강이 도시의 가운데를 가로질러 흐른다."]


def test_korean_index_search_finds_the_right_page(e5_cache, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "pages"
    folder.mkdir()
    for name, text in zip(("seoul.txt", "busan.txt", "jeju.txt"), PARAGRAPHS):
        (folder / name).write_text(text, encoding="utf-8")
    index = tmp_path / "ko.idx"
    code, out, err = run_cli(["index", "add", folder, "--index", index, "--model", E5, "--json"], monkeypatch, capsys)
    assert code == 0, err
    for _, question, page, answer in QUESTIONS:
        code, out, err = run_cli(["search", question, "--index", index, "-k", "3", "--json"], monkeypatch, capsys)
        assert code == 0, err
        top = json.loads(out)["hits"][0]
        assert top["doc_id"] == f"pages/{('seoul', 'busan', 'jeju')[page]}.txt", (question, top)
        assert answer in top["text"], (question, top["text"])
