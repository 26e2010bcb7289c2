"""Build the Cython extensions (and the PF_RING cffi binding where libpfring is installed).
Everything else is in pyproject.toml."""
import os
import sys

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

COMPILE_ARGS = ["-O3", "-fno-strict-aliasing"]

OPTIONS = dict(include_dirs=[numpy.get_include(), "engine/includes"],
               extra_compile_args=COMPILE_ARGS,
               define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")])



def ndpi_options() -> dict:
    """The flow table links nDPI (engine/includes/l7.h) where libndpi's headers are, unless
    FLOWPROBE_NDPI=0; without it the build works and L7 detection is unavailable."""
    if os.environ.get("FLOWPROBE_NDPI", "1") == "0":
        return OPTIONS
    ndpi = os.environ.get("FLOWPROBE_NDPI_INCLUDE", "/usr/include/ndpi")
    if not os.path.exists(os.path.join(ndpi, "ndpi_api.h")):
        return OPTIONS
    return dict(OPTIONS, include_dirs=OPTIONS["include_dirs"] + [ndpi], libraries=["ndpi"],
                define_macros=OPTIONS["define_macros"] + [("HAVE_NDPI", "1")])


# the data plane: the flow table (with the decoders of _decode.pxd inlined), the capture reader,
# the decoders alone for the tests, the per-flow encoders and the collector's data set decode
extensions = [
    Extension("engine._fastpath", ["engine/_fastpath.pyx"], **ndpi_options()),
    Extension("engine._reader", ["engine/_reader.pyx"], **OPTIONS),
    Extension("engine._decode", ["engine/_decode.pyx"], **OPTIONS),
    Extension("engine.export._encode", ["engine/export/_encode.pyx"], **OPTIONS),
    Extension("engine.collect._cache", ["engine/collect/_cache.pyx"], **OPTIONS),
    Extension("engine.collect._collect", ["engine/collect/_collect.pyx"], **OPTIONS),
]
if sys.platform.startswith("linux"):     # the TPACKET_V3 ring source; libpcap compiles its filters
    extensions.append(
        Extension("engine.sources._ring", ["engine/sources/_ring.pyx"], libraries=["pcap"],
                  include_dirs=[numpy.get_include()], extra_compile_args=COMPILE_ARGS,
                  define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]))

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "bindings"))
try:
    from pfring_build import have_pfring
except ImportError:                     # cffi missing at build time: no PF_RING binding
    def have_pfring() -> bool:
        return False

setup(ext_modules=cythonize(extensions, language_level=3,
                            compiler_directives={"boundscheck": False, "wraparound": False,
                                                 "cdivision": True}),
      cffi_modules=["bindings/pfring_build.py:ffibuilder"] if have_pfring() else [])
