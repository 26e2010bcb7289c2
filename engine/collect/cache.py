"""The numpy reference of the collector's flow cache (the C one, engine/collect/_cache.pyx, is what
runs; tests/test_collect_cache.py holds it to this): collected records merged by flow key,
exporter and observation domain, both directions of a flow into one biflow, exported on the idle
(-d) and lifetime (-t) timeouts by arrival time (routers' clocks are not trusted)."""
from __future__ import annotations

import numpy as np

from engine.fields import RECORD_DTYPE

KEY_DTYPE = np.dtype([("a", "u1", (16,)), ("b", "u1", (16,)), ("ap", "u2"), ("bp", "u2"),
                      ("exporter", "u1", (16,)), ("domain", "u4"), ("vlan", "u2"),
                      ("proto", "u1"), ("ipv", "u1")])
REASON_IDLE, REASON_ACTIVE, REASON_END = 0, 1, 4


def _after(a: np.ndarray, ap: np.ndarray, b: np.ndarray, bp: np.ndarray) -> np.ndarray:
    """a:ap > b:bp, lexicographically on address bytes then port, vectorised."""
    av = np.ascontiguousarray(a).view(">u8")
    bv = np.ascontiguousarray(b).view(">u8")
    return ((av[:, 0] > bv[:, 0]) |
            ((av[:, 0] == bv[:, 0]) & ((av[:, 1] > bv[:, 1]) |
                                       ((av[:, 1] == bv[:, 1]) & (ap > bp)))))


