# _scan_walker.pxi: the walker's structure: resets, slots, key lookup, value begin/end, raw usage capture
# Included by _scan.pyx (one C module: inlining across pieces is unchanged).

# ------------------------------------------------------------------------------------------
# walker helpers

cdef inline void urec_clear(URec *r) noexcept nogil:
    # values (fv) are only read when their state is ST_OK: no need to clear them
    cdef int i
    for i in range(NF):
        r.fst[i] = ST_ABSENT
    r.det_in = ST_ABSENT
    r.det_out = ST_ABSENT
    r.cc = ST_ABSENT
    r.stu = ST_ABSENT


cdef inline void doc_reset(DocRec *d) noexcept nogil:
    d.model_st0 = ST_ABSENT
    d.model_st1 = ST_ABSENT
    d.model_len0 = 0
    d.model_len1 = 0
    d.err = 0
    d.typ = 0
    d.u[0].status = ST_ABSENT
    urec_clear(&d.u[0])
    d.u[1].status = ST_ABSENT
    urec_clear(&d.u[1])
    d.tier_st[0] = ST_ABSENT
    d.tier_st[1] = ST_ABSENT
    d.choices = CH_NONE
    d.usage_members = 0
    d.usage_null = 0
    d.cut_start = 0
    d.cut_end = 0
    d.cut_pending = 0


cdef inline void req_reset(ReqRec *r) noexcept nogil:
    cdef int i
    r.root_not_obj = 0
    r.model = ST_ABSENT
    r.model_esc = 0
    r.model_start = 0
    r.model_end = 0
    r.stream = ST_ABSENT
    r.sopt = ST_ABSENT
    r.incl = ST_ABSENT
    for i in range(4):
        r.maxst[i] = ST_ABSENT
        r.maxv[i] = 0
    r.gen = ST_ABSENT
    r.seen = 0
    r.dup = 0
    r.overflow = 0
    r.root_start = 0
    r.n_model = 0
    r.n_sopt = 0
    r.n_incl = 0


cdef inline void w_reset(Walker *w) noexcept nogil:
    w.state = W_VALUE
    w.depth = 0
    w.slot = SL_ROOT
    w.root_kind = 0
    w.esc = 0
    w.u8need = 0
    w.pend_hi = 0
    w.members1 = 0
    w.members2 = 0
    w.last_end1 = 0
    w.prev_end1 = 0
    w.key_start1 = 0
    w.err = E_NONE
    w.err_pos = 0
    w.vslot[0] = SL_NONE
    w.vslot[1] = SL_NONE
    w.vslot[2] = SL_NONE
    w.rec = 0
    if w.req != NULL:
        req_reset(w.req)
    # the document record is reset when a document object opens (open_obj)


cdef inline int w_fail(Walker *w, int code, int64_t pos) noexcept nogil:
    w.state = W_ERROR
    w.err = code
    w.err_pos = pos
    return -1


cdef inline bint is_int_slot(int slot) noexcept nogil:
    return (SL_F <= slot < SL_F + 2 * NF) or (SL_RMAX <= slot < SL_RMAX + 4) or slot == SL_MCOUNT


cdef inline int mlist_field(int slot) noexcept nogil:
    """The raw field a Gemini ModalityTokenCount list adds its AUDIO counts to."""
    if slot == SL_MLIST_IN:
        return F_AIN
    if slot == SL_MLIST_CR:
        return F_CAUD
    return F_AOUT


cdef void melem_done(DocRec *d) noexcept nogil:
    """An element of a ModalityTokenCount list closed: an AUDIO one adds its tokenCount, and
    an IMAGE one of candidatesTokensDetails to F_IOUT (a bad count spoils the usage object,
    as any bad count does; the sum is capped)."""
    cdef URec *r = &d.u[0]
    cdef int f = d.mlist
    if d.m_kind == MOD_IMAGE and f == F_AOUT:
        f = F_IOUT
    elif d.m_kind != MOD_AUDIO:
        return
    if d.m_cst == ST_ABSENT or r.fst[f] == ST_BAD:
        return
    if d.m_cst == ST_BAD:
        r.fst[f] = ST_BAD
    elif r.fst[f] == ST_OK:
        r.fv[f] = min64(r.fv[f] + d.m_cv, C_MAX_COUNT)
    else:
        r.fst[f] = ST_OK
        r.fv[f] = d.m_cv


