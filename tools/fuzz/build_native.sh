#!/bin/sh
# tools/fuzz/build_native.sh: the Cython extensions built again with clang's SanitizerCoverage
# (what -fsanitize=fuzzer-no-link adds, less stack-depth, whose symbol atheris does not define)
# into bench/work/fuzz/native/, so that libFuzzer (inside atheris)
# sees the edges and comparisons of the C parsers, not only of the Python around them.
# `tools/fuzz.sh --native TARGET SECONDS` runs this first (a rerun copies the sources again and
# rebuilds what changed), then fuzzes with that build.
# Needs clang (Debian: apt-get install clang).
set -e
cd "$(dirname "$0")/../.."
command -v clang >/dev/null || { echo "build_native.sh: clang is not installed" >&2; exit 1; }
out=bench/work/fuzz/native
mkdir -p "$out"
# two fuzz runs started together (one per core) build one after the other
exec 9>"$out/.lock"
flock 9
# a copy of the sources: the instrumented .so files must not replace the normal build
tar cf - --exclude='*.so' --exclude=__pycache__ setup.py pyproject.toml engine bindings \
    | (cd "$out" && tar xf -)
cd "$out"
CC=clang LDSHARED="clang -shared" CFLAGS="-fsanitize-coverage=inline-8bit-counters,pc-table,trace-cmp -g" \
    ../../../../.venv/bin/python setup.py -q build_ext --inplace >build.log 2>&1 \
    || { tail -20 build.log >&2; exit 1; }
# libFuzzer as a shared library to preload, from the archive atheris ships: the instrumented
# extensions call into it, and atheris finds it loaded and uses it
archive=$(../../../../.venv/bin/python -c 'import atheris, os; print(os.path.join(os.path.dirname(os.path.dirname(atheris.__file__)), "libclang_rt.fuzzer_no_main.a"))')
[ libfuzzer.so -nt "$archive" ] || clang++ -shared -o libfuzzer.so -Wl,--whole-archive "$archive" \
    -Wl,--no-whole-archive -lpthread
echo "instrumented extensions in $out/engine, libFuzzer in $out/libfuzzer.so"
