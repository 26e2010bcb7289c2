"""The flow collector: NetFlow v5/v9, IPFIX and sFlow v5 over UDP (or from flowrelay), as a
source of flow records.

* source.py: ``CollectorSource``, the record source the run loop reads (sockets, modes, cache);
* receive.py: UDP sockets and their kernel drop counters;
* collector.py: datagrams to records, per exporter and observation domain;
* netflow.py, ipfix.py, sflow.py: the parsers; template.py: templates to record columns;
* _cache.pyx: the flow cache (C; cache.py is its numpy reference); from_relay.py: datagrams
  forwarded by flowrelay;
* badpackets.py: malformed datagrams to a pcap file.
"""
from engine.collect.source import CollectorSource

__all__ = ["CollectorSource"]