cdef inline int64_t tier_code(const unsigned char *s, Py_ssize_t n) noexcept nogil:
    """The TIER_* code of a service_tier string (the twin's ``_tier_code``)."""
    if key_is(s, n, "flex", 4):
        return TIER_FLEX
    if key_is(s, n, "priority", 8):
        return TIER_PRIORITY
    if (key_is(s, n, "default", 7) or key_is(s, n, "auto", 4) or key_is(s, n, "standard", 8)
            or key_is(s, n, "standard_only", 13) or key_is(s, n, "on_demand", 9)):
        return TIER_STANDARD
    return TIER_OTHER


cdef inline void tier_put(Walker *w, int slot, int64_t code) noexcept nogil:
    """A service_tier value arrived in ``slot`` (TIER_ABSENT: not a string): Anthropic's goes
    to its usage record (merged like a count), OpenAI's beside the usage (DocRec.tier_*)."""
    cdef int i = slot - SL_TIER1
    cdef DocRec *d = w.doc
    if w.api == A_ANTH:
        d.u[i].fst[F_TIER] = ST_OK if code != TIER_ABSENT else ST_ABSENT
        d.u[i].fv[F_TIER] = code
    else:
        d.tier_st[i] = ST_OK if code != TIER_ABSENT else ST_ABSENT
        d.tier_v[i] = code


cdef inline int bool_state(int kind) noexcept nogil:
    if kind == K_TRUE:
        return ST_TRUE
    if kind == K_FALSE:
        return ST_FALSE
    if kind == K_NULL:
        return ST_ABSENT
    return ST_BAD


cdef inline int null_or_bad(int kind) noexcept nogil:
    return ST_ABSENT if kind == K_NULL else ST_BAD


cdef void slot_scalar(Walker *w, int slot, int kind) noexcept nogil:
    """A value of ``kind`` that is not handled specially arrives in ``slot``."""
    cdef DocRec *d = w.doc
    cdef ReqRec *r = w.req
    cdef int i
    if slot == SL_NONE or slot == SL_DOC:
        return
    if slot == SL_ROOT:
        if r != NULL and kind != K_OBJ:
            r.root_not_obj = 1
        return
    if slot >= SL_RMODEL:
        if slot == SL_RMODEL:
            r.model = null_or_bad(kind)
        elif slot == SL_RSTREAM:
            r.stream = bool_state(kind)
        elif slot == SL_RSOPT:
            r.sopt = null_or_bad(kind)
            r.incl = ST_ABSENT
        elif slot == SL_RINCL:
            r.incl = bool_state(kind)
        elif SL_RMAX <= slot < SL_RMAX + 4:
            r.maxst[slot - SL_RMAX] = null_or_bad(kind)
        elif slot == SL_RGEN:
            r.gen = null_or_bad(kind)
            r.maxst[3] = ST_ABSENT
        return
    if slot == SL_TIER1 or slot == SL_TIER2:
        tier_put(w, slot, TIER_ABSENT)
        return
    if slot >= SL_MLIST_IN:
        if slot == SL_MODALITY:
            d.m_kind = MOD_OTHER
        elif slot == SL_MCOUNT:
            d.m_cst = null_or_bad(kind)
        elif slot != SL_MELEM:  # a list that is not an array: null is none, else bad
            d.u[0].fst[mlist_field(slot)] = null_or_bad(kind)
            if slot == SL_MLIST_OUT:
                d.u[0].fst[F_IOUT] = null_or_bad(kind)
        return
    if slot >= SL_F:
        i = slot - SL_F
        if i >= NF:
            d.u[1].fst[i - NF] = null_or_bad(kind)
        else:
            d.u[0].fst[i] = null_or_bad(kind)
    elif slot == SL_MODEL1:
        d.model_st0 = ST_ABSENT
    elif slot == SL_MODEL2:
        d.model_st1 = ST_ABSENT
    elif slot == SL_ERROR:
        d.err = kind != K_NULL
    elif slot == SL_TYPE:
        d.typ = 0
    elif slot == SL_USAGE1 or slot == SL_USAGE2:
        i = slot - SL_USAGE1
        urec_clear(&d.u[i])
        d.u[i].status = null_or_bad(kind)
    elif slot == SL_NEST:
        urec_clear(&d.u[1])
        d.u[1].status = ST_ABSENT
        d.model_st1 = ST_ABSENT
        d.tier_st[1] = ST_ABSENT
    elif slot == SL_CHOICES or slot == SL_CHOICE_ELEM:
        d.choices = CH_OTHER
    elif slot == SL_DETIN1 or slot == SL_DETIN2:
        i = 0 if slot == SL_DETIN1 else 1
        d.u[i].fst[F_CR] = ST_ABSENT
        d.u[i].fst[F_CW] = ST_ABSENT
        d.u[i].fst[F_AIN] = ST_ABSENT
        d.u[i].det_in = null_or_bad(kind)
    elif slot == SL_DETOUT1 or slot == SL_DETOUT2:
        i = 0 if slot == SL_DETOUT1 else 1
        d.u[i].fst[F_RS] = ST_ABSENT
        d.u[i].fst[F_AOUT] = ST_ABSENT
        d.u[i].det_out = null_or_bad(kind)
    elif slot == SL_CC1 or slot == SL_CC2:
        i = slot - SL_CC1
        d.u[i].fst[F_CW5] = ST_ABSENT
        d.u[i].fst[F_CW1H] = ST_ABSENT
        d.u[i].cc = null_or_bad(kind)
    elif slot == SL_STU1 or slot == SL_STU2:
        i = slot - SL_STU1
        d.u[i].fst[F_WS] = ST_ABSENT
        d.u[i].stu = null_or_bad(kind)


