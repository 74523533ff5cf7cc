"""`logs/daemon_YYYYMMDD.log` (local date, a new file after midnight) plus stderr."""

from __future__ import annotations

import logging
import sys
from datetime import datetime
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(message)s"


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
    formatter = logging.Formatter(FORMAT)
    for handler in (DailyFileHandler(base_dir / "logs"), StderrHandler()):
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    logger.propagate = False
    logging.captureWarnings(True)
    warnings_logger = logging.getLogger("py.warnings")
    warnings_logger.handlers = logger.handlers[:1]
    return logger
