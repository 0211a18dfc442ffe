"""Model loading: folders and hub ids to a bidirectional backbone, a tokenizer and a pooling spec."""

from diffembed.modeling.layout import ModelSpec, read_model_spec
from diffembed.modeling.loader import LoadedModel, load_model, resolve_model_path

__all__ = ["LoadedModel", "ModelSpec", "load_model", "read_model_spec", "resolve_model_path"]
