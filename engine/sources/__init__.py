"""Packet sources (base.py has the contract, the classification of `-i` values and the opening).

An interface name `-i` gives is captured through
* the TPACKET_V3 ring (ring.py) on Linux, for Ethernet and loopback interfaces: the default;
* libpcap (pcapy-ng, live.py) with `-i pcap:IFACE`, for other interface types ('any', tun, PPP)
  and on other systems;
* PF_RING (pfring.py) with `-i pfring:IFACE` or `--pfring`.
Capture files are read in place by our reader (pcapfile.py), or by libpcap with a BPF filter.
"""
