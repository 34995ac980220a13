# _scan_tokens.pxi: the walker's tokens (strings, numbers, UTF-8, the fast skip) and its feed loop, w_feed
# Included by _scan.pyx (one C module: inlining across pieces is unchanged).

cdef inline void cap_put(Walker *w, unsigned char b) noexcept nogil:
    if w.cap_len < w.cap_max:
        w.cap_buf[w.cap_len] = b
        w.cap_len += 1
    else:
        w.cap_over = 1


cdef void cap_codepoint(Walker *w, unsigned int u) noexcept nogil:
    if w.pend_hi:
        if 0xDC00 <= u <= 0xDFFF:
            u = 0x10000 + ((w.pend_hi - 0xD800) << 10) + (u - 0xDC00)
            w.pend_hi = 0
            cap_put(w, <unsigned char>(0xF0 | (u >> 18)))
            cap_put(w, <unsigned char>(0x80 | ((u >> 12) & 0x3F)))
            cap_put(w, <unsigned char>(0x80 | ((u >> 6) & 0x3F)))
            cap_put(w, <unsigned char>(0x80 | (u & 0x3F)))
            return
        w.cap_bad = 1
        w.pend_hi = 0
    if 0xD800 <= u <= 0xDBFF:
        w.pend_hi = u
        return
    if 0xDC00 <= u <= 0xDFFF:
        w.cap_bad = 1
        return
    if u < 0x80:
        cap_put(w, <unsigned char>u)
    elif u < 0x800:
        cap_put(w, <unsigned char>(0xC0 | (u >> 6)))
        cap_put(w, <unsigned char>(0x80 | (u & 0x3F)))
    else:
        cap_put(w, <unsigned char>(0xE0 | (u >> 12)))
        cap_put(w, <unsigned char>(0x80 | ((u >> 6) & 0x3F)))
        cap_put(w, <unsigned char>(0x80 | (u & 0x3F)))


cdef inline int hexval(unsigned char c) noexcept nogil:
    if b'0' <= c <= b'9':
        return c - 48
    if b'a' <= c <= b'f':
        return c - 87
    if b'A' <= c <= b'F':
        return c - 55
    return -1


cdef inline int utf8_lead(Walker *w, unsigned char c) noexcept nogil:
    """Start a multi-byte UTF-8 sequence; -1 if ``c`` cannot start one."""
    if c < 0xC2:
        return -1
    w.u8lo = 0x80
    w.u8hi = 0xBF
    if c < 0xE0:
        w.u8need = 1
    elif c < 0xF0:
        w.u8need = 2
        if c == 0xE0:
            w.u8lo = 0xA0
        elif c == 0xED:
            w.u8hi = 0x9F
    elif c < 0xF5:
        w.u8need = 3
        if c == 0xF0:
            w.u8lo = 0x90
        elif c == 0xF4:
            w.u8hi = 0x8F
    else:
        return -1
    return 0


cdef const unsigned char *str_skip(Walker *w, const unsigned char *p, const unsigned char *end) noexcept nogil:
    """Validate string content without keeping it.  Returns a pointer to the closing quote,
    ``end`` when more input is needed, or NULL on error (``w.err`` set to the code)."""
    cdef unsigned char c
    while p < end:
        if w.u8need:
            c = p[0]
            if c < w.u8lo or c > w.u8hi:
                w.err = E_UTF8
                return NULL
            w.u8need -= 1
            w.u8lo = 0x80
            w.u8hi = 0xBF
            p += 1
            continue
        if w.esc:
            c = p[0]
            if w.esc == 1:
                if c == b'u':
                    w.esc = 2
                elif (c == b'"' or c == b'\\' or c == b'/' or c == b'b' or c == b'f'
                        or c == b'n' or c == b'r' or c == b't'):
                    w.esc = 0
                else:
                    w.err = E_ESCAPE
                    return NULL
            else:
                if hexval(c) < 0:
                    w.err = E_ESCAPE
                    return NULL
                w.esc += 1
                if w.esc == 6:
                    w.esc = 0
            p += 1
            continue
        p = pf_scan_text(p, end) if w.lenient else pf_scan_plain(p, end)
        if p == end:
            return p
        c = p[0]
        if c == b'"':
            return p
        if c == b'\\':
            w.esc = 1
            w.str_esc = 1
        elif c < 0x20:
            w.err = E_CONTROL
            return NULL
        elif utf8_lead(w, c) < 0:
            w.err = E_UTF8
            return NULL
        p += 1
    return p


