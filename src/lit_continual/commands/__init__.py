"""One module per `lit-continual` command that reads or steers a base dir.

Each module has `add(subparsers)`, which registers its parser(s) and sets `func`; importing one
must stay cheap (no torch at import time: `lit-continual status` answers in well under a second).
"""

COMMANDS = ("status", "verify", "history", "controls", "snapshot", "consolidate", "adopt")
