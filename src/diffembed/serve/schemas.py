"""Request and response bodies. They also drive the OpenAPI document, so constraints live here.

Types are strict (no "1" -> 1 or true -> 1 coercion) because a client that sends the wrong type has
a bug we should report, not guess around. Limits that depend on the model or the server settings
(dimensions <= dim, number of inputs) are checked in the routes, since the schema is static.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictStr, model_validator
from pydantic_core import PydanticCustomError



def _integral(value: Any) -> Any:
    """JSON Schema's ``integer`` includes 128.0; strings and booleans stay refused."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# Constraints before the validator, or pydantic cannot express them in the JSON schema.
Text = Annotated[StrictStr, Field(min_length=1)]
Texts = Annotated[list[Text], Field(min_length=1)]
Dimensions = Annotated[int, Field(strict=True, ge=1, description="Matryoshka truncation, then re-normalisation."),
                       BeforeValidator(_integral)]
TopK = Annotated[int, Field(strict=True, ge=1, le=1000), BeforeValidator(_integral)]

# Clients of other servers send fields we do not know (OpenAI's `user`, TEI's `truncation_direction`):
# ignoring them keeps those clients working.
_LENIENT = ConfigDict(extra="ignore")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _blank(x: Any) -> bool:
    return isinstance(x, str) and not x.strip()


def _refuse_blank(value: Any, what: str) -> None:
    """Name the empty item, as the pplx API does; the union's own errors would not say which.

    The server's only blank check: nothing after the schemas looks for blank strings again."""
    if _blank(value):
        raise PydanticCustomError("empty_input", f"{what} is an empty string; empty inputs are not allowed")
    if isinstance(value, list):
        for i, x in enumerate(value):
            if _blank(x):
                raise PydanticCustomError("empty_input",
                                          f"{what}[{i}] is an empty string; empty inputs are not allowed")


PPLX_MODEL_PREFIX = "pplx-"


class EmbeddingsRequest(BaseModel):
    """OpenAI and pplx ``POST /v1/embeddings``. Token-id arrays are refused: they are OpenAI
    tokenizer ids. Both APIs share the path but not the formats, and their default formats differ
    (OpenAI: float, pplx: int8); ``output_format`` resolves the default from the model name."""

    model_config = _LENIENT
    input: Text | Texts
    model: StrictStr | None = None
    encoding_format: Literal["float", "base64", "base64_int8", "base64_binary"] | None = Field(
        None, description="float or base64 (little-endian float32), as OpenAI; base64_int8 or base64_binary "
        "(sign bits packed LSB-first), as pplx. Default: base64_int8 when `model` starts with 'pplx-' "
        "(what the pplx API and its SDK expect), else float.")
    dimensions: Dimensions | None = None
    user: StrictStr | None = None
    prompt_name: StrictStr | None = Field(None, description="One of the model's prompts (extension).")

    @model_validator(mode="before")
    @classmethod
    def _no_token_arrays(cls, data: Any) -> Any:
        value = data.get("input") if isinstance(data, dict) else None
        if isinstance(value, list) and value and (all(_is_int(x) for x in value) or
                                                  any(isinstance(x, list) for x in value)):
            raise PydanticCustomError(
                "token_arrays", "input: token arrays are not supported; send text strings instead")
        _refuse_blank(value, "input")
        return data

    def output_format(self) -> str:
        if self.encoding_format is not None:
            return self.encoding_format
        return "base64_int8" if (self.model or "").startswith(PPLX_MODEL_PREFIX) else "float"


class EmbeddingItem(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(
        description="Floats, or base64 of little-endian float32, signed int8 or LSB-first packed sign bits.")


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: Usage


class ContextualRequest(BaseModel):
    """pplx ``POST /v1/contextualizedembeddings``: documents as ordered chunks, late-chunked."""

    model_config = _LENIENT
    input: Annotated[list[Texts], Field(min_length=1, description="Documents, each a list of chunks.")]
    model: StrictStr | None = None
    dimensions: Dimensions | None = None
    encoding_format: Literal["base64_int8", "base64_binary"] = Field(
        "base64_int8", description="Signed int8 bytes, or sign bits packed LSB-first.")

    @model_validator(mode="before")
    @classmethod
    def _named_blanks(cls, data: Any) -> Any:
        docs = data.get("input") if isinstance(data, dict) else None
        if isinstance(docs, list):
            for d, doc in enumerate(docs):
                _refuse_blank(doc, f"input[{d}]")
        return data


class ChunkEmbedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: str


class DocumentEmbeddings(BaseModel):
    object: Literal["list"] = "list"
    index: int
    data: list[ChunkEmbedding]


class ContextualResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[DocumentEmbeddings]
    model: str
    usage: Usage


class EmbedRequest(BaseModel):
    """TEI ``POST /embed``. The only route that may cut long inputs, and only when asked."""

    model_config = _LENIENT
    inputs: Text | Texts
    normalize: StrictBool = True
    truncate: StrictBool = False
    dimensions: Dimensions | None = None
    prompt_name: StrictStr | None = None

    @model_validator(mode="before")
    @classmethod
    def _named_blanks(cls, data: Any) -> Any:
        _refuse_blank(data.get("inputs") if isinstance(data, dict) else None, "inputs")
        return data


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: Text
    k: TopK = 10
    mode: Literal["dense", "hybrid", "bm25"] = "dense"

    @model_validator(mode="before")
    @classmethod
    def _named_blank(cls, data: Any) -> Any:
        _refuse_blank(data.get("query") if isinstance(data, dict) else None, "query")
        return data


class SearchHit(BaseModel):
    doc_id: str
    chunk_index: int
    start: int | None = None
    end: int | None = None
    score: float
    text: str
    source: str | None = None


class SearchResponse(BaseModel):
    data: list[SearchHit]
    query: str
    mode: str
    model: str


class Health(BaseModel):
    status: Literal["ok"]
    model: str
    dim: int


class ErrorBody(BaseModel):
    message: str
    type: str
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