cdef const unsigned char *str_cap(Walker *w, const unsigned char *p, const unsigned char *end) noexcept nogil:
    """Like str_skip but decodes the content into ``w.cap_buf`` (bounded)."""
    cdef unsigned char c
    cdef int h
    cdef const unsigned char *q
    cdef Py_ssize_t run, room
    while p < end:
        if not (w.u8need or w.esc or w.pend_hi):
            q = pf_scan_text(p, end) if w.lenient else pf_scan_plain(p, end)
            if q > p:
                run = q - p
                room = w.cap_max - w.cap_len
                if run > room:
                    run = room
                    w.cap_over = 1
                memcpy(w.cap_buf + w.cap_len, p, run)
                w.cap_len += run
                p = q
                if p == end:
                    return p
        c = p[0]
        if w.u8need:
            if c < w.u8lo or c > w.u8hi:
                w.err = E_UTF8
                return NULL
            w.u8need -= 1
            w.u8lo = 0x80
            w.u8hi = 0xBF
            cap_put(w, c)
        elif w.esc == 1:
            if c == b'u':
                w.esc = 2
                w.uacc = 0
            else:
                if c == b'"' or c == b'\\' or c == b'/':
                    pass
                elif c == b'b':
                    c = 8
                elif c == b'f':
                    c = 12
                elif c == b'n':
                    c = 10
                elif c == b'r':
                    c = 13
                elif c == b't':
                    c = 9
                else:
                    w.err = E_ESCAPE
                    return NULL
                if w.pend_hi:
                    w.cap_bad = 1
                    w.pend_hi = 0
                cap_put(w, c)
                w.esc = 0
        elif w.esc:
            h = hexval(c)
            if h < 0:
                w.err = E_ESCAPE
                return NULL
            w.uacc = (w.uacc << 4) | <unsigned int>h
            w.esc += 1
            if w.esc == 6:
                w.esc = 0
                cap_codepoint(w, w.uacc)
        elif c == b'"':
            if w.pend_hi:
                w.cap_bad = 1
                w.pend_hi = 0
            return p
        elif c == b'\\':
            w.esc = 1
            w.str_esc = 1
        else:
            if w.pend_hi:
                w.cap_bad = 1
                w.pend_hi = 0
            if c < 0x20:
                w.err = E_CONTROL
                return NULL
            if c >= 0x80 and not w.lenient and utf8_lead(w, c) < 0:
                w.err = E_UTF8
                return NULL
            cap_put(w, c)  # lenient: validated as a whole in str_done
        p += 1
    return p


cdef bint utf8_valid(const unsigned char *p, Py_ssize_t n) noexcept nogil:
    cdef const unsigned char *end = p + n
    cdef int k
    while p < end:
        if p[0] < 0x80:
            p += 1
            continue
        k = utf8_seq(p, end)
        if k <= 0:
            return 0
        p += k
    return 1


