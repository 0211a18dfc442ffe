"""Property-based fuzzing of the OpenAPI schema (schemathesis): whatever a client sends, valid or
not, the server must never answer 5xx. In-process (ASGI) with a tiny random model to stay fast.

Hypothesis drives each operation's strategy directly: schemathesis' lazy pytest integration
(``from_fixture``) relies on a pytest internal that pytest 9 removed.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from diffembed import Embedder
from diffembed.serve.app import create_app
from diffembed.serve.settings import ServeSettings

OPERATIONS = [
    ("POST", "/v1/embeddings"),
    ("POST", "/v1/contextualizedembeddings"),
    ("POST", "/embed"),
    ("POST", "/search"),
    ("GET", "/health"),
    ("GET", "/metrics"),
]


class FakeSearcher:
    def search(self, query, k, mode, *, vector=None):
        return []


@pytest.fixture(scope="module")
def api_schema(tiny_dir):
    embedder = Embedder(str(tiny_dir("bert")), show_progress=False)
    # Small limits so generated bodies reach the 413 paths too.
    app = create_app(embedder, ServeSettings(max_inputs_per_request=8, max_documents=4, max_chunks=12,
                                             max_tokens_per_document=200, max_body_bytes=64 * 1024),
                     searcher=FakeSearcher())
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_every_operation_is_fuzzed(api_schema):
    found = {(r.ok().method.upper(), r.ok().path) for r in api_schema.get_all_operations()}
    assert found == set(OPERATIONS)


# GET routes take no input, so there is nothing negative to generate for them.
CASES = [(m, p, mode) for m, p in OPERATIONS for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
         if m == "POST" or mode == GenerationMode.POSITIVE]


@pytest.mark.parametrize("method,path,mode", CASES, ids=[f"{m} {p} {mode.value}" for m, p, mode in CASES])
def test_no_server_errors(api_schema, method, path, mode):
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=30, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case):
        case.call_and_validate(checks=[not_a_server_error])

    run()
