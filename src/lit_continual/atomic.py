"""Atomic writes: temp file or directory, fsync, rename. A reader never sees a half-written file."""

from __future__ import annotations

import json
import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename or create inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: Path, data: bytes, durable: bool = True) -> None:
    """Replace `path` with `data` atomically (hidden temp file in the same directory)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)


def write_json(path: Path, obj: object, durable: bool = True) -> None:
    """Replace `path` with `obj` as indented JSON, atomically."""
    write_bytes(path, (json.dumps(obj, indent=2, default=str) + "\n").encode(), durable)


def fsync_tree(path: Path) -> None:
    """fsync every file in directory `path`, then the directory itself."""
    for child in path.iterdir():
        if child.is_file():
            fd = os.open(child, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fsync_dir(path)
