"""Makes a TouchFile() (tests/test_security.py::test_temporary_file_through_a_planted_tmpdir)."""

from __future__ import annotations

import touchfile

touchfile.TouchFile()
