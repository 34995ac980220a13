# The DLP floor's detectors, compiled (the twin of _dlp_py.py; the shared patterns and
# validators are in _dlp_shared.py).
#
# scan_text(text, mask) -> [(detector_id, start, end), ...], exactly what _dlp_py.scan_text
# returns: every validated match of pattern.finditer over the whole text, per detector.  It
# gets there without running a pattern over the text: one byte pass finds the positions where
# a match can START (a digit run for the number detectors, '@' for e-mail, ':' for IPv6, a key
# prefix for secrets), each checked against a cheap necessary condition (an SSN's ddd-dd-dddd
# shape, 13 digits for a card, 8 for a phone number, ...), and the pattern is tried (re
# match) only there.  Every position where a match could start is a candidate, so finditer's
# leftmost, non-overlapping matches are found: after a match, candidates before its end are
# skipped, as finditer would.  Luhn and mod-97 run in C.
#
# The text is read as bytes: ASCII as itself, each non-ASCII code point as one 0x80 byte (a
# separator for every pattern: they are ASCII-only), so a byte offset is a character offset.
#
# scan_body(body, fmt, mask, every) reads a request body (UTF-8 JSON bytes) without decoding
# it: the message-text string values of client format ``fmt`` (the same slots as
# plano_fast.guardrails.text_slots) are scanned in place (a string with escapes or non-ASCII
# through a decoded byte view), everything else is skipped.  It returns
# [(start, end, plain, findings), ...] for each text string with findings (every one when
# ``every``: the caller runs operator regexes on them), where body[start:end] is the string's
# content between its quotes and ``plain`` says it has no escape and no non-ASCII byte; or
# None when the body must be left to json.loads (malformed, nested deeper than MAX_DEPTH, a
# repeated or escaped key where the slots are chosen, NaN/Infinity).

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_4BYTE_KIND, PyUnicode_DATA, PyUnicode_GET_LENGTH, PyUnicode_KIND, PyUnicode_READ
from libc.stdlib cimport free, realloc

cdef extern from "_simd.h":
    const unsigned char *pf_scan_string(const unsigned char *p, const unsigned char *end, int stop_high) nogil

cdef extern from "_dlp_simd.h":
    const unsigned char *pf_dlp_next(const unsigned char *p, const unsigned char *end) nogil
    bint pf_any_high(const unsigned char *p, const unsigned char *end) nogil

from plano_fast.wire._dlp_shared import BYTE_PATTERNS, NAMES, ip_ok

DEF N_DET = 7
DEF D_EMAIL = 0
DEF D_PHONE = 1
DEF D_SSN = 2
DEF D_CARD = 3
DEF D_IBAN = 4
DEF D_IP = 5
DEF D_SECRETS = 6

MAX_DEPTH = 96
FORMATS = {"openai": 0, "anthropic": 1, "responses": 2, "gemini": 3, "embeddings": 4}

# byte classes
DEF K_DIGIT = 1
DEF K_WORD = 2     # [A-Za-z0-9_]
DEF K_HEX = 4
DEF K_UPPER = 8
DEF K_LOCAL = 16   # an e-mail local part: [A-Za-z0-9._%+-]
DEF K_PHONE = 32   # what a phone number is made of: [0-9()+ .-]
DEF K_WS = 64
DEF K_KEY = 128    # what keys are made of: [A-Za-z0-9_-]
DEF K_DOMAIN = 256 # a domain label: [A-Za-z0-9-]
DEF K_ALNUM = 512  # [A-Za-z0-9]

cdef unsigned short KIND[256]
cdef unsigned char TRIG[256]   # byte -> mask of the detectors it may start (or anchor) a match of

