"""Data path: JSONL lines -> validated examples -> token batches that never span two files."""
