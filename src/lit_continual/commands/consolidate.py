"""`lit-continual consolidate`: merge the newest checkpoint into its base now, by the daemon if
one runs (see commands/snapshot.py `carry_out` for the protocol and exit codes)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lit_continual import controls
from lit_continual.commands.snapshot import carry_out, common_arguments, run_setting


def add(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("consolidate", help="merge the newest checkpoint into a standalone model now",
                            description="Merge the newest checkpoint's adapter into the base weights (fp32, then "
                            "the base's dtype) as a standalone Hugging Face model in DIR/consolidated/step-<N>/, "
                            "keeping the newest consolidate.keep. A running daemon does it at its next step "
                            "boundary; with none, this command does it.")
    common_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lit_continual import consolidation

    def work(base_dir: Path) -> dict:
        return consolidation.consolidate_and_prune(base_dir, int(run_setting(base_dir, "consolidate", "keep")))

    return carry_out(args, controls.CONSOLIDATE, work,
                     lambda r: f"consolidated {r['path']} (step {r['step']}, {r['seconds']:.1f} s)")