cdef _init_tables():
    cdef int c
    for c in range(256):
        KIND[c] = 0
        TRIG[c] = 0
    for c in range(48, 58):
        KIND[c] |= K_DIGIT | K_WORD | K_HEX | K_LOCAL | K_PHONE
        TRIG[c] |= (1 << D_PHONE) | (1 << D_SSN) | (1 << D_CARD) | (1 << D_IBAN) | (1 << D_IP)
    for c in range(65, 91):
        KIND[c] |= K_WORD | K_UPPER | K_LOCAL
        KIND[c + 32] |= K_WORD | K_LOCAL
    for c in b"abcdefABCDEF":
        KIND[c] |= K_HEX
    KIND[95] |= K_WORD | K_LOCAL  # _
    for c in b".%+-":
        KIND[c] |= K_LOCAL
    for c in b"()+ .-":
        KIND[c] |= K_PHONE
    for c in b" \t\n\r":
        KIND[c] |= K_WS
    for c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789":
        KIND[c] |= K_KEY | K_DOMAIN | K_ALNUM
    KIND[95] |= K_KEY  # _
    KIND[45] |= K_KEY | K_DOMAIN  # -
    TRIG[64] |= 1 << D_EMAIL  # @
    TRIG[58] |= 1 << D_IP  # :
    TRIG[43] |= 1 << D_PHONE  # +
    TRIG[40] |= 1 << D_PHONE  # (
    for c in b"-zKS_J":  # sk- xox?- -----BEGIN, AIza, AKIA ASIA, gh?_, eyJ
        TRIG[c] |= 1 << D_SECRETS

_init_tables()


cdef inline Py_ssize_t run_of(const unsigned char *b, Py_ssize_t n, Py_ssize_t i, unsigned short kind,
                              Py_ssize_t limit) noexcept nogil:
    """How many bytes of ``kind`` from i on (at most ``limit``)."""
    cdef Py_ssize_t j = i
    cdef Py_ssize_t end = i + limit if i + limit < n else n
    while j < end and KIND[b[j]] & kind:
        j += 1
    return j - i


cdef inline bint is_digit(unsigned char c) noexcept nogil:
    return KIND[c] & K_DIGIT

cdef inline bint is_word(unsigned char c) noexcept nogil:
    return KIND[c] & K_WORD


# ------------------------------------------------------------------------------------------
# candidate start positions, per detector, sorted and distinct

cdef struct Cands:
    Py_ssize_t *pos[N_DET]
    Py_ssize_t n[N_DET]
    Py_ssize_t cap[N_DET]


cdef int add(Cands *c, int d, Py_ssize_t p) except -1:
    cdef Py_ssize_t k, n = c.n[d]
    cdef Py_ssize_t *grown
    if n and c.pos[d][n - 1] >= p:  # out of order (a prefix found after a later start): rare
        k = n
        while k and c.pos[d][k - 1] > p:
            k -= 1
        if k and c.pos[d][k - 1] == p:
            return 0
    else:
        k = n
    if n == c.cap[d]:
        grown = <Py_ssize_t *>realloc(c.pos[d], (n * 2 + 16) * sizeof(Py_ssize_t))
        if grown == NULL:
            raise MemoryError()
        c.pos[d] = grown
        c.cap[d] = n * 2 + 16
    while n > k:
        c.pos[d][n] = c.pos[d][n - 1]
        n -= 1
    c.pos[d][k] = p
    c.n[d] += 1
    return 0


cdef void cands_free(Cands *c) noexcept:
    cdef int d
    for d in range(N_DET):
        free(c.pos[d])
        c.pos[d] = NULL
        c.n[d] = 0
        c.cap[d] = 0


cdef inline bint prev_free(const unsigned char *b, Py_ssize_t i) noexcept nogil:
    """No word character before i (what \\b before a word character needs)."""
    return i == 0 or not is_word(b[i - 1])


cdef inline bint digits_at(const unsigned char *b, Py_ssize_t n, Py_ssize_t i, Py_ssize_t k) noexcept nogil:
    cdef Py_ssize_t j
    if i + k > n:
        return False
    for j in range(i, i + k):
        if not is_digit(b[j]):
            return False
    return True


cdef bint ipv4_shape(const unsigned char *b, Py_ssize_t n, Py_ssize_t i) noexcept nogil:
    """(\\d{1,3}\\.){3}\\d at i."""
    cdef int group, k
    for group in range(3):
        k = 0
        while i < n and is_digit(b[i]):
            i += 1
            k += 1
        if k == 0 or k > 3 or i >= n or b[i] != 46:
            return False
        i += 1
    return i < n and is_digit(b[i])


