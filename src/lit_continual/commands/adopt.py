"""`lit-continual adopt`: turn a Hugging Face Trainer + PEFT daemon's checkpoint into a lit-continual run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DESCRIPTION = """\
Continue the run of a Hugging Face Trainer + PEFT daemon in DIR: its newest
current_model/checkpoint-N/ becomes a lit-continual checkpoint-N (LoRA weights, AdamW moments
and step, global step N); every Trainer checkpoint-*/ is moved, untouched, to
current_model/.adopted/. The learning rate continues on this run's schedule at step N; the
Trainer's RNG state is not loaded; the ledger starts empty. Give the overrides the daemon
will run with (e.g. model=hf model.path=BASE). See docs/adopt.md."""

EPILOG = "exit codes: 0 adopted (or adopted before), 2 nothing to adopt or a mismatch (nothing written), 3 DIR locked"


def add(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("adopt", help="continue a Hugging Face Trainer daemon's run (its checkpoint-N) here",
                            description=DESCRIPTION, epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-dir", required=True, help="the run's directory (holding current_model/)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for `daemon` (e.g. model=hf model.path=BASE)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Check the config, take the base dir's lock, adopt, print what carried over."""
    from lit_continual.config import compose, prepare
    from lit_continual.lock import EXIT_LOCKED, BaseDirLocked, RunLock

    base_dir = Path(args.base_dir).expanduser().resolve()
    cfg = prepare(compose([f"base_dir={base_dir}", *args.overrides]))  # ConfigError: exit 2, nothing written
    lock = RunLock(base_dir, role="lit-continual adopt")
    try:
        lock.acquire()
    except BaseDirLocked as err:
        print(f"lit-continual: {err}", file=sys.stderr)
        return EXIT_LOCKED
    try:
        from lit_continual import logs
        from lit_continual.adopt import adopt

        logs.setup(base_dir)
        adoption = adopt(cfg, base_dir)
    finally:
        lock.release()
    print(_report(adoption, base_dir, args.overrides))
    return 0


def _report(adoption, base_dir: Path, overrides: list[str]) -> str:
    if adoption.already:
        return (f"Nothing to adopt: {base_dir / 'current_model'} already holds lit-continual checkpoints (newest: "
                f"checkpoint-{adoption.step}); the Hugging Face Trainer's are in current_model/.adopted/")
    hf_lr = "unknown" if adoption.hf_lr is None else f"{adoption.hf_lr:.3e}"
    lines = [
        f"Adopted the Hugging Face Trainer's {adoption.source} as current_model/checkpoint-{adoption.step}:",
        f"  LoRA weights: {adoption.tensors} tensors, {adoption.parameters} parameters",
        f"  AdamW moments and step of every LoRA parameter, matched by name; global step {adoption.step}",
        f"  next step {adoption.step + 1} at learning rate {adoption.lr:.3e} (this run's schedule at step "
        f"{adoption.step}; the Trainer's own schedule was at {hf_lr})",
        "  not carried over: the Trainer's RNG state (rng_state.pth holds numpy pickles that weights_only "
        "loading refuses) and its data position (the ledger starts empty)",
        f"  moved, untouched: {', '.join(adoption.moved) or 'nothing (moved before)'} -> current_model/.adopted/",
        *(f"  note: {note}" for note in adoption.notes),
        f"Start the daemon with the same overrides: lit-continual daemon --base-dir {base_dir}"
        + "".join(f" {o}" for o in overrides),
    ]
    return "\n".join(lines)
