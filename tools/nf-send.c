/* nf-send: a NetFlow v9 / IPFIX load generator for the collector bench (tools/loadgen.py builds it).
 *
 *   nf-send -p PORT [-H 127.0.0.1] [-V 9|10] [-r RECORDS_PER_S] [-s SECONDS] [-n DATAGRAMS]
 *           [-R RECORDS_PER_DATAGRAM] [-f FLOWS]
 *
 * Datagrams of R records (default 30) of one 18-field template (softflowd's IPv4 fields, times as
 * sysUpTime), the template in the first datagram and every 1000th; flows cycle through F distinct 5-tuples. Sent
 * with sendmmsg in batches of 64, paced to RECORDS_PER_S (0: as fast as possible) for SECONDS or
 * until DATAGRAMS are sent. Reports one JSON line: datagrams, records, seconds, records_per_s,
 * send_errors. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define MAXDG 1500
#define TEMPLATE_ID 256
#define TEMPLATE_EVERY 1000

/* (element id, length): NetFlow v9 / IPFIX ids alike */
static const uint16_t FIELDS[][2] = {
    {8, 4}, {12, 4}, {7, 2}, {11, 2}, {4, 1}, {6, 1}, {5, 1}, {2, 4}, {1, 4},
    {22, 4}, {21, 4}, {10, 2}, {14, 2}, {16, 2}, {17, 2}, {9, 1}, {13, 1}, {60, 1}};
#define NFIELDS (sizeof(FIELDS) / sizeof(FIELDS[0]))
#define RECLEN 42