cdef int open_obj(Walker *w, int slot) noexcept nogil:
    """An object starts in ``slot``; returns the node id for its members."""
    cdef DocRec *d = w.doc
    cdef int i
    if slot == SL_ROOT:
        if w.req != NULL:
            return ND_REQ
        doc_reset(d)
        return ND_DOC
    if slot == SL_DOC:
        doc_reset(d)
        return ND_DOC
    if slot == SL_USAGE1 or slot == SL_USAGE2:
        i = slot - SL_USAGE1
        urec_clear(&d.u[i])
        d.u[i].status = ST_OK
        return ND_USAGE1 + i
    if slot == SL_NEST:
        urec_clear(&d.u[1])
        d.u[1].status = ST_ABSENT
        d.model_st1 = ST_ABSENT
        d.tier_st[1] = ST_ABSENT
        return ND_NEST
    if slot == SL_DETIN1 or slot == SL_DETIN2:
        i = 0 if slot == SL_DETIN1 else 1
        d.u[i].fst[F_CR] = ST_ABSENT
        d.u[i].fst[F_CW] = ST_ABSENT
        d.u[i].fst[F_AIN] = ST_ABSENT
        d.u[i].det_in = ST_OK
        return ND_DETIN1 if i == 0 else ND_DETIN2
    if slot == SL_DETOUT1 or slot == SL_DETOUT2:
        i = 0 if slot == SL_DETOUT1 else 1
        d.u[i].fst[F_RS] = ST_ABSENT
        d.u[i].fst[F_AOUT] = ST_ABSENT
        d.u[i].det_out = ST_OK
        return ND_DETOUT1 if i == 0 else ND_DETOUT2
    if slot == SL_CC1 or slot == SL_CC2:
        i = slot - SL_CC1
        d.u[i].fst[F_CW5] = ST_ABSENT
        d.u[i].fst[F_CW1H] = ST_ABSENT
        d.u[i].cc = ST_OK
        return ND_CC1 + i
    if slot == SL_STU1 or slot == SL_STU2:
        i = slot - SL_STU1
        d.u[i].fst[F_WS] = ST_ABSENT
        d.u[i].stu = ST_OK
        return ND_STU1 + i
    if slot == SL_MELEM:
        d.m_kind = MOD_OTHER
        d.m_cst = ST_ABSENT
        return ND_MELEM
    if slot == SL_RSOPT:
        w.req.sopt = ST_OK
        w.req.incl = ST_ABSENT
        return ND_SOPT
    if slot == SL_RGEN:
        w.req.gen = ST_OK
        w.req.maxst[3] = ST_ABSENT
        return ND_GEN
    slot_scalar(w, slot, K_OBJ)
    return ND_NONE


cdef int open_arr(Walker *w, int slot) noexcept nogil:
    if slot == SL_ROOT and w.req == NULL:
        return ND_DOCLIST
    if slot == SL_CHOICES:
        w.doc.choices = CH_EMPTY
        return ND_CHOICES
    if SL_MLIST_IN <= slot <= SL_MLIST_OUT:
        w.doc.mlist = mlist_field(slot)
        w.doc.u[0].fst[w.doc.mlist] = ST_ABSENT  # a repeated list replaces the earlier one
        if slot == SL_MLIST_OUT:
            w.doc.u[0].fst[F_IOUT] = ST_ABSENT
        return ND_MLIST
    slot_scalar(w, slot, K_ARR)
    return ND_NONE


cdef inline int elem_slot(int node) noexcept nogil:
    if node == ND_DOCLIST:
        return SL_DOC
    if node == ND_CHOICES:
        return SL_CHOICE_ELEM
    if node == ND_MLIST:
        return SL_MELEM
    return SL_NONE


