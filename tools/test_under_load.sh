#!/usr/bin/env bash
# The README's test command on a machine kept busy: one CPU-bound process per core (stress-ng where it is
# installed, else shell loops) runs beside `bash tools/test.sh` from start to end, and is stopped with it.
# The suite holds no assertion on elapsed time, so it must be as green here as on an idle machine, only slower.
#   tools/test_under_load.sh [ARGS]   ARGS go to tools/test.sh; BUSY=N sets the number of busy processes (default:
#                                     the number of cores)
set -uo pipefail
cd "$(dirname "$0")/.."
busy=${BUSY:-$(nproc)}
if command -v stress-ng >/dev/null; then
  stress-ng --cpu "$busy" --quiet &
  pids=($!)
else
  pids=()
  for _ in $(seq "$busy"); do
    bash -c 'while :; do :; done' &
    pids+=($!)
  done
fi
stop_load() { kill "${pids[@]}" 2>/dev/null; wait "${pids[@]}" 2>/dev/null; }
trap stop_load EXIT
echo "test_under_load: $busy busy process(es) beside the suite (pids ${pids[*]})"
bash tools/test.sh "$@"