static uint8_t *put16(uint8_t *p, uint16_t v) { v = htons(v); memcpy(p, &v, 2); return p + 2; }
static uint8_t *put32(uint8_t *p, uint32_t v) { v = htonl(v); memcpy(p, &v, 4); return p + 4; }

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* one datagram; returns its length */
static size_t build(uint8_t *d, int version, uint32_t seq, int with_template, int nrec,
                    uint64_t *flow, uint64_t nflows, uint32_t uptime)
{
    uint8_t *p = d;
    uint32_t secs = (uint32_t)time(NULL);
    if (version == 9) {
        p = put16(p, 9); p = put16(p, (uint16_t)(nrec + (with_template ? 1 : 0)));
        p = put32(p, uptime); p = put32(p, secs); p = put32(p, seq); p = put32(p, 0);
    } else {
        p = put16(p, 10); p = put16(p, 0); p = put32(p, secs); p = put32(p, seq); p = put32(p, 0);
    }
    if (with_template) {
        p = put16(p, version == 9 ? 0 : 2); p = put16(p, (uint16_t)(8 + 4 * NFIELDS));
        p = put16(p, TEMPLATE_ID); p = put16(p, NFIELDS);
        for (size_t i = 0; i < NFIELDS; i++) { p = put16(p, FIELDS[i][0]); p = put16(p, FIELDS[i][1]); }
    }
    size_t body = 4 + (size_t)nrec * RECLEN, pad = (version == 9) ? (4 - body % 4) % 4 : 0;
    p = put16(p, TEMPLATE_ID); p = put16(p, (uint16_t)(body + pad));
    for (int r = 0; r < nrec; r++) {
        uint64_t f = (*flow)++ % nflows;
        p = put32(p, 0x0a000000u | (uint32_t)(f & 0xffffff));  /* src 10.x.y.z */
        p = put32(p, 0xc0a80001u);                               /* dst 192.168.0.1 */
        p = put16(p, (uint16_t)(1024 + (f >> 24) % 60000)); p = put16(p, 443);
        *p++ = 6; *p++ = 0x1b; *p++ = 0;
        p = put32(p, 10 + r); p = put32(p, 1000 + r);              /* packets, bytes */
        p = put32(p, uptime - 5000); p = put32(p, uptime - 10);
        p = put16(p, 1); p = put16(p, 2); p = put16(p, 0); p = put16(p, 0);
        *p++ = 24; *p++ = 24; *p++ = 4;
    }
    memset(p, 0, pad);
    p += pad;
    if (version == 10)
        put16(d + 2, (uint16_t)(p - d));
    return (size_t)(p - d);
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1";
    int port = 0, version = 9, nrec = 30, opt;
    double rate = 0, seconds = 1;
    long long limit = 0;
    uint64_t nflows = 100000;
    while ((opt = getopt(argc, argv, "H:p:V:r:s:n:R:f:")) != -1) {
        switch (opt) {
        case 'H': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'V': version = atoi(optarg); break;
        case 'r': rate = atof(optarg); break;
        case 's': seconds = atof(optarg); break;
        case 'n': limit = atoll(optarg); break;
        case 'R': nrec = atoi(optarg); break;
        case 'f': nflows = strtoull(optarg, NULL, 10); break;
        default:
            fprintf(stderr, "usage: nf-send -p PORT [-H HOST] [-V 9|10] [-r RECORDS_PER_S] "
                            "[-s SECONDS] [-n DATAGRAMS] [-R RECORDS] [-f FLOWS]\n");
            return 2;
        }
    }
    if (port <= 0 || port > 65535 || (version != 9 && version != 10) || nrec < 1 ||
        4 + 16 + 8 + 4 * NFIELDS + 4 + nrec * RECLEN + 4 > MAXDG || nflows == 0 || rate < 0) {
        fprintf(stderr, "nf-send: bad arguments (a port, -V 9 or 10, 1-%d records a datagram)\n",
                (int)((MAXDG - 120) / RECLEN));
        return 2;
    }
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &dst.sin_addr) != 1) {
        fprintf(stderr, "nf-send: %s is not an IPv4 address\n", host);
        return 2;
    }
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&dst, sizeof dst) < 0) {
        fprintf(stderr, "nf-send: %s\n", strerror(errno));
        return 1;
    }
    static uint8_t bufs[BATCH][MAXDG];
    struct iovec iov[BATCH];
    struct mmsghdr msgs[BATCH];
    memset(msgs, 0, sizeof msgs);
    uint64_t flow = 0, sent = 0, records = 0, errors = 0;
    uint32_t seq = 0;
    double start = now_s(), end = start + seconds;
    for (;;) {
        double t = now_s();
        if (t >= end || (limit && (long long)sent >= limit))
            break;
        if (rate > 0 && records >= rate * (t - start)) {   /* ahead of the rate: wait a little */
            struct timespec ts = {0, 50000};
            nanosleep(&ts, NULL);
            continue;
        }
        int n = BATCH;
        if (limit && (long long)(sent + n) > limit)
            n = (int)(limit - (long long)sent);
        for (int i = 0; i < n; i++) {
            uint64_t k = sent + i;
            iov[i].iov_base = bufs[i];
            iov[i].iov_len = build(bufs[i], version, seq, k % TEMPLATE_EVERY == 0, nrec, &flow,
                                   nflows, (uint32_t)((t - start) * 1000) + 100000);
            seq += version == 9 ? 1 : (uint32_t)nrec;
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        int done = sendmmsg(fd, msgs, (unsigned)n, 0);
        if (done < 0)
            done = 0;
        /* unsent datagrams are counted, and their sequence numbers are spent */
        errors += (uint64_t)(n - done);
        sent += (uint64_t)n;
        records += (uint64_t)done * (uint64_t)nrec;
    }
    double took = now_s() - start;
    printf("{\"version\": %d, \"datagrams\": %llu, \"records\": %llu, \"seconds\": %.6f, "
           "\"records_per_s\": %.0f, \"send_errors\": %llu}\n", version,
           (unsigned long long)(sent - errors), (unsigned long long)records, took,
           took > 0 ? records / took : 0.0, (unsigned long long)errors);
    return 0;
}
