#!/usr/bin/env bash
# Run util-linux's own flock(1) tests (tests/ts/flock/{flock,close,range-lock,
# unlock}: 19 cases) against the installed touchfile command.
#
#   tests/util_linux_flock.sh /path/to/util-linux
#
# The util-linux source tree must be built far enough for the tests' helpers:
#   ./autogen.sh && ./configure && make lslocks test_strerror
# (the range-lock case needs that lslocks: util-linux 2.38's cannot name the
# holder of an open file description lock). touchfile runs under the name
# flock (a link in a temporary directory), so that its messages begin with
# "flock:" as the expected output does. Prints one line per case, and exits
# non-zero if any failed; the diffs are under the tree's tests/diff/flock/.
set -euo pipefail

tree=${1:?usage: $0 UTIL_LINUX_SOURCE_TREE}
tree=$(cd "$tree" && pwd)
touchfile=$(command -v touchfile) || { echo "touchfile is not installed (pip install .)" >&2; exit 2; }
for helper in lslocks test_strerror; do
	[ -x "$tree/$helper" ] || { echo "$tree/$helper is missing: make lslocks test_strerror" >&2; exit 2; }
done

bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
ln -s "$touchfile" "$bin/flock"

failed=0
for test in flock close range-lock unlock; do
	if ! TS_CMD_FLOCK="$bin/flock" bash "$tree/tests/ts/flock/$test" \
		--srcdir="$tree" --builddir="$tree" --nolocks; then
		failed=1
	fi
done
exit $failed