cdef int count_run(const unsigned char *b, Py_ssize_t n, Py_ssize_t i, Py_ssize_t limit, unsigned short kind,
                   const char *seps) noexcept nogil:
    """Characters of ``kind`` from i, one separator from ``seps`` allowed between two of them,
    within ``limit`` bytes: how many."""
    cdef int count = 0
    cdef Py_ssize_t end = i + limit if i + limit < n else n
    while i < end:
        if KIND[b[i]] & kind:
            count += 1
            i += 1
        elif i + 1 < end and (b[i] == seps[0] or b[i] == seps[1]) and KIND[b[i + 1]] & kind:
            i += 1
        else:
            break
    return count


cdef int phone_digits(const unsigned char *b, Py_ssize_t n, Py_ssize_t i) noexcept nogil:
    """Digits among the phone-number characters from i, within the longest phone match (24)."""
    cdef int count = 0
    cdef Py_ssize_t end = i + 24 if i + 24 < n else n
    while i < end and KIND[b[i]] & K_PHONE:
        if is_digit(b[i]):
            count += 1
        i += 1
    return count


cdef inline bint is_upper_alnum(unsigned char c) noexcept nogil:
    return KIND[c] & (K_UPPER | K_DIGIT)


cdef int find_starts(const unsigned char *b, Py_ssize_t n, int mask, Cands *c) except -1:
    cdef Py_ssize_t i, r, j, k
    cdef unsigned char ch, p
    cdef const unsigned char *at = b
    cdef const unsigned char *end = b + n
    while True:
        at = pf_dlp_next(at, end)  # (SIMD: prose is skimmed 16 bytes a step)
        if at >= end:
            break
        i = at - b
        ch = at[0]
        at += 1
        if not (TRIG[ch] & mask):
            continue
        if is_digit(ch):
            # a digit run's first digit (the only one a match can start at): the rest skipped
            while at < end and is_digit(at[0]):
                at += 1
            p = b[i - 1] if i else 32
            if mask & (1 << D_SSN) and not is_word(p) and i + 11 <= n and digits_at(b, n, i, 3) \
                    and b[i + 3] == 45 and digits_at(b, n, i + 4, 2) and b[i + 6] == 45 and digits_at(b, n, i + 7, 4):
                add(c, D_SSN, i)
            if mask & (1 << D_CARD) and p != 45 and count_run(b, n, i, 37, K_DIGIT, " -") >= 13:
                add(c, D_CARD, i)
            if mask & (1 << D_PHONE) and not is_word(p) and p != 43 and phone_digits(b, n, i) >= 8:
                add(c, D_PHONE, i)
            if mask & (1 << D_IP) and not is_word(p) and p != 46 and ipv4_shape(b, n, i):
                add(c, D_IP, i)
            if mask & (1 << D_IBAN) and i >= 2 and KIND[b[i - 2]] & K_UPPER and KIND[p] & K_UPPER \
                    and prev_free(b, i - 2) and i + 1 < n and is_digit(b[i + 1]):
                # [A-Z]{2}\d{2} then (?: ?[A-Z0-9]){11,30}
                j = 0
                r = i + 2
                while r < n and j < 11:
                    if is_upper_alnum(b[r]):
                        j += 1
                        r += 1
                    elif b[r] == 32 and r + 1 < n and is_upper_alnum(b[r + 1]):
                        r += 1
                    else:
                        break
                if j >= 11:
                    add(c, D_IBAN, i - 2)
        elif ch == 64:  # '@': the local part's run starts the match
            # the domain's first label (1-63 of [A-Za-z0-9-]) then '.' and another label or the TLD
            k = run_of(b, n, i + 1, K_DOMAIN, 64)
            if mask & (1 << D_EMAIL) and 1 <= k <= 63 and i + k + 2 < n and b[i + 1 + k] == 46 \
                    and KIND[b[i + 2 + k]] & K_DOMAIN:
                r = i
                while r > 0 and KIND[b[r - 1]] & K_LOCAL and i - r <= 64:
                    r -= 1
                if 1 <= i - r <= 64:
                    add(c, D_EMAIL, r)
        elif ch == 58:  # ':': an IPv6 address starts at most 4 hex digits before its first ':'
            j = i + 1
            k = 0
            while j < n and k < 4 and KIND[b[j]] & K_HEX:
                j += 1
                k += 1
            if j < n and b[j] == 58:
                r = i
                while r > 0 and KIND[b[r - 1]] & K_HEX and i - r <= 4:
                    r -= 1
                if i - r <= 4 and (r == 0 or (not is_word(b[r - 1]) and b[r - 1] != 58)):
                    add(c, D_IP, r)
        elif ch == 43 or ch == 40:  # '+' '(' then a digit: a phone number
            p = b[i - 1] if i else 32
            if i + 1 < n and is_digit(b[i + 1]) and not is_word(p) and p != 43 and phone_digits(b, n, i) >= 8:
                add(c, D_PHONE, i)
        else:
            secret_starts(b, n, i, ch, c)
    return 0


