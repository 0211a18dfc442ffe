"""Bulk embedding past one machine. Ray is an optional extra (``pip install 'diffembed[ray]'``),
imported only when a function here runs, so this package imports without it."""

from diffembed.bulk.ray_data import EmbedActor, embed_dataset, embed_to_parquet, user_errors

__all__ = ["EmbedActor", "embed_dataset", "embed_to_parquet", "user_errors"]
