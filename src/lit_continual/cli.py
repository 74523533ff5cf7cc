"""The `lit-continual` command: daemon, sample-data, and the operator commands of
lit_continual/commands/ (status, verify/report, history, stop/pause/resume/skip, snapshot,
consolidate, adopt)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from lit_continual import __version__
from lit_continual.config import EXIT_CONFIG_ERROR, ConfigError, compose, prepare
from lit_continual.config.compose import defaults, groups


def _daemon(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from lit_continual.run import train

    cfg = compose([f"base_dir={Path(args.base_dir).resolve()}", *args.overrides])
    if args.cfg:  # like Hydra's --cfg job: the resolved, checked config; nothing runs
        print(OmegaConf.to_yaml(prepare(cfg, check_paths=False), resolve=True), end="")
        return 0
    return train(cfg)


def _groups_help() -> str:
    lines = ["config groups, * = default (choose with GROUP=OPTION, e.g. logger=csv; several: "
             "logger=[tensorboard,csv]):"]
    chosen = defaults()
    for group, options in groups().items():
        shown = [f"{o}*" if o == chosen.get(group) else o for o in options]
        lines.append(f"  {group + ':':<12} {', '.join(shown)}")
    lines.append("any key: GROUP.KEY=VALUE (e.g. optim.lr=1e-3, trainer.deterministic=true); "
                 "print the result: daemon --base-dir DIR --cfg [overrides]")
    return "\n".join(lines)


def _sample_data(args: argparse.Namespace) -> int:
    from lit_continual.sample_data import held_out, sentences, write_texts

    files = [sentences(args.lines, args.seed + i) for i in range(args.files)]
    try:  # before anything is written: a refused --eval leaves no files behind
        evaluated = held_out(args.eval, args.seed, {text for texts in files for text in texts}) if args.eval else []
    except ValueError as err:
        print(f"lit-continual sample-data: --eval {args.eval}: {err}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    for i, texts in enumerate(files):
        print(write_texts(Path(args.inbox) / f"{args.prefix}_{i + 1}.jsonl", texts))
    if evaluated:
        print(write_texts(Path(args.inbox).parent / "eval" / "fixed.jsonl", evaluated))
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="lit-continual", description=__doc__)
    root.add_argument("--version", action="version", version=f"lit-continual {__version__}")
    sub = root.add_subparsers(dest="command", required=True)
    daemon = sub.add_parser("daemon", help="watch DIR/inbox and train on every file that lands",
                            epilog=_groups_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    daemon.add_argument("--base-dir", required=True, help="the run's directory")
    daemon.add_argument("--cfg", action="store_true", help="print the resolved config and exit")
    daemon.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. optim.lr=1e-3")
    daemon.set_defaults(func=_daemon)
    sample = sub.add_parser("sample-data", help="write generated English-like JSONL files")
    sample.add_argument("inbox", help="directory to write into (e.g. DIR/inbox); created if missing")
    sample.add_argument("--files", type=int, default=3, help="how many files to write (default: 3)")
    sample.add_argument("--lines", type=int, default=1000, help="JSON lines ({\"text\": ...}) per file (default: 1000)")
    sample.add_argument("--seed", type=int, default=0, help="seed of the first file; file i uses seed + i (default: 0)")
    sample.add_argument("--prefix", default="batch", help="file names are PREFIX_1.jsonl, PREFIX_2.jsonl, ... "
                        "(default: batch)")
    sample.add_argument("--eval", type=int, default=0, metavar="N",
                        help="also write N held-out lines (none of them in the files written) to "
                             "INBOX/../eval/fixed.jsonl, the run's fixed eval set, scored at each file's end "
                             "(default: 0, no eval file)")
    sample.set_defaults(func=_sample_data)
    from lit_continual.commands import COMMANDS

    for name in COMMANDS:
        module = importlib.import_module(f"lit_continual.commands.{name}")
        module.add(sub)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"lit-continual: configuration error: {err}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except BrokenPipeError:  # `lit-continual history ... | head`: the reader went away, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        return 0