cdef void str_done(Walker *w, int64_t off) noexcept nogil:
    """The closing quote was read; ``off`` is just after it."""
    cdef int slot = w.str_slot
    cdef DocRec *d
    cdef bint ok
    if w.lenient and w.str_mode != SM_SKIP and not w.cap_over and not utf8_valid(w.cap_buf, w.cap_len):
        w.cap_bad = 1
    if w.in_key:
        if w.str_mode == SM_KEY and not w.cap_over and not w.cap_bad:
            w.slot = key_lookup(w, w.node[w.depth - 1], w.key, w.cap_len)
        else:
            w.slot = SL_NONE
        w.state = W_COLON
        return
    if w.str_mode == SM_CAP:
        d = w.doc
        ok = not w.cap_over and not w.cap_bad
        if slot == SL_MODEL1:
            d.model_st0 = ST_OK if ok else ST_ABSENT
            d.model_len0 = w.cap_len
        elif slot == SL_MODEL2:
            d.model_st1 = ST_OK if ok else ST_ABSENT
            d.model_len1 = w.cap_len
        elif slot == SL_MODALITY:
            if ok and key_is(d.mod_buf, w.cap_len, "AUDIO", 5):
                d.m_kind = MOD_AUDIO
            elif ok and key_is(d.mod_buf, w.cap_len, "IMAGE", 5):
                d.m_kind = MOD_IMAGE
            else:
                d.m_kind = MOD_OTHER
        elif slot == SL_TIER1 or slot == SL_TIER2:
            tier_put(w, slot, tier_code(d.tier_buf, w.cap_len) if ok else TIER_OTHER)
        else:
            d.typ = ok and (key_is(d.type_buf, w.cap_len, "error", 5)
                            or key_is(d.type_buf, w.cap_len, "response.failed", 15))
    elif slot == SL_RMODEL:
        w.req.model = ST_OK
        w.req.model_esc = w.str_esc
    scalar_done(w, off)


cdef inline void key_begin(Walker *w, int64_t off) noexcept nogil:
    w.state = W_STR
    w.in_key = 1
    w.esc = 0
    w.u8need = 0
    w.str_esc = 0
    if w.node[w.depth - 1] != ND_NONE:
        w.str_mode = SM_KEY
        w.cap_buf = w.key
        w.cap_max = C_KEY_CAP
        w.cap_len = 0
        w.cap_over = 0
        w.cap_bad = 0
        w.pend_hi = 0
    else:
        w.str_mode = SM_SKIP
    key_mark(w, off)


cdef inline void key_mark(Walker *w, int64_t off) noexcept nogil:
    """Member bookkeeping at the opening quote of a key (depth 1 and 2 only)."""
    cdef int depth = w.depth
    cdef DocRec *d
    if depth == 1:
        w.members1 += 1
        w.prev_end1 = w.last_end1
        w.key_start1 = off
        if w.track:
            d = w.doc
            if d.cut_pending:
                d.cut_end = off
                d.cut_pending = 0
    elif depth == 2:
        w.members2 += 1


cdef inline void field_put(DocRec *d, int i, int st, int64_t v) noexcept nogil:
    """Field ``i`` (0 .. 2 * NF - 1: record i // NF, field i % NF) of the document: state and
    value (a compare instead of the division by NF)."""
    cdef URec *r = &d.u[0]
    if i >= NF:
        r = &d.u[1]
        i -= NF
    r.fst[i] = st
    r.fv[i] = v


cdef void num_done(Walker *w, int64_t off) noexcept nogil:
    cdef int slot = w.num_slot
    cdef int st
    cdef int i
    if slot != SL_NONE:
        if w.num_isint and w.num_digits <= C_MAX_DIGITS and (not w.num_neg or w.num_val == 0):
            st = ST_OK
        else:
            st = ST_BAD
        if slot >= SL_RMAX:
            i = slot - SL_RMAX
            w.req.maxst[i] = st
            w.req.maxv[i] = w.num_val
        elif slot == SL_MCOUNT:
            w.doc.m_cst = st
            w.doc.m_cv = w.num_val
        else:
            field_put(w.doc, slot - SL_F, st, w.num_val)
    scalar_done(w, off)


