/* nDPI application protocol detection for the fast path (engine/_fastpath.pyx).
 *
 * One detection module per flow table, every protocol enabled, and a pool of nDPI flow states
 * allocated once (calloc: pages are backed only once a state is used). A flow takes a state
 * when it is created and gives it back when detection is over, so memory follows the flows
 * whose detection is open, not the table. The verdict is kept normalised: master 0 for a
 * single protocol, so that "M.A" / "A" (ndpi_protocol2id's form, what ntopng reads) follows
 * from the two ids alone.
 *
 * Built with HAVE_NDPI (setup.py defines it where libndpi's headers are); without it every
 * function answers "unavailable" and the table runs without L7.
 */
#ifndef FLOWPROBE_L7_H
#define FLOWPROBE_L7_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define L7_NO_STATE 0xFFFFFFFFu

typedef struct {
    uint16_t master;      /* 0, or the master protocol of a two-layer verdict (TLS of TLS.Google) */
    uint16_t app;
    uint8_t confidence;   /* ndpi_confidence_t */
    uint8_t category;     /* ndpi_protocol_category_t */
} l7_verdict_t;

#ifdef HAVE_NDPI
#include <ndpi_api.h>

typedef struct {
    struct ndpi_detection_module_struct *mod;
    char *states;         /* n flow states, size bytes each */
    size_t size;
    uint32_t *free;       /* stack of states given back */
    uint32_t nfree;
    uint32_t next;        /* states from here on were never used */
    uint32_t n;
} l7_t;

static inline int l7_available(void) { return 1; }

static inline const char *l7_version(void) { return ndpi_revision(); }

static struct ndpi_detection_module_struct *l7_module(void) {
    NDPI_PROTOCOL_BITMASK all;
    struct ndpi_detection_module_struct *m = ndpi_init_detection_module(ndpi_no_prefs);
    if (m == NULL)
        return NULL;
    NDPI_BITMASK_SET_ALL(all);
    ndpi_set_protocol_detection_bitmask2(m, &all);
    ndpi_finalize_initialization(m);
    return m;
}

static l7_t *l7_new(uint32_t n) {
    l7_t *l = (l7_t *)calloc(1, sizeof(l7_t));
    if (l == NULL)
        return NULL;
    l->size = ndpi_detection_get_sizeof_ndpi_flow_struct();
    l->size = (l->size + 63) & ~(size_t)63;          /* each state on its own cache lines */
    l->n = n;
    l->states = (char *)calloc(n ? n : 1, l->size);
    l->free = (uint32_t *)malloc((n ? n : 1) * sizeof(uint32_t));
    l->mod = l7_module();
    if (l->states == NULL || l->free == NULL || l->mod == NULL) {
        if (l->mod != NULL)
            ndpi_exit_detection_module(l->mod);
        free(l->states);
        free(l->free);
        free(l);
        return NULL;
    }
    return l;
}

static inline struct ndpi_flow_struct *l7_state(l7_t *l, uint32_t s) {
    return (struct ndpi_flow_struct *)(l->states + (size_t)s * l->size);
}

static void l7_free(l7_t *l) {
    uint32_t s;
    if (l == NULL)
        return;
    /* a state given back is zeroed, so freeing every state ever used is safe */
    for (s = 0; s < l->next; s++)
        ndpi_free_flow_data(l7_state(l, s));
    ndpi_exit_detection_module(l->mod);
    free(l->states);
    free(l->free);
    free(l);
}

/* A zeroed state for a new flow, or L7_NO_STATE when the pool is empty. */
static inline uint32_t l7_take(l7_t *l) {
    if (l->nfree)
        return l->free[--l->nfree];
    if (l->next < l->n)
        return l->next++;
    return L7_NO_STATE;
}

static inline void l7_release(l7_t *l, uint32_t s) {
    struct ndpi_flow_struct *f = l7_state(l, s);
    ndpi_free_flow_data(f);
    memset(f, 0, l->size);
    l->free[l->nfree++] = s;
}

static inline void l7_set(l7_verdict_t *v, ndpi_protocol p, const struct ndpi_flow_struct *f) {
    uint16_t m = p.master_protocol, a = p.app_protocol;
    if (m == a)
        m = 0;
    if (a == NDPI_PROTOCOL_UNKNOWN) {     /* only a master: that is the protocol */
        a = m;
        m = 0;
    }
    v->master = m;
    v->app = a;
    v->confidence = (uint8_t)f->confidence;
    v->category = (uint8_t)p.category;
}

/* One packet (from its L3 header, len captured bytes) of a flow whose detection is open.
 * Returns 1 when detection is over (the verdict is final), 0 while nDPI wants more. As
 * ndpiReader: over once nDPI names an application and can extract nothing more from later
 * packets, or once ``enough`` packets were seen; an unknown application is then given up
 * (nDPI guesses from ports and addresses). */
static inline int l7_packet(l7_t *l, uint32_t s, const uint8_t *l3, uint32_t len, uint64_t ms,
                            int enough, l7_verdict_t *v) {
    struct ndpi_flow_struct *f = l7_state(l, s);
    u_int8_t guessed;
    ndpi_protocol p = ndpi_detection_process_packet(l->mod, f, l3,
                                                    (unsigned short)(len > 0xFFFF ? 0xFFFF : len),
                                                    ms);
    if (!enough && (p.app_protocol == NDPI_PROTOCOL_UNKNOWN ||
                    ndpi_extra_dissection_possible(l->mod, f))) {
        l7_set(v, p, f);
        return 0;
    }
    if (p.app_protocol == NDPI_PROTOCOL_UNKNOWN)
        p = ndpi_detection_giveup(l->mod, f, 1, &guessed);
    l7_set(v, p, f);
    return 1;
}

/* The verdict of a flow that ends while its detection is open. */
static inline void l7_giveup(l7_t *l, uint32_t s, l7_verdict_t *v) {
    struct ndpi_flow_struct *f = l7_state(l, s);
    u_int8_t guessed;
    ndpi_protocol p = ndpi_detection_giveup(l->mod, f, 1, &guessed);
    l7_set(v, p, f);
}

/* nDPI's protocol names by id, for the encoders: count() names, name(i) each. */
static inline uint32_t l7_name_count(l7_t *l) { return ndpi_get_num_supported_protocols(l->mod); }
static inline const char *l7_name(l7_t *l, uint16_t id) { return ndpi_get_proto_name(l->mod, id); }

#else   /* built without nDPI */

typedef struct { int unused; } l7_t;

static inline int l7_available(void) { return 0; }
static inline const char *l7_version(void) { return ""; }
static inline l7_t *l7_new(uint32_t n) { (void)n; return NULL; }
static inline void l7_free(l7_t *l) { (void)l; }
static inline uint32_t l7_take(l7_t *l) { (void)l; return L7_NO_STATE; }
static inline void l7_release(l7_t *l, uint32_t s) { (void)l; (void)s; }
static inline int l7_packet(l7_t *l, uint32_t s, const uint8_t *l3, uint32_t len, uint64_t ms,
                            int enough, l7_verdict_t *v) {
    (void)l; (void)s; (void)l3; (void)len; (void)ms; (void)enough; (void)v;
    return 1;
}
static inline void l7_giveup(l7_t *l, uint32_t s, l7_verdict_t *v) { (void)l; (void)s; (void)v; }
static inline uint32_t l7_name_count(l7_t *l) { (void)l; return 0; }
static inline const char *l7_name(l7_t *l, uint16_t id) { (void)l; (void)id; return ""; }

#endif
#endif