cdef inline bint key_is(const unsigned char *k, Py_ssize_t n, const char *name, Py_ssize_t m) noexcept nogil:
    # ``name`` is a literal and ``m`` its length at every call: pf_eq_lit inlines to word compares
    return n == m and pf_eq_lit(k, name, m)


cdef int key_lookup(Walker *w, int node, const unsigned char *k, Py_ssize_t n) noexcept nogil:
    """Slot for the value of key ``k[0:n]`` (decoded) in an object of type ``node``."""
    cdef int api = w.api
    cdef int rec
    if n < 4 or n > 27:
        return SL_NONE
    if node == ND_DOC:
        if api == A_GEM:
            if key_is(k, n, "modelVersion", 12):
                return SL_MODEL1
            if key_is(k, n, "usageMetadata", 13):
                return SL_USAGE1
        else:
            if key_is(k, n, "model", 5):
                return SL_MODEL1
            if key_is(k, n, "usage", 5):
                return SL_USAGE1
            if api != A_ANTH and key_is(k, n, "service_tier", 12):
                return SL_TIER1
            if api == A_CHAT:
                if key_is(k, n, "x_groq", 6):
                    return SL_NEST
                if w.track and key_is(k, n, "choices", 7):
                    return SL_CHOICES
            elif api == A_RESP:
                if key_is(k, n, "response", 8):
                    return SL_NEST
            elif key_is(k, n, "message", 7):
                return SL_NEST
        if key_is(k, n, "error", 5):
            return SL_ERROR
        if key_is(k, n, "type", 4):
            return SL_TYPE
        return SL_NONE
    if node == ND_NEST:
        if key_is(k, n, "usage", 5):
            return SL_USAGE2
        if api != A_CHAT and key_is(k, n, "model", 5):
            return SL_MODEL2
        if api == A_RESP and key_is(k, n, "service_tier", 12):
            return SL_TIER2
        return SL_NONE
    if node == ND_USAGE1 or node == ND_USAGE2:
        rec = node - ND_USAGE1
        if api == A_CHAT:
            if key_is(k, n, "prompt_tokens", 13):
                return SL_F + rec * NF + F_IN
            if key_is(k, n, "completion_tokens", 17):
                return SL_F + rec * NF + F_OUT
            if key_is(k, n, "prompt_tokens_details", 21):
                return SL_DETIN1 if rec == 0 else SL_DETIN2
            if key_is(k, n, "completion_tokens_details", 25):
                return SL_DETOUT1 if rec == 0 else SL_DETOUT2
            if key_is(k, n, "prompt_cache_hit_tokens", 23):
                return SL_F + rec * NF + F_HIT
            if key_is(k, n, "total_tokens", 12):
                return SL_F + rec * NF + F_TOT
        elif api == A_RESP:
            if key_is(k, n, "input_tokens", 12):
                return SL_F + rec * NF + F_IN
            if key_is(k, n, "output_tokens", 13):
                return SL_F + rec * NF + F_OUT
            if key_is(k, n, "input_tokens_details", 20):
                return SL_DETIN1 if rec == 0 else SL_DETIN2
            if key_is(k, n, "output_tokens_details", 21):
                return SL_DETOUT1 if rec == 0 else SL_DETOUT2
        elif api == A_ANTH:
            if key_is(k, n, "input_tokens", 12):
                return SL_F + rec * NF + F_IN
            if key_is(k, n, "output_tokens", 13):
                return SL_F + rec * NF + F_OUT
            if key_is(k, n, "cache_read_input_tokens", 23):
                return SL_F + rec * NF + F_CR
            if key_is(k, n, "cache_creation_input_tokens", 27):
                return SL_F + rec * NF + F_CW
            if key_is(k, n, "cache_creation", 14):
                return SL_CC1 + rec
            if key_is(k, n, "server_tool_use", 15):
                return SL_STU1 + rec
            if key_is(k, n, "output_tokens_details", 21):
                return SL_DETOUT1 if rec == 0 else SL_DETOUT2
            if key_is(k, n, "service_tier", 12):
                return SL_TIER1 + rec
        else:
            if key_is(k, n, "promptTokenCount", 16):
                return SL_F + rec * NF + F_IN
            if key_is(k, n, "candidatesTokenCount", 20):
                return SL_F + rec * NF + F_OUT
            if key_is(k, n, "cachedContentTokenCount", 23):
                return SL_F + rec * NF + F_CR
            if key_is(k, n, "thoughtsTokenCount", 18):
                return SL_F + rec * NF + F_RS
            if key_is(k, n, "toolUsePromptTokenCount", 23):
                return SL_F + rec * NF + F_TOOL
            if rec == 0:  # (Gemini usage is only ever usageMetadata: record 0)
                if key_is(k, n, "promptTokensDetails", 19):
                    return SL_MLIST_IN
                if key_is(k, n, "cacheTokensDetails", 18):
                    return SL_MLIST_CR
                if key_is(k, n, "candidatesTokensDetails", 23):
                    return SL_MLIST_OUT
        return SL_NONE
    if node == ND_MELEM:
        if key_is(k, n, "modality", 8):
            return SL_MODALITY
        if key_is(k, n, "tokenCount", 10):
            return SL_MCOUNT
        return SL_NONE
    if node == ND_DETIN1 or node == ND_DETIN2:
        rec = 0 if node == ND_DETIN1 else 1
        if key_is(k, n, "cached_tokens", 13):
            return SL_F + rec * NF + F_CR
        if key_is(k, n, "cache_write_tokens", 18):
            return SL_F + rec * NF + F_CW
        if api == A_CHAT and key_is(k, n, "audio_tokens", 12):
            return SL_F + rec * NF + F_AIN
        return SL_NONE
    if node == ND_DETOUT1 or node == ND_DETOUT2:
        rec = 0 if node == ND_DETOUT1 else 1
        if api == A_ANTH:
            if key_is(k, n, "thinking_tokens", 15):
                return SL_F + rec * NF + F_RS
            return SL_NONE
        if key_is(k, n, "reasoning_tokens", 16):
            return SL_F + rec * NF + F_RS
        if api == A_CHAT and key_is(k, n, "audio_tokens", 12):
            return SL_F + rec * NF + F_AOUT
        return SL_NONE
    if node == ND_CC1 or node == ND_CC2:
        rec = node - ND_CC1
        if key_is(k, n, "ephemeral_5m_input_tokens", 25):
            return SL_F + rec * NF + F_CW5
        if key_is(k, n, "ephemeral_1h_input_tokens", 25):
            return SL_F + rec * NF + F_CW1H
        return SL_NONE
    if node == ND_STU1 or node == ND_STU2:
        if key_is(k, n, "web_search_requests", 19):
            return SL_F + (node - ND_STU1) * NF + F_WS
        return SL_NONE
    if node == ND_REQ or node == ND_SOPT or node == ND_GEN:
        return req_seen(w.req, req_key_slot(node, k, n))
    return SL_NONE