cdef inline bint lit(const unsigned char *b, Py_ssize_t n, Py_ssize_t i, const char *s, Py_ssize_t m) noexcept nogil:
    cdef Py_ssize_t j
    if i < 0 or i + m > n:
        return False
    for j in range(m):
        if b[i + j] != <unsigned char>s[j]:
            return False
    return True


cdef int secret_starts(const unsigned char *b, Py_ssize_t n, Py_ssize_t i, unsigned char ch, Cands *c) except -1:
    # A prefix, then the least run of key characters each alternative needs (everything after
    # "sk-", "ant-api03-" included, is [A-Za-z0-9_-]: 20 of them).
    cdef Py_ssize_t k
    if ch == 45:  # '-'
        # (each independently: "xoxa-----BEGIN ..." may start two matches)
        if lit(b, n, i - 2, b"sk", 2) and prev_free(b, i - 2) and run_of(b, n, i + 1, K_KEY, 20) == 20:
            add(c, D_SECRETS, i - 2)
        if i >= 4 and lit(b, n, i - 4, b"xox", 3) and b[i - 1] in b"abposr" and prev_free(b, i - 4) \
                and run_of(b, n, i + 1, K_DOMAIN, 10) == 10:
            add(c, D_SECRETS, i - 4)
        if lit(b, n, i, b"-----BEGIN ", 11):
            add(c, D_SECRETS, i)
    elif ch == 122:  # 'z' of AIza
        if lit(b, n, i - 2, b"AIza", 4) and prev_free(b, i - 2) and run_of(b, n, i + 2, K_KEY, 35) == 35:
            add(c, D_SECRETS, i - 2)
    elif ch == 75 or ch == 83:  # 'K' of AKIA, 'S' of ASIA
        if i >= 1 and b[i - 1] == 65 and lit(b, n, i + 1, b"IA", 2) and prev_free(b, i - 1) \
                and run_of(b, n, i + 3, K_UPPER | K_DIGIT, 16) == 16:
            add(c, D_SECRETS, i - 1)
    elif ch == 95:  # '_' of gh?_
        if i >= 3 and lit(b, n, i - 3, b"gh", 2) and b[i - 1] in b"pousr" and prev_free(b, i - 3) \
                and run_of(b, n, i + 1, K_ALNUM, 36) == 36:
            add(c, D_SECRETS, i - 3)
    elif ch == 74:  # 'J' of eyJ: eyJ + 8 key characters + '.eyJ'
        if lit(b, n, i - 2, b"ey", 2) and prev_free(b, i - 2):
            k = run_of(b, n, i + 1, K_KEY, n)
            if k >= 8 and lit(b, n, i + 1 + k, b".eyJ", 4):
                add(c, D_SECRETS, i - 2)
    return 0


# ------------------------------------------------------------------------------------------
# validators (as _dlp_shared.card_ok / iban_ok, over the byte view)

cdef bint card_ok(const unsigned char *b, Py_ssize_t s, Py_ssize_t e) noexcept nogil:
    cdef int digits[40]
    cdef int count = 0, total = 0, d, k
    cdef bint mixed = False
    cdef Py_ssize_t i
    for i in range(s, e):
        if is_digit(b[i]):
            if count == 40:
                return False
            digits[count] = b[i] - 48
            count += 1
    if count < 13 or count > 19:
        return False
    for k in range(count):
        if digits[k] != digits[0]:
            mixed = True
        d = digits[count - 1 - k]
        if k & 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return mixed and total % 10 == 0


