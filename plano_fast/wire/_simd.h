/* SIMD byte searches for the compiled scanner (plano_fast/wire/_scan.pyx, which declares
 * them in a `cdef extern from "_simd.h"` block).
 *
 * SSE2 on x86-64 (always present there), 16 or 32 bytes per step; SWAR (8 bytes in a
 * uint64) elsewhere; then a byte loop for the tail.  Every function returns the first
 * matching byte in [p, end), or end.
 */
#ifndef PLANO_FAST_WIRE_SIMD_H
#define PLANO_FAST_WIRE_SIMD_H

#include <string.h>
#include <stdint.h>
#if defined(__SSE2__) || defined(_M_X64) || defined(_M_AMD64)
#include <emmintrin.h>
#define PF_SSE2 1
#endif
#if defined(_MSC_VER)
#include <intrin.h>
static __inline int pf_ctz(unsigned int x) { unsigned long i; _BitScanForward(&i, x); return (int)i; }
#define PF_ALWAYS_INLINE static __forceinline
#else
#define pf_ctz(x) __builtin_ctz(x)
#define PF_ALWAYS_INLINE static inline __attribute__((always_inline))
#endif

#ifdef PF_SSE2
/* Lanes of x that are '"', '\\' or a control byte (< 0x20); with stop_high, bytes >= 0x80
 * too: a signed compare with 0x20 catches both.  Without it, x ^ 0x80 < 0xA0 (signed)
 * holds exactly for x < 0x20. */
PF_ALWAYS_INLINE __m128i pf_string_stops(__m128i x, const int stop_high) {
    const __m128i q = _mm_set1_epi8('"');
    const __m128i b = _mm_set1_epi8('\\');
    const __m128i low = stop_high
        ? _mm_cmplt_epi8(x, _mm_set1_epi8(0x20))
        : _mm_cmplt_epi8(_mm_xor_si128(x, _mm_set1_epi8((char)0x80)), _mm_set1_epi8((char)0xA0));
    return _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(x, q), _mm_cmpeq_epi8(x, b)), low);
}
#endif

/* First byte in [p, end) that ends a plain run of string content: '"', '\\', < 0x20, and
 * with stop_high (a compile-time constant at every call) also >= 0x80. */
PF_ALWAYS_INLINE const unsigned char *pf_scan_string(const unsigned char *p, const unsigned char *end,
                                                     const int stop_high) {
#ifdef PF_SSE2
    /* one block first: most runs (keys, short values) end within 16 bytes */
    if (end - p >= 16) {
        unsigned int m = (unsigned int)_mm_movemask_epi8(
            pf_string_stops(_mm_loadu_si128((const __m128i *)p), stop_high));
        if (m) return p + pf_ctz(m);
        p += 16;
    }
    while (end - p >= 32) {
        __m128i mx = pf_string_stops(_mm_loadu_si128((const __m128i *)p), stop_high);
        __m128i my = pf_string_stops(_mm_loadu_si128((const __m128i *)(p + 16)), stop_high);
        unsigned int m = (unsigned int)_mm_movemask_epi8(mx) | ((unsigned int)_mm_movemask_epi8(my) << 16);
        if (m) return p + pf_ctz(m);
        p += 32;
    }
    if (end - p >= 16) {
        unsigned int m = (unsigned int)_mm_movemask_epi8(
            pf_string_stops(_mm_loadu_si128((const __m128i *)p), stop_high));
        if (m) return p + pf_ctz(m);
        p += 16;
    }
#else
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    while (end - p >= 8) {
        uint64_t w, hq, hb, lt;
        memcpy(&w, p, 8);
        hq = w ^ (ones * 0x22); hq = (hq - ones) & ~hq;
        hb = w ^ (ones * 0x5C); hb = (hb - ones) & ~hb;
        lt = (w - ones * 0x20) & ~w;
        if ((hq | hb | lt | (stop_high ? w : 0)) & highs) break;
        p += 8;
    }
#endif
    while (p < end) {
        unsigned char c = *p;
        if (stop_high ? (c == '"' || c == '\\' || c < 0x20 || c >= 0x80) : (c == '"' || c == '\\' || c < 0x20))
            return p;
        ++p;
    }
    return p;
}

/* First byte in [p, end) that is '"', '\\', < 0x20 or >= 0x80 (or end). */
static inline const unsigned char *pf_scan_plain(const unsigned char *p, const unsigned char *end) {
    return pf_scan_string(p, end, 1);
}

/* First byte in [p, end) that is '"', '\\' or < 0x20 (or end): bytes >= 0x80 pass. */
static inline const unsigned char *pf_scan_text(const unsigned char *p, const unsigned char *end) {
    return pf_scan_string(p, end, 0);
}