class FlowCache:
    def __init__(self, max_flows: int = 262144, idle: float = 30.0, lifetime: float = 120.0):
        self.max_flows = max_flows
        self.idle = idle
        self.lifetime = lifetime
        self.cap = min(1024, max_flows)
        self.store = np.zeros(self.cap, RECORD_DTYPE)
        self.orient = np.zeros(self.cap, bool)
        self.created = np.zeros(self.cap)
        self.updated = np.zeros(self.cap)
        self.used = np.zeros(self.cap, bool)
        self.keys = np.empty(self.cap, object)     # slot -> its key (bytes), to unindex
        self.index: dict = {}
        self.free = list(range(self.cap - 1, -1, -1))
        self.stats = {"cache_merged": 0, "cache_created": 0, "cache_full": 0,
                      "cache_exported": 0}

    def __len__(self) -> int:
        return len(self.index)

    def _grow(self) -> bool:
        if self.cap >= self.max_flows:
            return False
        new = min(self.cap * 2, self.max_flows)
        for name in ("store", "orient", "created", "updated", "used", "keys"):
            old = getattr(self, name)
            arr = np.zeros(new, old.dtype)
            arr[:self.cap] = old
            setattr(self, name, arr)
        self.free.extend(range(new - 1, self.cap - 1, -1))
        self.cap = new
        return True

    def add(self, recs: np.ndarray, now: float) -> np.ndarray:
        """Merge ``recs``; returns the records that found no room (exported as they are)."""
        n = len(recs)
        if n == 0:
            return recs[:0]
        swap = _after(recs["src_addr"], recs["src_port"], recs["dst_addr"], recs["dst_port"])
        k = np.zeros(n, KEY_DTYPE)
        k["a"] = np.where(swap[:, None], recs["dst_addr"], recs["src_addr"])
        k["b"] = np.where(swap[:, None], recs["src_addr"], recs["dst_addr"])
        k["ap"] = np.where(swap, recs["dst_port"], recs["src_port"])
        k["bp"] = np.where(swap, recs["src_port"], recs["dst_port"])
        k["exporter"] = recs["exporter_addr"]
        k["domain"] = recs["observation_point"]
        k["vlan"] = recs["vlan"]
        k["proto"] = recs["protocol"]
        k["ipv"] = recs["ip_version"]
        # one dict lookup per distinct key of the batch, not per record
        ukeys_arr, first, inv = np.unique(k.view(f"V{KEY_DTYPE.itemsize}"), return_index=True,
                                          return_inverse=True)
        inv = inv.reshape(-1)
        ukeys = ukeys_arr.tolist()
        get = self.index.get
        uslots = np.fromiter((get(x, -1) for x in ukeys), np.int64, len(ukeys))
        newu = np.flatnonzero(uslots < 0)
        new = np.zeros(n, bool)
        if len(newu):
            while len(self.free) < len(newu) and self._grow():
                pass
            got = min(len(newu), len(self.free))
            if got:
                slots_new = self.free[len(self.free) - got:]
                del self.free[len(self.free) - got:]
                taken = newu[:got]
                uslots[taken] = slots_new
                newkeys = [ukeys[i] for i in taken.tolist()]
                self.index.update(zip(newkeys, slots_new))
                ka = np.empty(got, object)
                ka[:] = newkeys
                self.keys[slots_new] = ka
                new[first[taken]] = True
        slots = uslots[inv]
        full = np.flatnonzero(slots < 0)
        if new.any():
            ns = slots[new]
            self.store[ns] = recs[new]
            self.orient[ns] = swap[new]
            self.created[ns] = now
            self.used[ns] = True
            self.stats["cache_created"] += int(new.sum())
        merge = ~new & (slots >= 0)
        if merge.any():
            ms = slots[merge]
            r = recs[merge]
            rev = swap[merge] != self.orient[ms]
            st = self.store
            for a, b in (("in_bytes", "out_bytes"), ("in_pkts", "out_pkts"),
                         ("out_bytes", "in_bytes"), ("out_pkts", "in_pkts")):
                v = r[a]
                np.add.at(st[a], ms[~rev], v[~rev])
                np.add.at(st[b], ms[rev], v[rev])
            fc, fs = r["client_tcp_flags"], r["server_tcp_flags"]
            np.bitwise_or.at(st["client_tcp_flags"], ms, np.where(rev, fs, fc))
            np.bitwise_or.at(st["server_tcp_flags"], ms, np.where(rev, fc, fs))
            # TCP health: counters add up (the sides swapped for a reverse record), windows and
            # latencies (one connection's, the same in every slice) take the largest
            for a, b, op in (("retr_pkts_c2s", "retr_pkts_s2c", np.add),
                             ("retr_bytes_c2s", "retr_bytes_s2c", np.add),
                             ("ooo_pkts_c2s", "ooo_pkts_s2c", np.add),
                             ("zero_win_c2s", "zero_win_s2c", np.add),
                             ("win_max_c2s", "win_max_s2c", np.maximum),
                             ("client_nw_latency_ms", "server_nw_latency_ms", np.maximum)):
                op.at(st[a], ms, np.where(rev, r[b], r[a]))
                op.at(st[b], ms, np.where(rev, r[a], r[b]))
            np.maximum.at(st["appl_latency_ms"], ms, r["appl_latency_ms"])
            np.minimum.at(st["first_ms"], ms, r["first_ms"])
            np.maximum.at(st["last_ms"], ms, r["last_ms"])
            self.stats["cache_merged"] += int(merge.sum())
        ok = slots >= 0
        self.updated[slots[ok]] = now
        if len(full):
            self.stats["cache_full"] += len(full)
            return recs[full]
        return recs[:0]

    def _export(self, mask: np.ndarray, reason: int) -> np.ndarray:
        idx = np.flatnonzero(mask)
        if len(idx) == 0:
            return np.zeros(0, RECORD_DTYPE)
        out = self.store[idx].copy()
        out["end_reason"] = reason
        self.used[idx] = False
        index = self.index
        for key in self.keys[idx].tolist():
            del index[key]
        self.keys[idx] = None
        self.free.extend(idx.tolist())
        self.stats["cache_exported"] += len(idx)
        return out

    def expire(self, now: float) -> np.ndarray:
        if not self.index:
            return np.zeros(0, RECORD_DTYPE)
        idle = self.used & (now - self.updated >= self.idle)
        active = self.used & ~idle & (now - self.created >= self.lifetime)
        parts = [self._export(idle, REASON_IDLE), self._export(active, REASON_ACTIVE)]
        return np.concatenate(parts)

    def flush(self) -> np.ndarray:
        return self._export(self.used.copy(), REASON_END)
