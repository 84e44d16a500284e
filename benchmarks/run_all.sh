#!/usr/bin/env bash
# Runs every benchmark, one after another, then prints every performance goal the README states
# beside the value measured in this run (benchmarks/goals.py --table).
#   bash benchmarks/run_all.sh           the full benchmarks (16 minutes on 2 cores)
#   bash benchmarks/run_all.sh --quick   each benchmark's smoke run (what CI runs): numbers
#                                        printed, a benchmark that stops with an error fails
# Goals are reported, not enforced: the exit status is non-zero only when a benchmark failed.
# The measurements go to $CRUSH_BENCH_RESULTS when set (emptied first, then kept), else to a
# temporary file.
set -uo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  --quick) mode=(--quick) ;;
  "") mode=() ;;
  *)
    echo "usage: bash benchmarks/run_all.sh [--quick]" >&2
    exit 2
    ;;
esac
python=.venv/bin/python
if [ ! -x "$python" ]; then
  echo "no $python: run 'bash scripts/setup.sh test' first" >&2
  exit 2
fi
if [ -n "${CRUSH_BENCH_RESULTS:-}" ]; then
  : >"$CRUSH_BENCH_RESULTS"
else
  CRUSH_BENCH_RESULTS=$(mktemp -t crush-bench-results.XXXXXX)
  trap 'rm -f "$CRUSH_BENCH_RESULTS"' EXIT
fi
export CRUSH_BENCH_RESULTS
# A smoke run takes seconds; one that takes this long is stuck, and CI must not wait for it.
limit=()
if [ ${#mode[@]} -gt 0 ]; then limit=(timeout --kill-after=10 600); fi
for bench in benchmarks/bench_*.py; do
  name=$(basename "$bench")
  echo "=== $name ${mode[*]}"
  started=$(date +%s.%N)
  "${limit[@]}" "$python" "$bench" "${mode[@]}"
  status=$?
  seconds=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  if [ "$status" -ne 0 ]; then echo "=== $name FAILED with exit status $status" >&2; fi
  printf '{"benchmark": "%s", "exit": %d, "seconds": %s}\n' \
    "$name" "$status" "$seconds" >>"$CRUSH_BENCH_RESULTS"
done
echo "=== performance goals (README \"Performance goals\"), measured in this run"
"$python" benchmarks/goals.py --table "$CRUSH_BENCH_RESULTS"
