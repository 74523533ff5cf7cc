"""The checks of `lit-continual verify` (the seed's verification guide as code), one module per
subject: checkpoints (complete, steps, retention), counters (optimizer and scheduler against
the global step), the daily log, the inbox, the adapter's stock PEFT load, and what needs an
operator. report.py runs them in order and renders the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Check:
    """One check's outcome: `PASS <name>: <detail>` or `FAIL <name>: <detail>`, then its notes
    (items listed under it that do not fail it: documented rejections, warnings)."""

    name: str
    ok: bool
    detail: str
    notes: list[str] = field(default_factory=list)

    @property
    def line(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'} {self.name}: {self.detail}"

    def to_dict(self) -> dict:
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "notes": self.notes}


def verdict(name: str, problems: list[str], passed: str, notes: list[str] | None = None) -> Check:
    """PASS with `passed`, or FAIL listing the problems (the first three in the line, all in notes)."""
    if not problems:
        return Check(name, True, passed, notes or [])
    shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
    return Check(name, False, shown, (problems if len(problems) > 3 else []) + (notes or []))


def size_text(size: int) -> str:
    """Bytes as a report shows them: KiB below a MiB, MiB above."""
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 2**10:.1f} KiB"
