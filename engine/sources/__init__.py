"""Packet sources (engine/sources/base.py has the contract) and the one place that picks and opens
a live capture: `open_live`.

An interface name `-i` gives is captured through
* the TPACKET_V3 ring (ring.py) on Linux, for Ethernet and loopback interfaces: the default;
* libpcap (pcapy-ng, live.py) with `-i pcap:IFACE`, for other interface types ('any', tun, PPP)
  and on other systems;
* PF_RING (pfring.py) with `-i pfring:IFACE` or `--pfring`.
"""
from __future__ import annotations

import sys
from typing import Optional

from engine.errors import FlowprobeError

RING_HARDWARE_TYPES = (1, 772)        # ARPHRD_ETHER, ARPHRD_LOOPBACK: frames with Ethernet headers


def _hardware_type(iface: str) -> Optional[int]:
    try:
        with open(f"/sys/class/net/{iface}/type") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def live_backend(name: str, pfring: bool = False) -> tuple[str, str]:
    """('ring' | 'pcap' | 'pfring', interface) for an `-i` value that names an interface, or one
    error line when it names none. Opens nothing (the `-g` parent classifies, workers open)."""
    prefix, _, rest = name.partition(":")
    if prefix in ("pcap", "pfring") and rest:
        kind, iface = prefix, rest
    else:
        kind, iface = ("pfring" if pfring else ""), name
    if kind == "pfring":                 # PF_RING has names of its own (zc:eth1): it checks them
        from engine.sources.pfring import require_binding
        require_binding()
        return kind, iface
    hw = _hardware_type(iface)
    if hw is None and iface != "any":
        raise FlowprobeError(f"{name!r}: no such capture file or network interface")
    if kind == "pcap" or not sys.platform.startswith("linux") or hw not in RING_HARDWARE_TYPES:
        return "pcap", iface
    return "ring", iface


def live_options(args) -> dict:
    """open_live's keyword arguments from the command line's flags."""
    return dict(snaplen=args.snaplen, promisc=not args.no_promisc, bpf=args.bpf_filter,
                pfring=args.pfring, buffer_kib=args.buffer_size,
                block_kib=args.ring_block_size)


def open_live(name: str, *, snaplen: int = 65535, promisc: bool = True,
              bpf: Optional[str] = None, pfring: bool = False,
              fanout_group: Optional[int] = None, buffer_kib: Optional[int] = None,
              block_kib: Optional[int] = None, timeout_ms: int = 100):
    """The live Source for `-i NAME` (see the module docstring for which one). ``fanout_group``:
    the `-g` workers' group (PACKET_FANOUT hash+defrag; a PF_RING cluster)."""
    from engine.sources.ring import DEFAULT_BLOCK_KIB, DEFAULT_BUFFER_KIB
    buffer_kib = buffer_kib or DEFAULT_BUFFER_KIB
    kind, iface = live_backend(name, pfring)
    if kind == "pfring":
        from engine.sources.pfring import PfringSource
        return PfringSource(iface, snaplen=snaplen, promisc=promisc, bpf=bpf,
                            cluster_id=fanout_group, timeout_ms=timeout_ms)
    if kind == "pcap":
        from engine.sources.live import PcapySource
        return PcapySource(iface, live=True, snaplen=snaplen, promisc=promisc, bpf=bpf,
                           fanout_group=fanout_group, timeout_ms=timeout_ms,
                           buffer_bytes=buffer_kib * 1024)
    from engine.sources.ring import RingSource
    return RingSource(iface, snaplen=snaplen, promisc=promisc, bpf=bpf, fanout_group=fanout_group,
                      buffer_kib=buffer_kib, block_kib=block_kib or DEFAULT_BLOCK_KIB,
                      timeout_ms=timeout_ms)
