#!/bin/sh
# tools/fuzz.sh [--native] TARGET SECONDS [libFuzzer options]: run one fuzz target (reader,
# decoder, collector, tlv, config) for SECONDS under atheris; crashing inputs land in
# bench/work/fuzz/crashes/. --native: the Cython extensions built with clang's coverage
# instrumentation (tools/fuzz/build_native.sh), so libFuzzer is guided inside the C parsers too.
# Without it the seeds are kept in the corpus (-keep_seed=1): the C code then gives no coverage
# feedback, and libFuzzer would otherwise drop the seeds that exercise it.
set -e
cd "$(dirname "$0")/.."
native=""
if [ "${1:-}" = "--native" ]; then
    native=1
    shift
fi
[ $# -ge 2 ] || { echo "usage: tools/fuzz.sh [--native] TARGET SECONDS [libFuzzer options]" >&2; exit 2; }
target=$1 seconds=$2
shift 2
mkdir -p bench/work/fuzz/crashes
if [ -n "$native" ]; then
    tools/fuzz/build_native.sh >/dev/null
    export FLOWPROBE_FUZZ_NATIVE=1 LD_PRELOAD="$PWD/bench/work/fuzz/native/libfuzzer.so"
fi
exec .venv/bin/python tools/fuzz/run.py "$target" -max_total_time="$seconds" -timeout=10 \
    -rss_limit_mb=4096 -keep_seed=1 -artifact_prefix=bench/work/fuzz/crashes/"$target"- \
    -print_final_stats=1 "$@"
