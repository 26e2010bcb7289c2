/* pcap-replay: replay an Ethernet capture onto an interface at a set rate or the highest.
 *
 *   pcap-replay -i IFACE [-r PPS] [-l LOOPS] [-c CPU] [-b BATCH] FILE
 *
 * The capture (pcap or pcapng, read by libpcap) is loaded into memory first, then sent frame by
 * frame (the captured bytes, headers included) through an AF_PACKET socket with sendmmsg(), in
 * batches, bypassing the qdisc. -r 0 (the default) sends as fast as the kernel takes the frames;
 * otherwise each frame leaves at its slot of a fixed-rate schedule. It prints one JSON object on
 * stdout: packets and bytes sent, seconds from the first send to the last, the rate, and every
 * frame it did not send, by reason. Errors are one line on stderr and exit status 1 (2: usage).
 *
 * Built by tools/loadgen.py (gcc ... -lpcap); used by the live tests and `python -m bench live`.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <net/if.h>
#include <linux/if_packet.h>
#include <pcap/pcap.h>
#include <poll.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef PACKET_QDISC_BYPASS
#define PACKET_QDISC_BYPASS 20
#endif
#define MAX_BATCH 1024

static void die(const char *what, const char *detail) {
    fprintf(stderr, "pcap-replay: error: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    exit(1);
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

static void sleep_until(double when) {
    struct timespec t;
    t.tv_sec = (time_t)when;
    t.tv_nsec = (long)((when - (double)t.tv_sec) * 1e9);
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, NULL) == EINTR) {}
}

struct capture {
    uint8_t *data;          /* every frame to send, back to back */
    size_t size, room;
    size_t *offset;         /* of frame k in data */
    uint32_t *length;
    size_t count, slots;
    uint64_t too_large, too_short, truncated;
};

static void load(struct capture *c, const char *path, unsigned max_frame) {
    char err[PCAP_ERRBUF_SIZE];
    struct pcap_pkthdr *h;
    const u_char *bytes;
    int r;
    pcap_t *p = pcap_open_offline(path, err);
    if (!p)
        die("cannot read the capture", err);
    if (pcap_datalink(p) != DLT_EN10MB)
        die("only Ethernet captures can be replayed", path);
    memset(c, 0, sizeof *c);
    while ((r = pcap_next_ex(p, &h, &bytes)) == 1) {
        if (h->caplen < 14) { c->too_short++; continue; }
        if (h->caplen > max_frame) { c->too_large++; continue; }
        if (h->caplen < h->len) c->truncated++;
        if (c->count == c->slots) {
            c->slots = c->slots ? 2 * c->slots : 65536;
            c->offset = realloc(c->offset, c->slots * sizeof *c->offset);
            c->length = realloc(c->length, c->slots * sizeof *c->length);
            if (!c->offset || !c->length) die("out of memory", NULL);
        }
        if (c->size + h->caplen > c->room) {
            c->room = c->room ? 2 * c->room : (64u << 20);
            while (c->room < c->size + h->caplen) c->room *= 2;
            c->data = realloc(c->data, c->room);
            if (!c->data) die("out of memory", NULL);
        }
        memcpy(c->data + c->size, bytes, h->caplen);
        c->offset[c->count] = c->size;
        c->length[c->count] = h->caplen;
        c->size += h->caplen;
        c->count++;
    }
    if (r == -1)
        die("cannot read the capture", pcap_geterr(p));
    pcap_close(p);
}

static int open_socket(const char *iface, unsigned *mtu) {
    struct sockaddr_ll sll;
    struct ifreq ifr;
    int one = 1, sndbuf = 8 << 20;
    int fd = socket(AF_PACKET, SOCK_RAW, 0);     /* protocol 0: it receives nothing */
    if (fd < 0)
        die("cannot open a packet socket (run as root or with CAP_NET_RAW)", strerror(errno));
    memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, iface, IFNAMSIZ - 1);
    if (ioctl(fd, SIOCGIFMTU, &ifr) != 0)
        die("no such interface", iface);
    *mtu = (unsigned)ifr.ifr_mtu;
    memset(&sll, 0, sizeof sll);
    sll.sll_family = AF_PACKET;
    sll.sll_ifindex = (int)if_nametoindex(iface);
    if (bind(fd, (struct sockaddr *)&sll, sizeof sll) != 0)
        die("cannot bind to the interface", strerror(errno));
    setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    return fd;
}