cdef const unsigned char *num_scan(Walker *w, const unsigned char *p, const unsigned char *end) noexcept nogil:
    """Consume number bytes; returns the first byte after the number (not consumed), ``end``
    if the number may continue, or NULL on a grammar error."""
    cdef unsigned char c
    cdef int ns = w.num_state
    cdef bint acc = w.num_slot != SL_NONE
    while p < end:
        c = p[0]
        if b'0' <= c <= b'9':
            if ns == N_MINUS:
                ns = N_ZERO if c == b'0' else N_INT
                w.num_digits = 1
                w.num_val = c - 48
            elif ns == N_INT:
                if acc:
                    w.num_digits += 1
                    if w.num_digits <= C_MAX_DIGITS:
                        w.num_val = w.num_val * 10 + (c - 48)
            elif ns == N_ZERO:
                break
            elif ns == N_DOT:
                ns = N_FRAC
            elif ns == N_E or ns == N_ESIGN:
                ns = N_EXP
        elif c == b'.':
            if ns == N_ZERO or ns == N_INT:
                ns = N_DOT
                w.num_isint = 0
            else:
                break
        elif c == b'e' or c == b'E':
            if ns == N_ZERO or ns == N_INT or ns == N_FRAC:
                ns = N_E
                w.num_isint = 0
            else:
                break
        elif c == b'+' or c == b'-':
            if ns == N_E:
                ns = N_ESIGN
            else:
                break
        else:
            break
        p += 1
    w.num_state = ns
    if p < end and (ns == N_MINUS or ns == N_DOT or ns == N_E or ns == N_ESIGN):
        return NULL
    return p


cdef inline int utf8_seq(const unsigned char *p, const unsigned char *end) noexcept nogil:
    """Length of the complete, valid UTF-8 sequence at ``p`` (lead byte >= 0x80), 0 if it may
    be valid but is cut by ``end``, -1 if invalid."""
    cdef unsigned char c = p[0]
    cdef unsigned char lo = 0x80
    cdef unsigned char hi = 0xBF
    cdef int n
    cdef int i
    if c < 0xC2:
        return -1
    if c < 0xE0:
        n = 2
    elif c < 0xF0:
        n = 3
        if c == 0xE0:
            lo = 0xA0
        elif c == 0xED:
            hi = 0x9F
    elif c < 0xF5:
        n = 4
        if c == 0xF0:
            lo = 0x90
        elif c == 0xF4:
            hi = 0x8F
    else:
        return -1
    for i in range(1, n):
        if p + i >= end:
            return 0
        c = p[i]
        if c < lo or c > hi:
            return -1
        lo = 0x80
        hi = 0xBF
    return n


cdef inline const unsigned char *scalar_end(const unsigned char *p, const unsigned char *end,
                                            bint lenient) noexcept nogil:
    """End of the complete, valid scalar token (string, number, literal) starting at ``p``, or
    NULL when it is cut by ``end``, invalid, or not a scalar (the general path decides)."""
    cdef unsigned char c = p[0]
    cdef unsigned char e
    cdef const unsigned char *q
    cdef int k
    if c == b'"':
        q = p + 1
        while True:
            q = pf_scan_text(q, end) if lenient else pf_scan_plain(q, end)
            if q == end:
                return NULL
            e = q[0]
            if e == b'"':
                return q + 1
            if e == b'\\':
                if end - q < 2:
                    return NULL
                e = q[1]
                if e == b'u':
                    if end - q < 6:
                        return NULL
                    if hexval(q[2]) < 0 or hexval(q[3]) < 0 or hexval(q[4]) < 0 or hexval(q[5]) < 0:
                        return NULL
                    q += 6
                elif (e == b'"' or e == b'\\' or e == b'/' or e == b'b' or e == b'f'
                        or e == b'n' or e == b'r' or e == b't'):
                    q += 2
                else:
                    return NULL
            elif e < 0x80:
                return NULL  # control character
            else:
                while True:  # a run of multi-byte characters
                    e = q[0]
                    if end - q >= 3 and (0xE1 <= e <= 0xEC or e >= 0xEE) and e <= 0xEF:
                        # the common 3-byte case (CJK...): no special second-byte range
                        if (q[1] & 0xC0) != 0x80 or (q[2] & 0xC0) != 0x80:
                            return NULL
                        q += 3
                    elif end - q >= 2 and 0xC2 <= e <= 0xDF:
                        if (q[1] & 0xC0) != 0x80:
                            return NULL
                        q += 2
                    else:
                        k = utf8_seq(q, end)
                        if k <= 0:
                            return NULL
                        q += k
                    if q == end or q[0] < 0x80:
                        break
    if c == b't' or c == b'n':
        if end - p < 4:
            return NULL
        if c == b't':
            if p[1] != b'r' or p[2] != b'u' or p[3] != b'e':
                return NULL
        elif p[1] != b'u' or p[2] != b'l' or p[3] != b'l':
            return NULL
        return p + 4
    if c == b'f':
        if end - p < 5 or p[1] != b'a' or p[2] != b'l' or p[3] != b's' or p[4] != b'e':
            return NULL
        return p + 5
    if c != b'-' and not (b'0' <= c <= b'9'):
        return NULL
    q = p + 1 if c == b'-' else p
    if q >= end:
        return NULL
    if q[0] == b'0':
        q += 1
    elif b'1' <= q[0] <= b'9':
        q += 1
        while q < end and b'0' <= q[0] <= b'9':
            q += 1
    else:
        return NULL
    if q < end and q[0] == b'.':
        q += 1
        if q >= end or not (b'0' <= q[0] <= b'9'):
            return NULL
        while q < end and b'0' <= q[0] <= b'9':
            q += 1
    if q < end and (q[0] == b'e' or q[0] == b'E'):
        q += 1
        if q < end and (q[0] == b'+' or q[0] == b'-'):
            q += 1
        if q >= end or not (b'0' <= q[0] <= b'9'):
            return NULL
        while q < end and b'0' <= q[0] <= b'9':
            q += 1
    if q == end:
        return NULL  # the number may continue in the next chunk
    return q