cdef inline int iban_value(unsigned char c, int rem) noexcept nogil:
    if is_digit(c):
        return (rem * 10 + c - 48) % 97
    if 97 <= c <= 122:
        c -= 32
    return (rem * 100 + c - 55) % 97


cdef bint iban_ok(const unsigned char *b, Py_ssize_t s, Py_ssize_t e) noexcept nogil:
    cdef unsigned char chars[72]
    cdef int count = 0, rem = 0, k
    cdef Py_ssize_t i
    for i in range(s, e):
        if b[i] != 32:
            if count == 72:
                return False
            chars[count] = b[i]
            count += 1
    if count < 15 or count > 34:
        return False
    for k in range(4, count):
        rem = iban_value(chars[k], rem)
    for k in range(4):
        rem = iban_value(chars[k], rem)
    return rem == 1


# ------------------------------------------------------------------------------------------
# matching: each detector's pattern tried where its matches can start

cdef list match_all(object buf, Py_ssize_t base, Py_ssize_t n, int mask):
    """Findings in buf[base:base+n] (offsets from base)."""
    cdef const unsigned char *b = <const unsigned char *>PyBytes_AS_STRING(buf) + base
    cdef Cands c
    cdef int d
    cdef Py_ssize_t k, s, e, after
    cdef list found = []
    for d in range(N_DET):
        c.pos[d] = NULL
        c.n[d] = 0
        c.cap[d] = 0
    try:
        find_starts(b, n, mask, &c)
        for d in range(N_DET):
            if not c.n[d]:
                continue
            pattern = BYTE_PATTERNS[d]
            after = 0
            for k in range(c.n[d]):
                s = c.pos[d][k]
                if s < after:
                    continue
                m = pattern.match(buf, base + s, base + n)
                if m is None:
                    continue
                e = m.end() - base
                after = e
                if d == D_CARD:
                    if not card_ok(b, s, e):
                        continue
                elif d == D_IBAN:
                    if not iban_ok(b, s, e):
                        continue
                elif d == D_IP:
                    if not ip_ok(buf[base + s:base + e].decode("ascii")):
                        continue
                found.append((d, s, e))
    finally:
        cands_free(&c)
    return found


def scan_text(str text, int mask):
    """The built-in detectors of ``mask`` over ``text``: [(detector_id, start, end), ...]."""
    cdef Py_ssize_t i, n = PyUnicode_GET_LENGTH(text)
    cdef int kind
    cdef void *data
    cdef Py_UCS4 ch
    cdef unsigned char *out
    if not mask or n == 0:
        return []
    if text.isascii():
        buf = text.encode("ascii")
    else:
        buf = PyBytes_FromStringAndSize(NULL, n)
        out = <unsigned char *>PyBytes_AS_STRING(buf)
        kind = PyUnicode_KIND(text)
        data = PyUnicode_DATA(text)
        for i in range(n):
            ch = PyUnicode_READ(kind, data, i)
            out[i] = <unsigned char>ch if ch < 128 else 128
    return match_all(buf, 0, n, mask)


# ------------------------------------------------------------------------------------------
# the request body: message-text slots of each client format, found without decoding

DEF F_OPENAI = 0
DEF F_ANTHROPIC = 1
DEF F_RESPONSES = 2
DEF F_GEMINI = 3
DEF F_EMBEDDINGS = 4

# what a value is to the walker
DEF R_SKIP = 0
DEF R_TEXT = 1        # a string here is message text
DEF R_ROOT = 2
DEF R_MESSAGES = 3    # [message]
DEF R_MESSAGE = 4     # {content}
DEF R_CONTENT = 5     # text, or [part]
DEF R_PART = 6        # {text, type, content when type is tool_result}
DEF R_SYSTEM = 7      # text, or [{text}]
DEF R_TEXTOBJ = 8     # {text}
DEF R_INPUT = 9       # Responses input: text, or [item]
DEF R_ITEM = 10       # {content, output}
DEF R_GCONTENTS = 11  # [{parts}]
DEF R_GCONTENT = 12   # {parts}
DEF R_GPARTS = 13     # [{text}]
DEF R_EINPUT = 14     # embeddings input: text, or [text]

DEF LEAVE = -1  # leave the body to json.loads