cdef inline int req_key_slot(int node, const unsigned char *k, Py_ssize_t n) noexcept nogil:
    if node == ND_REQ:
        if key_is(k, n, "model", 5):
            return SL_RMODEL
        if key_is(k, n, "stream", 6):
            return SL_RSTREAM
        if key_is(k, n, "stream_options", 14):
            return SL_RSOPT
        if key_is(k, n, "max_tokens", 10):
            return SL_RMAX
        if key_is(k, n, "max_completion_tokens", 21):
            return SL_RMAX + 1
        if key_is(k, n, "max_output_tokens", 17):
            return SL_RMAX + 2
        if key_is(k, n, "generationConfig", 16):
            return SL_RGEN
        if key_is(k, n, "messages", 8):
            return SL_RMSGS
        if key_is(k, n, "contents", 8):
            return SL_RMSGS + 1
        if key_is(k, n, "input", 5):
            return SL_RMSGS + 2
        if key_is(k, n, "system", 6):
            return SL_RMSGS + 3
        return SL_NONE
    if node == ND_SOPT:
        if key_is(k, n, "include_usage", 13):
            return SL_RINCL
        return SL_NONE
    if key_is(k, n, "maxOutputTokens", 15):
        return SL_RMAX + 3
    return SL_NONE


cdef inline int req_seen(ReqRec *r, int slot) noexcept nogil:
    """Note a request member; the first one named twice is kept in ``r.dup``.  A nested
    member's parent is itself unique (or already the duplicate), so one mask serves."""
    cdef int bit
    if slot != SL_NONE:
        bit = 1 << (slot - SL_RMODEL)
        if r.seen & bit:
            if r.dup == 0:
                r.dup = slot
        else:
            r.seen |= bit
    return slot


cdef inline bint urec_eval(URec *r) noexcept nogil:
    cdef int i
    if (r.status != ST_OK or r.det_in == ST_BAD or r.det_out == ST_BAD or r.cc == ST_BAD
            or r.stu == ST_BAD):
        return 0
    for i in range(NF):
        if r.fst[i] == ST_BAD:
            return 0
    return r.fst[F_IN] == ST_OK or r.fst[F_OUT] == ST_OK


