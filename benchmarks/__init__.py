"""touchfile's benchmarks: touchfile against its Python peers and the kernel floor.

Run ``python -m benchmarks`` (or ``python benchmarks/run.py``); see run.py.
"""

from __future__ import annotations

import os
import sys

# Run from a checkout, the current directory would put the source tree's
# touchfile (which has no compiled core) ahead of the installed one: measure
# the installed package, keeping the checkout importable for `benchmarks`.
_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _root] + [_root]
