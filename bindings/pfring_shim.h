/* flowprobe's shim over libpfring: open a ring and copy batches of packets out of it.
 * Used through the cffi module engine._pfring (bindings/pfring_build.py). */
#ifndef FLOWPROBE_PFRING_SHIM_H
#define FLOWPROBE_PFRING_SHIM_H

#include <stddef.h>
#include <stdint.h>

/* One row of engine._fastpath.META_DTYPE: ts_ns u8, offset u8, caplen u4, wirelen u4,
 * linktype u4, reserved u4 (32 bytes, native byte order). */
typedef struct {
    uint64_t ts_ns;
    uint64_t offset;
    uint32_t caplen;
    uint32_t wirelen;
    uint32_t linktype;
    uint32_t reserved;
} fp_meta_t;

struct __pfring;

/* Open DEVICE (snaplen, promiscuous or not), apply BPF (may be NULL), join cluster CLUSTER_ID
 * with per-flow balancing (-1: none) and enable the ring. NULL on failure, with a message in
 * ERR (ERRLEN bytes). */
struct __pfring *fp_open(const char *device, uint32_t snaplen, int promisc, const char *bpf,
                         int cluster_id, char *err, size_t errlen);

/* Copy up to MAX packets into BUF (BUFLEN bytes, at least 256 KiB) and META; wait up to WAIT_MS
 * for the first one. A batch ends while 256 KiB are still free, so no packet taken out of the
 * ring is ever dropped here. Returns the number of packets (0 after the wait), or -1 on error. */
int fp_recv_batch(struct __pfring *ring, uint8_t *buf, size_t buflen, fp_meta_t *meta,
                  uint32_t max, int wait_ms);

/* out[0] = packets received, out[1] = packets dropped (by the ring). 0 on success. */
int fp_stats(struct __pfring *ring, uint64_t *out);

void fp_close(struct __pfring *ring);

#endif
