/* A response header line's name and value ends in one SIMD pass (_head.pyx, scan_response).
 *
 * ``pf_name_run`` and ``pf_value_run`` (_simd.h) scan a line's name, then its value, each
 * from its own start: the block where the name ends is loaded twice, and every value costs
 * a call and a loop of its own.  A provider's values are mostly short ("DYNAMIC", "412",
 * "nosniff": 26 lines, ~50 bytes each): here the block the name ends in also gives the
 * value's end when it is in that block, and the value scan otherwise goes on from the next
 * block.  Same answers as those two (tests/test_response_fast_path.py checks every byte at
 * every offset of a name and of a value).
 */
#ifndef PLANO_FAST_WIRE_HEAD_SIMD_H
#define PLANO_FAST_WIRE_HEAD_SIMD_H

#include "_simd.h"

/* The first byte in [p, end) outside [A-Za-z0-9-], or the point where fewer than 16 bytes
 * remain (``pf_name_run``'s answer).  When that byte is a ':' found in a block, *value_stop
 * is ``pf_value_run``'s answer for the bytes after it: the first control byte other than
 * HTAB, or DEL, or the point where fewer than 16 bytes remain; otherwise it is NULL. */
static inline const unsigned char *pf_header_line(const unsigned char *p, const unsigned char *end,
                                                  const unsigned char **value_stop) {
    *value_stop = NULL;
#ifdef PF_SSE2
    const __m128i case_bit = _mm_set1_epi8(0x20), a = _mm_set1_epi8('a'), z25 = _mm_set1_epi8(25);
    const __m128i zero = _mm_set1_epi8('0'), nine = _mm_set1_epi8(9), dash = _mm_set1_epi8('-');
    while (end - p >= 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)p);
        __m128i la = _mm_sub_epi8(_mm_or_si128(x, case_bit), a);
        __m128i d = _mm_sub_epi8(x, zero);
        __m128i ok = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(_mm_min_epu8(la, z25), la),
                                               _mm_cmpeq_epi8(_mm_min_epu8(d, nine), d)),
                                  _mm_cmpeq_epi8(x, dash));
        unsigned int m = (~(unsigned int)_mm_movemask_epi8(ok)) & 0xFFFFu;
        if (m) {
            int k = pf_ctz(m);
            if (p[k] == ':') {
                /* the value's stops in this block, after the colon */
                const __m128i c1f = _mm_set1_epi8(0x1F), tab = _mm_set1_epi8(9), del = _mm_set1_epi8(0x7F);
                __m128i ctl = _mm_andnot_si128(_mm_cmpeq_epi8(x, tab), _mm_cmpeq_epi8(_mm_min_epu8(x, c1f), x));
                unsigned int v = (unsigned int)_mm_movemask_epi8(_mm_or_si128(ctl, _mm_cmpeq_epi8(x, del)));
                v &= 0xFFFFu << (k + 1);
                *value_stop = v ? p + pf_ctz(v) : pf_value_run(p + 16, end);
            }
            return p + k;
        }
        p += 16;
    }
#endif
    return p;
}

#endif /* PLANO_FAST_WIRE_HEAD_SIMD_H */
