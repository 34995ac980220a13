/* SIMD byte searches for the DLP scanner (plano_fast/wire/_dlp.pyx); builds on _simd.h
 * (SSE2 on x86-64, else a byte loop).  Each returns the first matching byte in [p, end), or end.
 */
#ifndef PLANO_FAST_WIRE_DLP_SIMD_H
#define PLANO_FAST_WIRE_DLP_SIMD_H

#include "_simd.h"

/* The bytes that may start or anchor a detector's match: a digit, ':', '@', '(', '+', '-',
 * '_', 'z' (AIza), 'K' and 'S' (AKIA, ASIA), 'J' (eyJ). */
#define PF_DLP_TRIGGER(c) (((c) >= '0' && (c) <= ':') || (c) == '@' || (c) == '(' || (c) == '+' || (c) == '-' \
                           || (c) == '_' || (c) == 'z' || (c) == 'K' || (c) == 'S' || (c) == 'J')

#ifdef PF_SSE2
PF_ALWAYS_INLINE __m128i pf_dlp_triggers(__m128i x) {
    /* '0'..':' by a signed range test (bytes >= 0x80 are negative: never in it) */
    __m128i m = _mm_and_si128(_mm_cmpgt_epi8(x, _mm_set1_epi8('0' - 1)), _mm_cmplt_epi8(x, _mm_set1_epi8(':' + 1)));
    m = _mm_or_si128(m, _mm_cmpeq_epi8(x, _mm_set1_epi8('@')));
    m = _mm_or_si128(m, _mm_cmpeq_epi8(x, _mm_set1_epi8('(')));
    m = _mm_or_si128(m, _mm_cmpeq_epi8(x, _mm_set1_epi8('+')));
    m = _mm_or_si128(m, _mm_cmpeq_epi8(x, _mm_set1_epi8('-')));
    m = _mm_or_si128(m, _mm_cmpeq_epi8(x, _mm_set1_epi8('_')));
    m = _mm_or_si128(m, _mm_cmpeq_epi8(x, _mm_set1_epi8('z')));
    m = _mm_or_si128(m, _mm_cmpeq_epi8(x, _mm_set1_epi8('K')));
    m = _mm_or_si128(m, _mm_cmpeq_epi8(x, _mm_set1_epi8('S')));
    return _mm_or_si128(m, _mm_cmpeq_epi8(x, _mm_set1_epi8('J')));
}
#endif

static inline const unsigned char *pf_dlp_next(const unsigned char *p, const unsigned char *end) {
#ifdef PF_SSE2
    while (end - p >= 16) {
        unsigned int m = (unsigned int)_mm_movemask_epi8(pf_dlp_triggers(_mm_loadu_si128((const __m128i *)p)));
        if (m) return p + pf_ctz(m);
        p += 16;
    }
#endif
    while (p < end) {
        if (PF_DLP_TRIGGER(*p)) return p;
        ++p;
    }
    return p;
}

/* Whether [p, end) holds a byte >= 0x80. */
static inline int pf_any_high(const unsigned char *p, const unsigned char *end) {
#ifdef PF_SSE2
    while (end - p >= 16) {
        if (_mm_movemask_epi8(_mm_loadu_si128((const __m128i *)p))) return 1;
        p += 16;
    }
#endif
    while (p < end) {
        if (*p >= 0x80) return 1;
        ++p;
    }
    return 0;
}

#endif /* PLANO_FAST_WIRE_DLP_SIMD_H */