cdef inline const unsigned char *token_end(const unsigned char *p, const unsigned char *end,
                                           bint lenient) noexcept nogil:
    """scalar_end, with the common case -- a string whose content is one plain run, complete
    in the buffer -- found in place without the call (``p[0]`` starts a scalar)."""
    cdef const unsigned char *q
    if p[0] == b'"':
        q = pf_scan_text(p + 1, end) if lenient else pf_scan_plain(p + 1, end)
        if q < end and q[0] == b'"':
            return q + 1
    return scalar_end(p, end, lenient)


cdef const unsigned char *fast_skip(Walker *w, const unsigned char *p, const unsigned char *end,
                                    const unsigned char *buf, int64_t base) noexcept nogil:
    """Validate tokens inside an uninteresting container (node ND_NONE) with the state in
    registers.  Stops (state saved, the token left unconsumed) at the end of the input, at a
    token that may be cut by the end of the input, and at a bracket closing back into an
    interesting container or to depth <= 2 -- the general path handles those.  NULL on error."""
    cdef int st = w.state
    cdef int depth = w.depth
    cdef unsigned char c
    cdef const unsigned char *q
    while p < end:
        c = p[0]
        if c == b' ' or c == b'\n' or c == b'\r' or c == b'\t':
            p += 1
            continue
        if st == W_AFTER:
            if c == b',':
                st = W_KEY if w.kind[depth - 1] == K_OBJ else W_VALUE
                p += 1
                continue
            if c == b'}' or c == b']':
                if (c == b'}') != (w.kind[depth - 1] == K_OBJ):
                    w.state = st
                    w.depth = depth
                    w_fail(w, E_CHAR, base + (p - buf))
                    return NULL
                if depth - 1 <= 2 or w.node[depth - 2] != ND_NONE:
                    break
                depth -= 1
                p += 1
                continue
            break  # error: let the general path report it
        if st == W_COLON:
            if c != b':':
                break
            st = W_VALUE
            p += 1
            continue
        if st == W_KEY_OR_CLOSE or st == W_VALUE_OR_CLOSE:
            if (c == b'}' and st == W_KEY_OR_CLOSE) or (c == b']' and st == W_VALUE_OR_CLOSE):
                if depth - 1 <= 2 or w.node[depth - 2] != ND_NONE:
                    break
                depth -= 1
                st = W_AFTER
                p += 1
                continue
        if st == W_KEY or st == W_KEY_OR_CLOSE:
            if c != b'"':
                break
        elif c == b'{' or c == b'[':
            if depth >= C_MAX_DEPTH:
                break
            if depth <= 2:
                w.vslot[depth] = SL_NONE  # its close is handled by the general path
            w.node[depth] = ND_NONE
            if c == b'{':
                w.kind[depth] = K_OBJ
                st = W_KEY_OR_CLOSE
            else:
                w.kind[depth] = K_ARR
                st = W_VALUE_OR_CLOSE
            depth += 1
            p += 1
            continue
        elif c != b'"' and c != b't' and c != b'f' and c != b'n' and c != b'-' and not (b'0' <= c <= b'9'):
            break
        q = token_end(p, end, w.lenient)
        if q == NULL:
            break
        p = q
        # compact JSON: take the ':' after a key or the ',' after a value here, as the
        # W_COLON / W_AFTER steps above would on the next turn
        if st == W_KEY or st == W_KEY_OR_CLOSE:
            if p < end and p[0] == b':':
                st = W_VALUE
                p += 1
            else:
                st = W_COLON
        elif p < end and p[0] == b',':
            st = W_KEY if w.kind[depth - 1] == K_OBJ else W_VALUE
            p += 1
        else:
            st = W_AFTER
    w.state = st
    w.depth = depth
    w.slot = SL_NONE  # every value inside an uninteresting container goes nowhere
    return p