cdef void doc_eval(Walker *w) noexcept nogil:
    """A document object closed: fold it into the pending accumulator."""
    cdef DocRec *d = w.doc
    cdef Acc *a = w.pend
    cdef URec *r
    cdef int api = w.api
    cdef int i, j
    if d.err or d.typ:
        a.is_error = 1
    if d.model_st0 == ST_OK:
        a.model_set = 1
        a.model_len = d.model_len0
        memcpy(a.model, d.model_buf0, d.model_len0)
    elif d.model_st1 == ST_OK and (api == A_RESP or api == A_ANTH):
        a.model_set = 1
        a.model_len = d.model_len1
        memcpy(a.model, d.model_buf1, d.model_len1)
    if api == A_ANTH:
        if urec_eval(&d.u[1]):
            for i in range(NF):
                if d.u[1].fst[i] == ST_OK:
                    a.v[i] = d.u[1].fv[i]
            raw_piece(a, d, 1, api)
        if urec_eval(&d.u[0]):
            for i in range(NF):
                if d.u[0].fst[i] == ST_OK:
                    a.v[i] = d.u[0].fv[i]
            a.has_usage = 1
            raw_piece(a, d, 0, api)
        return
    i = 0 if d.u[0].status != ST_ABSENT else 1
    r = &d.u[i]
    # OpenAI's tier beside the usage object: the document's (chat: x_groq.usage's too), the
    # response object's for Responses' response.usage (Gemini has none: absent)
    j = i if api == A_RESP else 0
    r.fst[F_TIER] = d.tier_st[j]
    r.fv[F_TIER] = d.tier_v[j]
    if urec_eval(r):
        raw_piece(a, d, i, api)
        for i in range(NF):
            a.v[i] = r.fv[i] if r.fst[i] == ST_OK else 0
        if r.fst[F_CR] != ST_OK and r.fst[F_HIT] == ST_OK:
            a.v[F_CR] = r.fv[F_HIT]
        a.has_usage = 1
    elif api == A_GEM:
        a.has_usage = 0  # a Gemini document without usage after the last one (the twin's note)


cdef void value_end(Walker *w, int64_t off) noexcept nogil:
    """A value at depth <= 2 ended at ``off`` (exclusive)."""
    cdef int depth = w.depth
    cdef int slot
    cdef ReqRec *r = w.req
    cdef DocRec *d
    cdef int n
    if depth == 1:
        slot = w.vslot[1]
        if w.track:
            if slot == SL_USAGE1:
                d = w.doc
                d.usage_members += 1
                d.usage_null = w.vkind[1] == K_NULL
                if w.members1 > 1:
                    d.cut_start = w.prev_end1
                    d.cut_pending = 0
                else:
                    d.cut_start = w.key_start1
                    d.cut_pending = 1
                d.cut_end = off
            w.last_end1 = off
        if r != NULL:
            if slot == SL_RMODEL:
                r.model_start = w.vstart[1]
                r.model_end = off
                n = r.n_model
                if n < C_SPANS:
                    r.model_s[n] = w.vstart[1]
                    r.model_e[n] = off
                    r.n_model = n + 1
                else:
                    r.overflow = 1
            elif slot == SL_RSOPT:
                n = r.n_sopt
                if n < C_SPANS:
                    r.sopt_s[n] = w.vstart[1]
                    r.sopt_e[n] = off
                    r.sopt_kind[n] = w.vkind[1]
                    r.sopt_members[n] = w.members2
                    r.n_sopt = n + 1
                else:
                    r.overflow = 1
    elif depth == 2 and r != NULL and w.vslot[2] == SL_RINCL:
        n = r.n_incl
        if n < C_SPANS:
            r.incl_s[n] = w.vstart[2]
            r.incl_e[n] = off
            r.incl_owner[n] = r.n_sopt
            r.n_incl = n + 1
        else:
            r.overflow = 1


cdef inline void scalar_done(Walker *w, int64_t off) noexcept nogil:
    if w.depth <= 2:
        value_end(w, off)
    w.state = W_DONE if w.depth == 0 else W_AFTER


