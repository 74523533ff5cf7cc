"""lit-continual: one LoRA adapter that keeps learning from a stream of JSONL files."""

__version__ = "0.2.0"
