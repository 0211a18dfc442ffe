"""Evaluation: datasets on disk, IR metrics, naive vs late-chunked retrieval, reports."""