int main(int argc, char **argv) {
    const char *iface = NULL;
    double rate = 0;
    long loops = 1, cpu = -1, batch = 256;
    int opt;
    while ((opt = getopt(argc, argv, "i:r:l:c:b:")) != -1) {
        switch (opt) {
        case 'i': iface = optarg; break;
        case 'r': rate = atof(optarg); break;
        case 'l': loops = atol(optarg); break;
        case 'c': cpu = atol(optarg); break;
        case 'b': batch = atol(optarg); break;
        default: goto usage;
        }
    }
    if (!iface || optind != argc - 1 || rate < 0 || loops < 1 || batch < 1 || batch > MAX_BATCH)
        goto usage;
    if (cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET((int)cpu, &set);
        if (sched_setaffinity(0, sizeof set, &set) != 0)
            die("cannot pin to the CPU", strerror(errno));
    }

    unsigned mtu;
    int fd = open_socket(iface, &mtu);
    struct capture c;
    load(&c, argv[optind], mtu + 14 + 4);      /* Ethernet header and one VLAN tag */
    if (c.count == 0)
        die("the capture has no frame to send", argv[optind]);

    static struct mmsghdr msgs[MAX_BATCH];
    static struct iovec iov[MAX_BATCH];
    uint64_t total = (uint64_t)c.count * (uint64_t)loops, sent = 0, bytes = 0, retries = 0;
    double t0 = now_s(), t_last = t0;
    while (sent < total) {
        uint64_t want = (uint64_t)batch;
        if (rate > 0) {                          /* frames due by now on the schedule */
            double now = now_s();
            uint64_t due = (uint64_t)((now - t0) * rate) + 1;
            if (due <= sent) {
                sleep_until(t0 + (double)sent / rate);
                continue;
            }
            if (due - sent < want) want = due - sent;
        }
        if (total - sent < want) want = total - sent;
        for (uint64_t k = 0; k < want; k++) {
            size_t f = (size_t)((sent + k) % c.count);
            iov[k].iov_base = c.data + c.offset[f];
            iov[k].iov_len = c.length[f];
            memset(&msgs[k], 0, sizeof msgs[k]);
            msgs[k].msg_hdr.msg_iov = &iov[k];
            msgs[k].msg_hdr.msg_iovlen = 1;
        }
        int n = sendmmsg(fd, msgs, (unsigned)want, 0);
        if (n < 0) {
            if (errno == ENOBUFS || errno == EAGAIN || errno == EINTR) {   /* queue full: wait */
                struct pollfd p = { fd, POLLOUT, 0 };
                poll(&p, 1, 1);
                retries++;
                continue;
            }
            die("send failed", strerror(errno));
        }
        for (int k = 0; k < n; k++)
            bytes += iov[k].iov_len;
        sent += (uint64_t)n;
        t_last = now_s();
    }
    double seconds = t_last - t0;
    printf("{\"packets\": %llu, \"bytes\": %llu, \"seconds\": %.6f, \"pps\": %.1f, "
           "\"bits_per_second\": %.1f, \"loops\": %ld, \"frames_in_capture\": %zu, "
           "\"not_sent\": {\"larger_than_mtu\": %llu, \"shorter_than_ethernet\": %llu}, "
           "\"truncated_in_capture\": %llu, \"send_retries\": %llu}\n",
           (unsigned long long)sent, (unsigned long long)bytes, seconds,
           seconds > 0 ? (double)sent / seconds : 0.0,
           seconds > 0 ? (double)bytes * 8 / seconds : 0.0, loops, c.count,
           (unsigned long long)c.too_large * (unsigned long long)loops,
           (unsigned long long)c.too_short * (unsigned long long)loops,
           (unsigned long long)c.truncated * (unsigned long long)loops,
           (unsigned long long)retries);
    close(fd);
    return 0;

usage:
    fprintf(stderr, "usage: pcap-replay -i IFACE [-r PPS (0: highest)] [-l LOOPS] [-c CPU] "
                    "[-b BATCH (1-%d)] FILE\n", MAX_BATCH);
    return 2;
}
