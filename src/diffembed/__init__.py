"""diffembed: diffusion-pretrained dense and contextual text embeddings."""

from diffembed.errors import DiffembedError, InputError, ModelLoadError
from diffembed.inference import PRECISIONS, DocumentEmbedding, Embedder

__version__ = "0.1.0"
__all__ = ["DiffembedError", "DocumentEmbedding", "Embedder", "InputError", "ModelLoadError", "PRECISIONS", "__version__"]
