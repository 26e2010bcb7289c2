"""flowprobe: packets and collected NetFlow/IPFIX/sFlow in, flows out (ntopng ZeroMQ, NetFlow, files)."""
__version__ = "0.1.0"
