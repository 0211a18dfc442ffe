"""An embedded, crash-safe index of late-chunked document chunks: SQLite + a faiss binary first pass."""

from diffembed.index.ingest import AddReport, add_documents, add_paths, open_for_adding
from diffembed.index.search import Hit, Searcher, open_searcher
from diffembed.index.store import IndexStore

__all__ = ["AddReport", "Hit", "IndexStore", "Searcher", "add_documents", "add_paths", "open_for_adding", "open_searcher"]
