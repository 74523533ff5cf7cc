"""`logs/daemon_YYYYMMDD.log` (local date, a new file after midnight) plus stderr."""

from __future__ import annotations

import logging
import re
import sys
from datetime import datetime
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(message)s"

# What could split, hide or drop a log line: C0/C1 controls, the two Unicode line separators,
# surrogates (bytes that were not UTF-8, from os.fsdecode), and the escape character itself.
_UNSAFE = re.compile(r"[\\\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_NAMED = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if char in _NAMED:
        return _NAMED[char]
    if code < 0x80:
        return f"\\x{code:02x}"
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: the undecodable byte itself
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}"


def escape(text: str) -> str:
    r"""`text` as one printable line that any UTF-8 writer accepts, and that can be read back.

    A file name is user data: its raw bytes that are not UTF-8 would make the UTF-8 log file
    raise (the line is lost), and a newline in it would forge a second log line. So:
    undecodable bytes (surrogateescape's U+DC80..U+DCFF) become `\xNN`, the byte they were;
    newline, CR and tab become `\n` `\r` `\t`; other C0 controls and DEL become `\xNN` (the
    same byte: ASCII encodes as itself); C1 controls, U+2028/U+2029 and other lone surrogates
    become `\uXXXX` (never `\xNN`, which always means a byte of the name). A backslash is
    doubled, so every backslash in a log line starts an escape and a name `a\x41` cannot pass
    for `aA`: grep for a name `a\b` as `a\\b`. All other text, non-ASCII included, is kept.
    """
    return _UNSAFE.sub(_escape_char, text)


def _escape_lines(text: str) -> str:
    """Escape each line of a traceback but keep its newlines: it is meant to span lines.

    A newline inside an exception's own text still starts a line here; what this buys is that
    an undecodable name in that text no longer makes the handler drop the whole record.
    """
    return "\n".join(escape(line) for line in text.split("\n"))


class EscapingFormatter(logging.Formatter):
    """Escapes the message and any traceback of every record (see `escape`) at one place.

    The record itself is left alone: other handlers (pytest's, a user's) format it their way.
    """

    def format(self, record: logging.LogRecord) -> str:
        return super().format(self._escaped(record))

    def _escaped(self, record: logging.LogRecord) -> logging.LogRecord:
        safe = logging.makeLogRecord(record.__dict__)
        safe.msg, safe.args = escape(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            safe.exc_text = self.formatException(record.exc_info)
        if safe.exc_text:
            safe.exc_text = _escape_lines(safe.exc_text)
        return safe

    def formatStack(self, stack_info: str) -> str:
        return _escape_lines(super().formatStack(stack_info))


class DailyFileHandler(logging.FileHandler):
    """Appends to logs/daemon_<local date>.log, switching files when the date changes."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.day = self._today()
        super().__init__(self._path(self.day), encoding="utf-8")

    @staticmethod
    def _today() -> str:
        return datetime.now().strftime("%Y%m%d")

    def _path(self, day: str) -> Path:
        return self.directory / f"daemon_{day}.log"

    def emit(self, record: logging.LogRecord) -> None:
        day = self._today()
        if day != self.day:
            self.acquire()
            try:
                self.close()
                self.day, self.baseFilename = day, str(self._path(day))
            finally:
                self.release()
        super().emit(record)


class StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is now, so the progress bar can route lines above itself."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup(base_dir: Path) -> logging.Logger:
    """Route the `lit_continual` logger and Python warnings to the daily file and stderr."""
    logger = logging.getLogger("lit_continual")
    logger.setLevel(logging.INFO)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    formatter = EscapingFormatter(FORMAT)
    for handler in (DailyFileHandler(base_dir / "logs"), StderrHandler()):
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    logger.propagate = False
    logging.captureWarnings(True)
    warnings_logger = logging.getLogger("py.warnings")
    warnings_logger.handlers = logger.handlers[:1]
    quiet_libraries()
    return logger


def quiet_libraries() -> None:
    """Lightning's banners and tips ("GPU available", "💡 Tip: ...") are INFO lines of its
    rank_zero loggers, printed once by Lightning and again by Hydra's root handler: keep only
    its warnings and errors. Our own log says what the run does."""
    # The rank_zero loggers themselves: importing lightning.pytorch sets its package logger to
    # INFO again, but never these.
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
