/* Byte order: big- and little-endian integers read from and written to unaligned memory, for
 * every extension (packet headers, capture files, TLV). memcpy compiles to one load or store and
 * the swap to one bswap (or movbe), so these cost what a hand-written shift sequence costs. */
#ifndef FLOWPROBE_HTON_H
#define FLOWPROBE_HTON_H

#include <stdint.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define FP_BIG16(x) (x)
#define FP_BIG32(x) (x)
#define FP_BIG64(x) (x)
#define FP_LITTLE16(x) __builtin_bswap16(x)
#define FP_LITTLE32(x) __builtin_bswap32(x)
#define FP_LITTLE64(x) __builtin_bswap64(x)
#else
#define FP_BIG16(x) __builtin_bswap16(x)
#define FP_BIG32(x) __builtin_bswap32(x)
#define FP_BIG64(x) __builtin_bswap64(x)
#define FP_LITTLE16(x) (x)
#define FP_LITTLE32(x) (x)
#define FP_LITTLE64(x) (x)
#endif

static inline uint16_t load_be16(const void *p) { uint16_t v; memcpy(&v, p, 2); return FP_BIG16(v); }
static inline uint32_t load_be32(const void *p) { uint32_t v; memcpy(&v, p, 4); return FP_BIG32(v); }
static inline uint64_t load_be64(const void *p) { uint64_t v; memcpy(&v, p, 8); return FP_BIG64(v); }
static inline uint16_t load_le16(const void *p) { uint16_t v; memcpy(&v, p, 2); return FP_LITTLE16(v); }
static inline uint32_t load_le32(const void *p) { uint32_t v; memcpy(&v, p, 4); return FP_LITTLE32(v); }
static inline uint64_t load_le64(const void *p) { uint64_t v; memcpy(&v, p, 8); return FP_LITTLE64(v); }

/* n (0..8) big-endian bytes as an unsigned integer */
static inline uint64_t load_be(const void *p, int n)
{
    const uint8_t *q = (const uint8_t *)p;
    uint64_t v = 0;
    for (int k = 0; k < n; k++)
        v = (v << 8) | q[k];
    return v;
}

static inline void store_be16(void *p, uint16_t v) { v = FP_BIG16(v); memcpy(p, &v, 2); }
static inline void store_be32(void *p, uint32_t v) { v = FP_BIG32(v); memcpy(p, &v, 4); }
static inline void store_be64(void *p, uint64_t v) { v = FP_BIG64(v); memcpy(p, &v, 8); }

#endif
