"""`python -m lit_continual ...` is the `lit-continual` command."""

from lit_continual.cli import main

raise SystemExit(main())