cdef struct Walk:
    const unsigned char *b
    Py_ssize_t n
    Py_ssize_t i
    int fmt
    int mask
    bint every


cdef inline void ws(Walk *w) noexcept nogil:
    while w.i < w.n and KIND[w.b[w.i]] & K_WS:
        w.i += 1


cdef inline int hexval(unsigned char c) noexcept nogil:
    if 48 <= c <= 57:
        return c - 48
    if 97 <= c <= 102:
        return c - 87
    if 65 <= c <= 70:
        return c - 55
    return -1


cdef int u4(const unsigned char *b, Py_ssize_t n, Py_ssize_t i) noexcept nogil:
    """The \\uXXXX escape's code unit at b[i] (the backslash), or -1."""
    cdef int v = 0, k, h
    if i + 6 > n or b[i + 1] != 117:
        return -1
    for k in range(2, 6):
        h = hexval(b[i + k])
        if h < 0:
            return -1
        v = v * 16 + h
    return v


cdef Py_ssize_t string_end(Walk *w, bint *plain) noexcept nogil:
    """w.i is at an opening quote: the index of the closing one (strict JSON: escapes valid,
    no control byte), or -1; ``plain``: no escape."""
    cdef const unsigned char *b = w.b
    cdef const unsigned char *p
    cdef Py_ssize_t i = w.i + 1
    cdef unsigned char c
    plain[0] = True
    while True:
        p = pf_scan_string(b + i, b + w.n, 0)
        i = p - b
        if i >= w.n:
            return -1
        c = b[i]
        if c == 34:
            return i
        if c == 92:
            plain[0] = False
            if i + 1 >= w.n:
                return -1
            c = b[i + 1]
            if c == 117:
                if u4(b, w.n, i) < 0:
                    return -1
                i += 6
            elif c in b'"\\/bfnrt':
                i += 2
            else:
                return -1
        else:  # a control byte
            return -1


cdef inline unsigned char unescape(unsigned char c) noexcept nogil:
    if c == 98:
        return 8
    if c == 102:
        return 12
    if c == 110:
        return 10
    if c == 114:
        return 13
    if c == 116:
        return 9
    return c  # " \\ /


cdef object decoded_view(const unsigned char *b, Py_ssize_t s, Py_ssize_t e):
    """The byte view of the JSON string content b[s:e] (escapes valid, UTF-8 valid): one byte
    per code point of the decoded string, ASCII as itself, anything else 0x80."""
    cdef unsigned char *out
    cdef Py_ssize_t i = s, m = 0
    cdef int u, lo
    cdef unsigned char c
    buf = PyBytes_FromStringAndSize(NULL, e - s)
    out = <unsigned char *>PyBytes_AS_STRING(buf)
    while i < e:
        c = b[i]
        if c == 92:
            c = b[i + 1]
            if c == 117:
                u = u4(b, e, i)
                i += 6
                if 0xD800 <= u < 0xDC00:
                    lo = u4(b, e, i) if i < e and b[i] == 92 else -1
                    if 0xDC00 <= lo < 0xE000:
                        i += 6  # a surrogate pair is one character
                out[m] = <unsigned char>u if u < 128 else 128
            else:
                out[m] = unescape(c)
                i += 2
            m += 1
        elif c < 128:
            out[m] = c
            m += 1
            i += 1
        else:
            if c >= 0xC0:  # a lead byte starts a code point; continuation bytes do not
                out[m] = 128
                m += 1
            i += 1
    return buf[:m]


cdef int text_string(Walk *w, object body, list out) except -2:
    cdef bint plain
    cdef Py_ssize_t s = w.i + 1
    cdef Py_ssize_t e = string_end(w, &plain)
    if e < 0:
        return LEAVE
    w.i = e + 1
    if plain:
        plain = not pf_any_high(w.b + s, w.b + e)
    if not w.mask:
        found = []
    elif plain:
        found = match_all(body, s, e - s, w.mask)
    else:
        view = decoded_view(w.b, s, e)
        found = match_all(view, 0, PyBytes_GET_SIZE(view), w.mask)
    if found or w.every:
        out.append((s, e, plain, found))
    return 0


cdef int skip_string(Walk *w) noexcept nogil:
    cdef bint plain
    cdef Py_ssize_t e = string_end(w, &plain)
    if e < 0:
        return LEAVE
    w.i = e + 1
    return 0


