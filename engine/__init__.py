"""flowprobe: packets and collected NetFlow/IPFIX/sFlow in, flows out (ntopng ZeroMQ, NetFlow, files)."""
__version__ = "0.1.0"

import os as _os

# numpy's BLAS threads would spin on the cores the capture needs; flowprobe does no linear algebra
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