cdef int value_begin(Walker *w, unsigned char c, int64_t off) noexcept nogil:
    cdef int slot = w.slot
    cdef int depth = w.depth
    cdef int node
    cdef int kind
    if slot == SL_CHOICE_ELEM:
        w.doc.choices = CH_OTHER
        slot = SL_NONE
    if c == b'{' or c == b'[':
        if depth >= C_MAX_DEPTH:
            return w_fail(w, E_DEPTH, off)
        if depth <= 2:
            w.vstart[depth] = off
            w.vslot[depth] = slot
            w.vkind[depth] = K_OBJ if c == b'{' else K_ARR
        if c == b'{':
            node = open_obj(w, slot)
            if node == ND_USAGE1 or node == ND_USAGE2:
                w.rec = 1 + node - ND_USAGE1
                w.rec_from = off - w.cur_base
                w.doc.raw_len[node - ND_USAGE1] = 0
            w.kind[depth] = K_OBJ
            w.state = W_KEY_OR_CLOSE
            if depth == 1:
                w.members2 = 0
        else:
            node = open_arr(w, slot)
            w.kind[depth] = K_ARR
            w.state = W_VALUE_OR_CLOSE
            w.slot = elem_slot(node)
        if depth == 0:
            w.root_kind = w.kind[0]
            w.members1 = 0
            if w.req != NULL:
                w.req.root_start = off
        w.node[depth] = node
        w.depth = depth + 1
        return 0
    if c == b'"':
        kind = K_STR
        w.state = W_STR
        w.in_key = 0
        w.esc = 0
        w.u8need = 0
        w.str_esc = 0
        w.str_slot = slot
        if (slot == SL_MODEL1 or slot == SL_MODEL2 or slot == SL_TYPE or slot == SL_MODALITY
                or slot == SL_TIER1 or slot == SL_TIER2):
            w.str_mode = SM_CAP
            w.cap_len = 0
            w.cap_over = 0
            w.cap_bad = 0
            w.pend_hi = 0
            if slot == SL_MODEL1:
                w.cap_buf = w.doc.model_buf0
                w.cap_max = C_MODEL_CAP
            elif slot == SL_MODEL2:
                w.cap_buf = w.doc.model_buf1
                w.cap_max = C_MODEL_CAP
            elif slot == SL_TYPE:
                w.cap_buf = w.doc.type_buf
                w.cap_max = C_TYPE_CAP
            elif slot == SL_TIER1 or slot == SL_TIER2:
                w.cap_buf = w.doc.tier_buf
                w.cap_max = C_TYPE_CAP
            else:
                w.cap_buf = w.doc.mod_buf
                w.cap_max = C_TYPE_CAP
        else:
            w.str_mode = SM_SKIP
            if slot != SL_RMODEL:
                slot_scalar(w, slot, K_STR)
    elif c == b'-' or (b'0' <= c <= b'9'):
        kind = K_NUM
        w.state = W_NUM
        w.num_neg = c == b'-'
        w.num_isint = 1
        w.num_val = 0
        w.num_digits = 0
        if c == b'-':
            w.num_state = N_MINUS
        elif c == b'0':
            w.num_state = N_ZERO
            w.num_digits = 1
        else:
            w.num_state = N_INT
            w.num_digits = 1
            w.num_val = c - 48
        if is_int_slot(slot):
            w.num_slot = slot
        else:
            w.num_slot = SL_NONE
            slot_scalar(w, slot, K_NUM)
    elif c == b't':
        kind = K_TRUE
        w.lit = "true"
        w.lit_n = 4
    elif c == b'f':
        kind = K_FALSE
        w.lit = "false"
        w.lit_n = 5
    elif c == b'n':
        kind = K_NULL
        w.lit = "null"
        w.lit_n = 4
    else:
        return w_fail(w, E_CHAR, off)
    if kind >= K_TRUE:
        w.state = W_LIT
        w.lit_i = 1
        slot_scalar(w, slot, kind)
    if depth <= 2:
        w.vstart[depth] = off
        w.vslot[depth] = slot
        w.vkind[depth] = kind
    if depth == 0:
        w.root_kind = kind
        if w.req != NULL:
            w.req.root_not_obj = 1
    return 0


# Raw-usage buffers (C_RAW_CAP bytes each) kept for reuse: a scanner takes one at the first
# byte of a usage object it keeps and gives it back at __dealloc__, so the usual answer (one
# usage object, two buffers) no longer pays a malloc and a free per buffer (~500
# instructions per answer).  Only touched with the GIL held: raw_buf runs under the GIL
# except in json_feed's GIL-free branch, which fills the scanner's buffers first
# (UsageScanner.raw_fill).  A buffer's bytes are only read up to its owner's raw_len.
cdef enum:
    RAW_POOL_CAP = 64

cdef unsigned char *raw_pool[RAW_POOL_CAP]
cdef int raw_pool_n = 0