cdef inline const unsigned char *int_fast(Walker *w, const unsigned char *p, const unsigned char *end,
                                         int64_t off) noexcept nogil:
    """A plain non-negative integer complete in this buffer, for an int slot: deliver it and
    return the byte after it; NULL to let the general path handle anything else."""
    cdef const unsigned char *q = p + 1
    cdef int64_t v = p[0] - 48
    cdef int slot = w.slot
    cdef int i
    cdef int st
    if p[0] != b'0':
        while q < end and b'0' <= q[0] <= b'9':
            if q - p < C_MAX_DIGITS:
                v = v * 10 + (q[0] - 48)
            q += 1
    if q == end or q[0] == b'.' or q[0] == b'e' or q[0] == b'E' or (b'0' <= q[0] <= b'9'):
        return NULL
    st = ST_OK if q - p <= C_MAX_DIGITS else ST_BAD
    if w.depth <= 2:
        w.vstart[w.depth] = off
        w.vslot[w.depth] = slot
        w.vkind[w.depth] = K_NUM
    if slot >= SL_RMAX:
        i = slot - SL_RMAX
        w.req.maxst[i] = st
        w.req.maxv[i] = v
    elif slot == SL_MCOUNT:
        w.doc.m_cst = st
        w.doc.m_cv = v
    else:
        field_put(w.doc, slot - SL_F, st, v)
    scalar_done(w, off + (q - p))
    return q


cdef inline void cap_direct(Walker *w, const unsigned char *s, Py_ssize_t n, int64_t off) noexcept nogil:
    """A plain ASCII string value for a capture slot (model / type), complete in the buffer."""
    cdef DocRec *d = w.doc
    cdef int slot = w.slot
    cdef bint ok
    if w.depth <= 2:
        w.vstart[w.depth] = off
        w.vslot[w.depth] = slot
        w.vkind[w.depth] = K_STR
    if slot == SL_TYPE:
        d.typ = key_is(s, n, "error", 5) or key_is(s, n, "response.failed", 15)
        return
    if slot == SL_TIER1 or slot == SL_TIER2:
        tier_put(w, slot, tier_code(s, n))
        return
    ok = n <= C_MODEL_CAP
    if slot == SL_MODEL1:
        d.model_st0 = ST_OK if ok else ST_ABSENT
        if ok:
            memcpy(d.model_buf0, s, n)
            d.model_len0 = n
    else:
        d.model_st1 = ST_OK if ok else ST_ABSENT
        if ok:
            memcpy(d.model_buf1, s, n)
            d.model_len1 = n


