"""cffi build of engine._pfring: libpfring through a small C shim (out-of-line API mode).

Built only where libpfring and its header are installed (`pfring.h` under /usr/include,
/usr/local/include, or the directory in $PFRING_INCLUDE; libpfring under /usr/lib, /usr/local/lib
or $PFRING_LIB). Elsewhere the module is absent and `-i pfring:IFACE` fails with one line
(engine/sources/pfring.py).

    python bindings/pfring_build.py          # builds engine/_pfring*.so in place, or says why not
    setup.py: cffi_modules=["bindings/pfring_build.py:ffibuilder"] when have_pfring() is true
"""
from __future__ import annotations

import os
import pathlib
import sys

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent


def include_dirs() -> list[str]:
    dirs = [os.environ.get("PFRING_INCLUDE", ""), "/usr/local/include", "/usr/include"]
    return [d for d in dirs if d]


def library_dirs() -> list[str]:
    dirs = [os.environ.get("PFRING_LIB", ""), "/usr/local/lib", "/usr/lib",
            "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu"]
    return [d for d in dirs if d and os.path.isdir(d)]


def have_pfring() -> bool:
    """True when pfring.h and libpfring are both found (the binding can be built)."""
    header = any(os.path.exists(os.path.join(d, "pfring.h")) for d in include_dirs())
    lib = any(os.path.exists(os.path.join(d, name)) for d in library_dirs()
              for name in ("libpfring.so", "libpfring.a"))
    return header and lib


ffibuilder = FFI()

# The subset of pfring.h the shim needs, declared for cffi's API mode (the C compiler checks it
# against the real header), and the shim itself.
ffibuilder.cdef("""
    typedef ... pfring;
    typedef struct { uint64_t recv; uint64_t drop; ...; } pfring_stat;
    pfring *pfring_open(const char *device_name, uint32_t caplen, uint32_t flags);
    int pfring_enable_ring(pfring *ring);
    int pfring_stats(pfring *ring, pfring_stat *stats);
    void pfring_close(pfring *ring);

    typedef struct {
        uint64_t ts_ns;
        uint64_t offset;
        uint32_t caplen;
        uint32_t wirelen;
        uint32_t linktype;
        uint32_t reserved;
    } fp_meta_t;
    struct __pfring;
    struct __pfring *fp_open(const char *device, uint32_t snaplen, int promisc, const char *bpf,
                             int cluster_id, char *err, size_t errlen);
    int fp_recv_batch(struct __pfring *ring, uint8_t *buf, size_t buflen, fp_meta_t *meta,
                      uint32_t max, int wait_ms);
    int fp_stats(struct __pfring *ring, uint64_t *out);
    void fp_close(struct __pfring *ring);
""")

ffibuilder.set_source(
    "engine._pfring",
    '#include <pfring.h>\n#include "pfring_shim.h"\n',
    sources=[str(HERE / "pfring_shim.c")],
    include_dirs=[str(HERE)] + include_dirs(),
    library_dirs=library_dirs(),
    libraries=["pfring"] + (["pcap"] if os.environ.get("PFRING_NEEDS_PCAP", "1") == "1" else []),
    extra_compile_args=["-O2"],
)


def main() -> int:
    if not have_pfring() and not os.environ.get("PFRING_FORCE"):
        print("PF_RING binding not built: pfring.h and libpfring not found "
              f"(looked in {', '.join(include_dirs())}; set PFRING_INCLUDE/PFRING_LIB)",
              file=sys.stderr)
        return 0
    out = ffibuilder.compile(tmpdir=str(ROOT / "build" / "cffi"), verbose=False)
    target = ROOT / "engine" / pathlib.Path(out).name
    os.replace(out, target)
    print(f"built {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