/* First '\n' or '\r' in [p, end) (or end). */
static inline const unsigned char *pf_find_eol(const unsigned char *p, const unsigned char *end) {
#ifdef PF_SSE2
    const __m128i n = _mm_set1_epi8('\n');
    const __m128i r = _mm_set1_epi8('\r');
    while (end - p >= 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)p);
        unsigned int m = (unsigned int)_mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi8(x, n), _mm_cmpeq_epi8(x, r)));
        if (m) return p + pf_ctz(m);
        p += 16;
    }
#endif
    while (p < end) {
        if (*p == '\n' || *p == '\r') return p;
        ++p;
    }
    return p;
}

/* Header heads (_header_chars.pxi), 16 bytes at a time where SSE2 is there; without it
 * (or for the last < 16 bytes) ``p`` comes back as given and the callers' loops go on. */

/* The first byte in [p, end) that cannot be in a field value -- a control byte other
 * than HTAB (< 0x20), or DEL -- or the point where fewer than 16 bytes remain. */
static inline const unsigned char *pf_value_run(const unsigned char *p, const unsigned char *end) {
#ifdef PF_SSE2
    const __m128i c1f = _mm_set1_epi8(0x1F), tab = _mm_set1_epi8(9), del = _mm_set1_epi8(0x7F);
    while (end - p >= 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)p);
        /* x <= 0x1F unsigned: min(x, 0x1F) == x */
        __m128i ctl = _mm_andnot_si128(_mm_cmpeq_epi8(x, tab), _mm_cmpeq_epi8(_mm_min_epu8(x, c1f), x));
        unsigned int m = (unsigned int)_mm_movemask_epi8(_mm_or_si128(ctl, _mm_cmpeq_epi8(x, del)));
        if (m) return p + pf_ctz(m);
        p += 16;
    }
#endif
    return p;
}

/* The first byte in [p, end) outside [A-Za-z0-9-] (the tchars header names are made of,
 * almost always), or the point where fewer than 16 bytes remain: the caller's tchar loop
 * goes on from there (a subset: it stops no later than that loop would). */
static inline const unsigned char *pf_name_run(const unsigned char *p, const unsigned char *end) {
#ifdef PF_SSE2
    const __m128i case_bit = _mm_set1_epi8(0x20), a = _mm_set1_epi8('a'), z25 = _mm_set1_epi8(25);
    const __m128i zero = _mm_set1_epi8('0'), nine = _mm_set1_epi8(9), dash = _mm_set1_epi8('-');
    while (end - p >= 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)p);
        /* x | 0x20 is in 'a'..'z' exactly for x in 'A'..'Z' or 'a'..'z' */
        __m128i la = _mm_sub_epi8(_mm_or_si128(x, case_bit), a);
        __m128i d = _mm_sub_epi8(x, zero);
        __m128i ok = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(_mm_min_epu8(la, z25), la),
                                               _mm_cmpeq_epi8(_mm_min_epu8(d, nine), d)),
                                  _mm_cmpeq_epi8(x, dash));
        unsigned int m = (~(unsigned int)_mm_movemask_epi8(ok)) & 0xFFFFu;
        if (m) return p + pf_ctz(m);
        p += 16;
    }
#endif
    return p;
}

/* a[0:m] == lit[0:m] for a constant m and a string literal lit (every call site): inlined
 * to a few word compares with the literal folded into immediates, where memcmp was a
 * library call per key.  Only a[0:m] is read (overlapping words for the tail). */
PF_ALWAYS_INLINE int pf_eq_lit(const unsigned char *a, const char *lit, const size_t m) {
    uint64_t x, y;
    uint32_t x4, y4;
    uint16_t x2, y2;
    size_t i;
    if (m >= 8) {
        for (i = 0; i + 8 <= m; i += 8) {
            memcpy(&x, a + i, 8);
            memcpy(&y, lit + i, 8);
            if (x != y) return 0;
        }
        if (i == m) return 1;
        memcpy(&x, a + m - 8, 8);
        memcpy(&y, lit + m - 8, 8);
        return x == y;
    }
    if (m >= 4) {
        memcpy(&x4, a, 4);
        memcpy(&y4, lit, 4);
        if (x4 != y4) return 0;
        memcpy(&x4, a + m - 4, 4);
        memcpy(&y4, lit + m - 4, 4);
        return x4 == y4;
    }
    if (m >= 2) {
        memcpy(&x2, a, 2);
        memcpy(&y2, lit, 2);
        if (x2 != y2) return 0;
        return a[m - 1] == (unsigned char)lit[m - 1];
    }
    return m == 0 || a[0] == (unsigned char)lit[0];
}

#endif /* PLANO_FAST_WIRE_SIMD_H */
