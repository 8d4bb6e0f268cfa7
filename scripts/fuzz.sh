#!/usr/bin/env bash
# Runs every fuzz target of the module, one after the other, for SECONDS
# each (default 60), and fails if any of them finds a failing input.
#
#   scripts/fuzz.sh [SECONDS]
#
# go test -fuzz writes a failing input to PKG/testdata/fuzz/FuzzName/; the
# seeds live at the module root, in testdata/fuzz/FuzzName/, so move it
# there to keep it as a regression seed. FUZZMINIMIZETIME (default 1s)
# bounds the minimising of each new input, which otherwise takes up to a
# minute and, on slow targets, most of the run.
set -euo pipefail

secs=${1:-60}
case $secs in
'' | *[!0-9]*)
	echo "usage: $0 [SECONDS]" >&2
	exit 2
	;;
esac
minimize=${FUZZMINIMIZETIME:-1s}

cd "$(dirname "$0")/.."

# go test -list prints the matching names of a package, then a line
# "ok <package> <time>".
targets=$(go test -list '^Fuzz' ./... | awk '
	/^Fuzz/ { names = names " " $1; next }
	/^ok/ { n = split(names, a, " "); for (i = 1; i <= n; i++) print $2, a[i]; names = "" }
')
if [ -z "$targets" ]; then
	echo "no fuzz targets found" >&2
	exit 1
fi

failed=""
echo "$targets" | {
	while read -r pkg name; do
		echo "=== $name ($pkg) for ${secs}s"
		if ! go test -run '^$' -fuzz "^$name\$" -fuzztime "${secs}s" -fuzzminimizetime "$minimize" "$pkg"; then
			failed="$failed $name"
		fi
	done
	if [ -n "$failed" ]; then
		echo "FAIL:$failed (failing inputs are in the packages' testdata/fuzz; move them to testdata/fuzz at the root)" >&2
		exit 1
	fi
	echo "all fuzz targets passed"
}
