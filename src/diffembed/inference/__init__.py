"""Embedding runtime: tokenization, batching, pooling, late chunking and output precisions."""

from diffembed.inference.embedder import DocumentEmbedding, Embedder
from diffembed.inference.quantize import PRECISIONS

__all__ = ["DocumentEmbedding", "Embedder", "PRECISIONS"]