cdef int skip_scalar(Walk *w) noexcept nogil:
    """true, false, null or a JSON number (anything else -- NaN, Infinity -- is json's)."""
    cdef const unsigned char *b = w.b
    cdef Py_ssize_t i = w.i, n = w.n, d
    if lit(b, n, i, b"true", 4) or lit(b, n, i, b"null", 4):
        w.i = i + 4
        return 0
    if lit(b, n, i, b"false", 5):
        w.i = i + 5
        return 0
    if i < n and b[i] == 45:
        i += 1
    if i < n and b[i] == 48:
        i += 1
    elif i < n and 49 <= b[i] <= 57:
        while i < n and is_digit(b[i]):
            i += 1
    else:
        return LEAVE
    if i < n and b[i] == 46:
        i += 1
        d = i
        while i < n and is_digit(b[i]):
            i += 1
        if i == d:
            return LEAVE
    if i < n and (b[i] == 101 or b[i] == 69):
        i += 1
        if i < n and (b[i] == 43 or b[i] == 45):
            i += 1
        d = i
        while i < n and is_digit(b[i]):
            i += 1
        if i == d:
            return LEAVE
    w.i = i
    return 0


cdef int key_role(Walk *w, int role, Py_ssize_t s, Py_ssize_t e) noexcept nogil:
    """The role of the value of key b[s:e] in an object of ``role``; bit 8 set: 'type'."""
    cdef const unsigned char *k = w.b + s
    cdef Py_ssize_t m = e - s
    if role == R_ROOT:
        if w.fmt == F_OPENAI:
            if lit(k, m, 0, b"messages", 8) and m == 8:
                return R_MESSAGES
        elif w.fmt == F_ANTHROPIC:
            if m == 8 and lit(k, m, 0, b"messages", 8):
                return R_MESSAGES
            if m == 6 and lit(k, m, 0, b"system", 6):
                return R_SYSTEM
        elif w.fmt == F_RESPONSES:
            if m == 12 and lit(k, m, 0, b"instructions", 12):
                return R_TEXT
            if m == 5 and lit(k, m, 0, b"input", 5):
                return R_INPUT
        elif w.fmt == F_GEMINI:
            if m == 8 and lit(k, m, 0, b"contents", 8):
                return R_GCONTENTS
            if m == 17 and lit(k, m, 0, b"systemInstruction", 17):
                return R_GCONTENT
        elif w.fmt == F_EMBEDDINGS:
            if m == 5 and lit(k, m, 0, b"input", 5):
                return R_EINPUT
    elif role == R_MESSAGE or role == R_ITEM:
        if m == 7 and lit(k, m, 0, b"content", 7):
            return R_CONTENT
        if role == R_ITEM and m == 6 and lit(k, m, 0, b"output", 6):
            return R_TEXT
    elif role == R_PART:
        if m == 4 and lit(k, m, 0, b"text", 4):
            return R_TEXT
        if m == 7 and lit(k, m, 0, b"content", 7):
            return R_CONTENT
        if m == 4 and lit(k, m, 0, b"type", 4):
            return 256
    elif role == R_TEXTOBJ:
        if m == 4 and lit(k, m, 0, b"text", 4):
            return R_TEXT
    elif role == R_GCONTENT:
        if m == 5 and lit(k, m, 0, b"parts", 5):
            return R_GPARTS
    return R_SKIP


cdef inline int element_role(int role) noexcept nogil:
    if role == R_MESSAGES:
        return R_MESSAGE
    if role == R_CONTENT:
        return R_PART
    if role == R_SYSTEM or role == R_GPARTS:
        return R_TEXTOBJ
    if role == R_INPUT:
        return R_ITEM
    if role == R_GCONTENTS:
        return R_GCONTENT
    if role == R_EINPUT:
        return R_TEXT
    return R_SKIP