cdef inline bint raw_buf(unsigned char **p) noexcept nogil:
    """The raw-usage buffer at ``*p``, taken from the pool or allocated (not zeroed) on first
    use; False when malloc fails (the caller then marks the object not kept, as when it is
    too long)."""
    global raw_pool_n
    if p[0] == NULL:
        if raw_pool_n > 0:
            raw_pool_n -= 1
            p[0] = raw_pool[raw_pool_n]
        else:
            p[0] = <unsigned char *>malloc(C_RAW_CAP)
    return p[0] != NULL


cdef inline void raw_release(unsigned char *p) noexcept:
    """Give a raw-usage buffer back (GIL held); NULL is ignored."""
    global raw_pool_n
    if p == NULL:
        return
    if raw_pool_n < RAW_POOL_CAP:
        raw_pool[raw_pool_n] = p
        raw_pool_n += 1
    else:
        free(p)


cdef void raw_copy(Walker *w, Py_ssize_t upto) noexcept nogil:
    """Append cur_buf[rec_from:upto] to the captured usage object."""
    cdef int i = w.rec - 1
    cdef Py_ssize_t n = upto - w.rec_from
    cdef Py_ssize_t have = w.doc.raw_len[i]
    if n > 0 and have >= 0:
        if have + n > C_RAW_CAP or not raw_buf(&w.doc.raw[i]):
            w.doc.raw_len[i] = -1
        else:
            memcpy(w.doc.raw[i] + have, w.cur_buf + w.rec_from, n)
            w.doc.raw_len[i] = have + n
    w.rec_from = upto


cdef int w_feed_cap(Walker *w, const unsigned char *buf, Py_ssize_t n, int64_t base) noexcept nogil:
    """``w_feed`` for responses: also captures the bytes of the usage objects."""
    cdef int rc
    w.cur_buf = buf
    w.cur_base = base
    w.rec_from = 0
    rc = w_feed(w, buf, n, base)
    if rc == 0 and w.rec:
        raw_copy(w, n)
    return rc


cdef inline void raw_put(Acc *a, const void *s, Py_ssize_t n) noexcept nogil:
    if a.raw_len < 0:
        return
    if a.raw_len + n > C_RAW_CAP - 2 or not raw_buf(&a.raw):  # room for "[" "]" (Anthropic)
        a.raw_len = -1
        return
    memcpy(a.raw + a.raw_len, s, n)
    a.raw_len += n


cdef void raw_piece(Acc *a, DocRec *d, int rec, int api) noexcept nogil:
    """The document piece of a usage object that counted: it replaces the previous one
    (``{"usage":U}``, Gemini ``{"usageMetadata":U}``), or for Anthropic, whose objects merge
    field by field, is appended after a comma (``{"message":{"usage":U}}`` for
    message_start's)."""
    a.raw_set = 1
    if api != A_ANTH:
        a.raw_len = 0
    elif a.raw_len > 0:
        raw_put(a, b",", 1)
    if d.raw_len[rec] < 0:
        a.raw_len = -1
    elif api == A_GEM:
        raw_put(a, b'{"usageMetadata":', 17)
    elif api == A_ANTH and rec == 1:
        raw_put(a, b'{"message":{"usage":', 20)
    elif api == A_ANTH or d.u[rec].fst[F_TIER] != ST_OK or d.u[rec].fv[F_TIER] == TIER_STANDARD:
        raw_put(a, b'{"usage":', 9)
    elif d.u[rec].fv[F_TIER] == TIER_FLEX:  # OpenAI's tier beside its usage (the twin's _raw_piece)
        raw_put(a, b'{"service_tier":"flex","usage":', 31)
    elif d.u[rec].fv[F_TIER] == TIER_PRIORITY:
        raw_put(a, b'{"service_tier":"priority","usage":', 35)
    else:
        raw_put(a, b'{"service_tier":"unknown","usage":', 34)
    if d.raw_len[rec] > 0:  # d.raw[rec] is NULL until a byte was kept
        raw_put(a, d.raw[rec], d.raw_len[rec])
    if api == A_ANTH and rec == 1:
        raw_put(a, b"}}", 2)
    else:
        raw_put(a, b"}", 1)


cdef inline void container_done(Walker *w, int64_t off) noexcept nogil:
    """The container at the top of the stack closed (``off`` = after the bracket)."""
    cdef int depth = w.depth - 1
    w.depth = depth
    if w.node[depth] == ND_DOC:
        doc_eval(w)
    elif w.node[depth] == ND_MELEM:
        melem_done(w.doc)
    elif w.rec and (w.node[depth] == ND_USAGE1 or w.node[depth] == ND_USAGE2):
        raw_copy(w, off - w.cur_base)
        w.rec = 0
    if depth <= 2:
        value_end(w, off)
    w.state = W_DONE if depth == 0 else W_AFTER
