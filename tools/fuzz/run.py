"""Run one fuzz target under atheris (libFuzzer), its corpus seeded first.

    .venv/bin/python tools/fuzz/run.py TARGET [libFuzzer options] (tools/fuzz.sh wraps it)

The corpus lives in bench/work/fuzz/TARGET (not committed); it is seeded from the development
captures and exports (../shared or FLOWPROBE_SHARED, when present) and from inputs the project
makes itself (tools/gen_cases.py, the kept inputs in tests/fuzz/TARGET). Python code is
instrumented for coverage by atheris. The Cython extensions are too with FLOWPROBE_FUZZ_NATIVE=1
(`tools/fuzz.sh --native`): engine is then imported from the copy tools/fuzz/build_native.sh
built with clang's SanitizerCoverage in bench/work/fuzz/native; otherwise libFuzzer mutates
inside them without coverage feedback, and says so in one line. A crashing input is written as
crash-* in the working directory: keep it in tests/fuzz/TARGET/.
"""
from __future__ import annotations

import os
import pathlib
import struct
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
SHARED = pathlib.Path(os.environ.get("FLOWPROBE_SHARED", ROOT.parent / "shared"))
KEPT = ROOT / "tests" / "fuzz"
NATIVE = ROOT / "bench" / "work" / "fuzz" / "native"


def _captures() -> list[pathlib.Path]:
    gen = ROOT / "bench" / "work" / "fuzz" / "cases"
    if not gen.is_dir():
        gen.mkdir(parents=True)
        subprocess.run([sys.executable, str(ROOT / "tools" / "gen_cases.py"), "-o", str(gen)],
                       check=True, stdout=subprocess.DEVNULL)
    out = sorted(p for p in gen.iterdir() if p.suffix in (".pcap", ".pcapng"))
    if (SHARED / "pcaps").is_dir():
        out += sorted(p for p in (SHARED / "pcaps").iterdir() if p.suffix in
                      (".pcap", ".pcapng", ".cap"))
    return out


def _packets(path: pathlib.Path) -> tuple[int, list[bytes]]:
    import numpy as np
    from engine._fastpath import META_DTYPE
    from engine._reader import PcapReader
    try:
        rd = PcapReader(str(path))
    except ValueError:
        return 0, []
    with rd:
        meta = np.zeros(4096, META_DTYPE)
        frames: list[bytes] = []
        linktype = rd.linktype
        buf = rd.buffer
        while (n := rd.next_batch(meta)):
            frames += [bytes(buf[int(m["offset"]):int(m["offset"]) + int(m["caplen"])])
                       for m in meta[:n]]
    return linktype, frames


def _udp_payloads(frames: list[bytes]) -> list[bytes]:
    """UDP payloads of Ethernet/IPv4 frames (the exports' datagrams)."""
    out = []
    for f in frames:
        if len(f) >= 42 and f[12:14] == b"\x08\x00" and f[23] == 17:
            ihl = (f[14] & 15) * 4
            out.append(f[14 + ihl + 8:])
    return out


def seeds(target: str) -> list[bytes]:
    from targets import LINKTYPES
    out: list[bytes] = []
    if target == "reader":
        out = [p.read_bytes()[:65536] for p in _captures()]
    elif target == "decoder":
        for p in _captures():
            lt, frames = _packets(p)
            if lt in LINKTYPES:
                for k in range(0, min(len(frames), 64), 8):
                    out.append(bytes([LINKTYPES.index(lt)]) + b"".join(
                        bytes([min(len(f), 255)]) + f[:255] for f in frames[k:k + 8]))
    elif target == "collector":
        dirs = [SHARED / "pcaps" / "exports", SHARED / "pcaps"]
        for d in dirs:
            for p in sorted(d.glob("*.pcap")) if d.is_dir() else []:
                if d.name == "pcaps" and not p.name.startswith(("netflow", "sflow")):
                    continue
                dg = _udp_payloads(_packets(p)[1])
                for mode in range(3):
                    out.append(bytes([mode]) + b"".join(struct.pack(">H", len(x)) + x
                                                        for x in dg[:8]))
    elif target == "tlv":
        from engine.export.tlv import encode_dicts
        out = [encode_dicts([{1: 5, 8: "10.0.0.1", "NAME": "x" * 40, 57590: 2**40}]),
               encode_dicts([{4: 6}, {5: -1.5}])]
    elif target == "config":
        out = [p.read_bytes() for p in sorted((ROOT / "etc").glob("*.conf"))]
    kept = KEPT / target
    if kept.is_dir():
        out += [p.read_bytes() for p in sorted(kept.iterdir()) if p.is_file()]
    return out


def use_native_build() -> bool:
    """Import engine from the instrumented build, when asked. Its coverage callbacks resolve to
    the libFuzzer that tools/fuzz.sh preloads (atheris then uses that one, not its own copy)."""
    if os.environ.get("FLOWPROBE_FUZZ_NATIVE") != "1" or not (NATIVE / "engine").is_dir():
        print("run.py: the C extensions are not instrumented (tools/fuzz/build_native.sh builds "
              "them with coverage)", file=sys.stderr)
        return False
    sys.path.insert(0, str(NATIVE))
    print(f"run.py: C extensions with coverage from {NATIVE}", file=sys.stderr)
    return True


def main() -> int:
    use_native_build()
    import atheris
    sys.path.insert(0, str(ROOT / "tools" / "fuzz"))
    with atheris.instrument_imports(include=["engine", "targets"]):
        import targets
    if len(sys.argv) < 2 or sys.argv[1] not in targets.TARGETS:
        print(f"usage: run.py TARGET [libFuzzer options]; targets: {', '.join(targets.TARGETS)}",
              file=sys.stderr)
        return 2
    name = sys.argv.pop(1)
    corpus = ROOT / "bench" / "work" / "fuzz" / name
    if not corpus.is_dir():
        corpus.mkdir(parents=True)
        for i, s in enumerate(seeds(name)):
            (corpus / f"seed-{i:04d}").write_bytes(s)
    fn = targets.TARGETS[name]
    atheris.Setup(sys.argv + [str(corpus)], fn)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
