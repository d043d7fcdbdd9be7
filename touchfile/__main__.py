"""``python -m touchfile``: the touchfile command."""

from ._cli import main

raise SystemExit(main())