cdef int value(Walk *w, object body, list out, int role, int depth) except -2:
    cdef unsigned char c
    cdef int r
    ws(w)
    if w.i >= w.n:
        return LEAVE
    c = w.b[w.i]
    if c == 34:
        if role == R_TEXT or role == R_CONTENT or role == R_SYSTEM or role == R_INPUT or role == R_EINPUT:
            return text_string(w, body, out)
        return skip_string(w)
    if c == 123:
        if not (role == R_ROOT or role == R_MESSAGE or role == R_ITEM or role == R_PART or role == R_TEXTOBJ
                or role == R_GCONTENT):
            role = R_SKIP  # an object where the format expects text or a list: no slot in it
        return obj(w, body, out, role, depth + 1)
    if c == 91:
        if depth + 1 > MAX_DEPTH:
            return LEAVE
        w.i += 1
        ws(w)
        if w.i < w.n and w.b[w.i] == 93:
            w.i += 1
            return 0
        role = element_role(role)
        while True:
            r = value(w, body, out, role, depth + 1)
            if r:
                return r
            ws(w)
            if w.i >= w.n:
                return LEAVE
            c = w.b[w.i]
            w.i += 1
            if c == 93:
                return 0
            if c != 44:
                return LEAVE
    return skip_scalar(w)


cdef int obj(Walk *w, object body, list out, int role, int depth) except -2:
    cdef unsigned int seen = 0
    cdef int r, kr
    cdef bint plain, tool_result = False
    cdef Py_ssize_t ks, ke, vs, ve, content_from = -1, content_to = -1
    cdef unsigned char c
    if depth > MAX_DEPTH:
        return LEAVE
    w.i += 1
    ws(w)
    if w.i < w.n and w.b[w.i] == 125:
        w.i += 1
        return 0
    while True:
        ws(w)
        if w.i >= w.n or w.b[w.i] != 34:
            return LEAVE
        ks = w.i + 1
        ke = string_end(w, &plain)
        if ke < 0:
            return LEAVE
        w.i = ke + 1
        kr = R_SKIP
        if role != R_SKIP:
            if not plain:
                return LEAVE  # an escaped key could spell a slot's name
            kr = key_role(w, role, ks, ke)
            if kr != R_SKIP:
                if seen & (1u << (kr if kr < 256 else 31)):
                    return LEAVE  # a repeated member: json.loads keeps the last, leave it to json
                seen |= 1u << (kr if kr < 256 else 31)
        ws(w)
        if w.i >= w.n or w.b[w.i] != 58:
            return LEAVE
        w.i += 1
        if kr == 256:  # a part's type: is it a tool result?
            ws(w)
            if w.i < w.n and w.b[w.i] == 34:
                vs = w.i + 1
                ve = string_end(w, &plain)
                if ve < 0:
                    return LEAVE
                if not plain:
                    return LEAVE
                tool_result = ve - vs == 11 and lit(w.b, w.n, vs, b"tool_result", 11)
                w.i = ve + 1
                r = 0
            else:
                r = value(w, body, out, R_SKIP, depth)
        elif kr == R_CONTENT and role == R_PART:
            content_from = len(out)
            r = value(w, body, out, kr, depth)
            content_to = len(out)
        else:
            r = value(w, body, out, kr, depth)
        if r:
            return r
        ws(w)
        if w.i >= w.n:
            return LEAVE
        c = w.b[w.i]
        w.i += 1
        if c == 125:
            break
        if c != 44:
            return LEAVE
    if content_from >= 0 and not tool_result:
        del out[content_from:content_to]  # a part's content is text only in a tool result
    return 0


def scan_body(bytes body, str fmt, int mask, bint every):
    """The message text of the request ``body`` in client format ``fmt`` (one of FORMATS):
    [(start, end, plain, findings), ...], or None to leave the body to json.loads.  The body
    must be valid UTF-8 (the caller checks: json.loads would refuse it otherwise)."""
    cdef Walk w
    cdef list out = []
    cdef int r
    w.b = <const unsigned char *>PyBytes_AS_STRING(body)
    w.n = PyBytes_GET_SIZE(body)
    w.i = 0
    w.fmt = FORMATS.get(fmt, F_OPENAI)
    w.mask = mask
    w.every = every
    ws(&w)
    if w.i < w.n and w.b[w.i] == 123:
        r = obj(&w, body, out, R_ROOT, 1)
    else:
        r = value(&w, body, out, R_SKIP, 0)
    if r:
        return None
    ws(&w)
    if w.i != w.n:
        return None
    return out