cdef const unsigned char *members_fast(Walker *w, const unsigned char *p, const unsigned char *end,
                                       const unsigned char *buf, int64_t base) noexcept nogil:
    """Members of an object in compact JSON, from the opening quote of a key (state W_KEY or
    W_KEY_OR_CLOSE): a plain key complete in the buffer, ':', a scalar value one of w_feed's
    fast paths takes (int_fast, cap_direct, a scalar nobody wants), ',' and the next key,
    each step exactly as w_feed's general path takes it, without a turn of its loop per
    token (about 250 instructions per member).  Stops at anything else -- whitespace, a
    container, an escaped key, a token cut by the end of the input, an error -- with the
    state saved: the general path goes on from the returned pointer (``p`` itself when the
    first key is not plain)."""
    cdef const unsigned char *q
    cdef unsigned char c
    cdef int slot
    cdef int node = w.node[w.depth - 1]
    while True:
        q = pf_scan_plain(p + 1, end)
        if q == end or q[0] != b'"':
            return p
        key_mark(w, base + (p - buf))
        slot = key_lookup(w, node, p + 1, q - p - 1)
        w.slot = slot
        p = q + 1
        if p == end or p[0] != b':':
            w.state = W_COLON
            return p
        p += 1
        w.state = W_VALUE
        if p == end:
            return p
        c = p[0]
        if b'0' <= c <= b'9' and is_int_slot(slot):
            q = int_fast(w, p, end, base + (p - buf))
            if q == NULL:
                return p
        elif c == b'"' and (slot == SL_MODEL1 or slot == SL_MODEL2 or slot == SL_TYPE
                            or slot == SL_TIER1 or slot == SL_TIER2):
            q = pf_scan_plain(p + 1, end)
            if q == end or q[0] != b'"':
                return p
            cap_direct(w, p + 1, q - p - 1, base + (p - buf))
            q += 1
            scalar_done(w, base + (q - buf))
        elif slot == SL_NONE and c != b'{' and c != b'[':
            q = token_end(p, end, w.lenient)
            if q == NULL:
                return p
            # as w_feed's unwanted scalar (depth >= 1: inside an object)
            if w.depth <= 2:
                w.vslot[w.depth] = SL_NONE
                if w.depth == 1:
                    w.last_end1 = base + (q - buf)
            w.state = W_AFTER
        else:
            return p
        p = q
        if p == end or p[0] != b',':
            return p
        p += 1
        w.state = W_KEY
        if p == end or p[0] != b'"':
            return p


