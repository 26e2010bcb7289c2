#!/bin/sh
# tools/fuzz.sh TARGET SECONDS [libFuzzer options]: run one fuzz target (reader, decoder,
# collector, tlv, config) for SECONDS under atheris; crashing inputs land in
# bench/work/fuzz/crashes/. The seeds are kept in the corpus (-keep_seed=1): the Cython code has
# no coverage feedback, so libFuzzer would otherwise drop the seeds that exercise it.
set -e
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: tools/fuzz.sh TARGET SECONDS [libFuzzer options]" >&2; exit 2; }
target=$1 seconds=$2
shift 2
mkdir -p bench/work/fuzz/crashes
exec .venv/bin/python tools/fuzz/run.py "$target" -max_total_time="$seconds" -timeout=10 \
    -rss_limit_mb=4096 -keep_seed=1 -artifact_prefix=bench/work/fuzz/crashes/"$target"- \
    -print_final_stats=1 "$@"
