/* See pfring_shim.h. Compiled into engine._pfring together with libpfring's pfring.h. */
#include <stdio.h>
#include <string.h>
#include <errno.h>
#include <pfring.h>
#include "pfring_shim.h"

#define FP_DLT_EN10MB 1          /* PF_RING delivers Ethernet frames */
#define FP_MAX_FRAME 262144      /* the largest snaplen flowprobe accepts (-s) */

struct __pfring *fp_open(const char *device, uint32_t snaplen, int promisc, const char *bpf,
                         int cluster_id, char *err, size_t errlen)
{
    u_int32_t flags = promisc ? PF_RING_PROMISC : 0;
    pfring *ring = pfring_open(device, snaplen, flags);
    if (ring == NULL) {
        snprintf(err, errlen, "cannot open the ring (%s; is the pf_ring kernel module loaded?)",
                 strerror(errno));
        return NULL;
    }
    pfring_set_application_name(ring, (char *)"flowprobe");
    if (bpf != NULL && pfring_set_bpf_filter(ring, (char *)bpf) != 0) {
        snprintf(err, errlen, "bad filter '%s'", bpf);
        pfring_close(ring);
        return NULL;
    }
    if (cluster_id >= 0 && pfring_set_cluster(ring, (u_int)cluster_id,
                                              cluster_per_flow_2_tuple) != 0) {
        snprintf(err, errlen, "cannot join cluster %d", cluster_id);
        pfring_close(ring);
        return NULL;
    }
    if (pfring_enable_ring(ring) != 0) {
        snprintf(err, errlen, "cannot enable the ring");
        pfring_close(ring);
        return NULL;
    }
    return (struct __pfring *)ring;
}

int fp_recv_batch(struct __pfring *r, uint8_t *buf, size_t buflen, fp_meta_t *meta,
                  uint32_t max, int wait_ms)
{
    pfring *ring = (pfring *)r;
    struct pfring_pkthdr hdr;
    u_char *pkt;
    size_t used = 0;
    uint32_t n = 0;
    int rc;

    while (n < max && buflen - used >= FP_MAX_FRAME) {   /* room for any frame: none lost */
        memset(&hdr, 0, sizeof(hdr));
        /* buffer_len 0: zero copy, pkt points into the ring until the next call */
        rc = pfring_recv(ring, &pkt, 0, &hdr, 0);
        if (rc < 0)
            return n ? (int)n : -1;
        if (rc == 0) {
            if (n > 0 || wait_ms <= 0)
                break;
            if (pfring_poll(ring, (u_int)wait_ms) <= 0)
                break;                       /* timeout: an empty batch */
            wait_ms = 0;
            continue;
        }
        if (hdr.caplen > FP_MAX_FRAME)
            hdr.caplen = FP_MAX_FRAME;       /* longer than -s allows anyway */
        memcpy(buf + used, pkt, hdr.caplen);
        meta[n].ts_ns = (uint64_t)hdr.ts.tv_sec * 1000000000ULL
                        + (uint64_t)hdr.ts.tv_usec * 1000ULL;
        meta[n].offset = used;
        meta[n].caplen = hdr.caplen;
        meta[n].wirelen = hdr.len;
        meta[n].linktype = FP_DLT_EN10MB;
        meta[n].reserved = 0;
        used += hdr.caplen;
        n++;
    }
    return (int)n;
}

int fp_stats(struct __pfring *r, uint64_t *out)
{
    pfring_stat st;
    memset(&st, 0, sizeof(st));
    if (pfring_stats((pfring *)r, &st) != 0)
        return -1;
    out[0] = st.recv;
    out[1] = st.drop;
    return 0;
}

void fp_close(struct __pfring *r)
{
    pfring_close((pfring *)r);
}