cdef int w_feed(Walker *w, const unsigned char *buf, Py_ssize_t n, int64_t base) noexcept nogil:
    """Feed bytes ``buf[0:n]`` (global offset ``base``) to the walker.  -1 once in error."""
    cdef const unsigned char *p = buf
    cdef const unsigned char *end = buf + n
    cdef const unsigned char *q
    cdef unsigned char c
    cdef int st
    cdef int kind
    while p < end:
        st = w.state
        if st == W_STR:
            if w.str_mode == SM_SKIP:
                q = str_skip(w, p, end)
            else:
                q = str_cap(w, p, end)
            if q == NULL:
                return w_fail(w, w.err, base + (p - buf))
            if q == end:
                return 0
            p = q + 1
            str_done(w, base + (p - buf))
        elif st == W_NUM:
            q = num_scan(w, p, end)
            if q == NULL:
                return w_fail(w, E_NUMBER, base + (p - buf))
            if q == end:
                return 0
            p = q
            num_done(w, base + (p - buf))
        elif st == W_LIT:
            while p < end and w.lit_i < w.lit_n:
                if p[0] != <unsigned char>w.lit[w.lit_i]:
                    return w_fail(w, E_LITERAL, base + (p - buf))
                w.lit_i += 1
                p += 1
            if w.lit_i == w.lit_n:
                scalar_done(w, base + (p - buf))
        elif st == W_ERROR:
            return -1
        else:
            if w.depth > 0 and w.node[w.depth - 1] == ND_NONE:
                q = fast_skip(w, p, end, buf, base)
                if q == NULL:
                    return -1
                if q != p:
                    p = q
                    continue
                st = w.state
            c = p[0]
            while c == b' ' or c == b'\n' or c == b'\r' or c == b'\t':
                p += 1
                if p == end:
                    return 0
                c = p[0]
            if st == W_AFTER:
                kind = w.kind[w.depth - 1]
                if c == b',':
                    if kind == K_OBJ:
                        w.state = W_KEY
                        if p + 1 < end and p[1] == b'"':
                            p = members_fast(w, p + 1, end, buf, base)
                            continue
                    else:
                        w.state = W_VALUE
                        w.slot = elem_slot(w.node[w.depth - 1])
                elif (c == b'}' and kind == K_OBJ) or (c == b']' and kind == K_ARR):
                    container_done(w, base + (p - buf) + 1)
                else:
                    return w_fail(w, E_CHAR, base + (p - buf))
            elif st == W_COLON:
                if c != b':':
                    return w_fail(w, E_CHAR, base + (p - buf))
                w.state = W_VALUE
            elif st == W_KEY or st == W_KEY_OR_CLOSE:
                if c == b'"':
                    # a plain key complete in this buffer: looked up in place (and the
                    # members after it, in compact JSON)
                    q = members_fast(w, p, end, buf, base)
                    if q != p:
                        p = q
                        continue
                    key_begin(w, base + (p - buf))
                elif c == b'}' and st == W_KEY_OR_CLOSE:
                    container_done(w, base + (p - buf) + 1)
                else:
                    return w_fail(w, E_CHAR, base + (p - buf))
            elif st == W_VALUE or st == W_VALUE_OR_CLOSE:
                if c == b']' and st == W_VALUE_OR_CLOSE:
                    container_done(w, base + (p - buf) + 1)
                else:
                    if b'0' <= c <= b'9' and is_int_slot(w.slot):
                        q = int_fast(w, p, end, base + (p - buf))
                        if q != NULL:
                            p = q
                            continue
                    elif c == b'"' and (w.slot == SL_MODEL1 or w.slot == SL_MODEL2 or w.slot == SL_TYPE
                                        or w.slot == SL_TIER1 or w.slot == SL_TIER2):
                        q = pf_scan_plain(p + 1, end)
                        if q < end and q[0] == b'"':
                            cap_direct(w, p + 1, q - p - 1, base + (p - buf))
                            p = q + 1
                            scalar_done(w, base + (p - buf))
                            continue
                    if w.slot == SL_NONE and c != b'{' and c != b'[':
                        q = scalar_end(p, end, w.lenient)
                        if q != NULL:
                            # a complete scalar nobody wants (value_end would only note
                            # the end of a top-level member)
                            if w.depth <= 2:
                                w.vslot[w.depth] = SL_NONE
                                if w.depth == 1:
                                    w.last_end1 = base + (q - buf)
                            w.state = W_DONE if w.depth == 0 else W_AFTER
                            p = q
                            continue
                    if value_begin(w, c, base + (p - buf)) < 0:
                        return -1
            else:  # W_DONE
                return w_fail(w, E_TRAILING, base + (p - buf))
            p += 1
    return 0


cdef bint w_end(Walker *w, int64_t off) noexcept nogil:
    """End of input: True when exactly one complete, valid JSON value was read."""
    if w.state == W_NUM:
        if w.num_state == N_MINUS or w.num_state == N_DOT or w.num_state == N_E or w.num_state == N_ESIGN:
            w_fail(w, E_NUMBER, off)
            return 0
        num_done(w, off)
    if w.state == W_DONE:
        return 1
    if w.state != W_ERROR:
        w_fail(w, E_EOF, off)
    return 0


cdef str w_error_message(Walker *w):
    return "malformed JSON: %s at byte %d" % ((<bytes>ERR_TEXT[w.err]).decode("ascii"), w.err_pos)
