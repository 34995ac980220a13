# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False, embedsignature=True
"""Compiled byte scanner: model / stream / token usage straight from raw request and
response bytes, without building JSON objects.

The specification (mapping, caps, duplicate-key rule, SSE rules) lives in the docstring of
:mod:`plano_fast.wire._scan_py`, the pure-Python twin; both give identical results.

How it works: one resumable, validating JSON state machine (``Walker``) reads every byte
once, keeping only a 512-entry container stack and a few small fixed buffers.  String contents
are skipped 16/32 bytes at a time (SSE2; SWAR fallback elsewhere).  Keys are only looked at in
the few "interesting" objects on the paths we read (the document, ``usage``,
``*_tokens_details``, ``message``/``response``/``x_groq``, ``stream_options``...), in place when
they are plain ASCII; everything under any other key is validated by ``fast_skip``, a tight
loop with its state in registers that hands partial tokens (cut by a chunk boundary) back to
the resumable general path.  The SSE layer feeds each ``data:`` payload straight into the walker
as it arrives, so nothing is buffered except, with ``strip_usage_chunk``, the current event (up
to ``MAX_HOLD_BYTES``).  A scanner is not thread-safe (one per response); inputs of 1 MiB or
more are scanned with the GIL released.
"""

cimport cython
from libc.string cimport memcmp, memcpy
from libc.stdint cimport int64_t
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8

from plano_fast.wire._shared import (
    API_ANTHROPIC,
    API_GEMINI,
    API_OPENAI_CHAT,
    API_OPENAI_RESPONSES,
    MAX_BODY_BYTES,
    MAX_DEPTH,
    MAX_EVENT_BYTES,
    MAX_HOLD_BYTES,
    MAX_MODEL_BYTES,
    MAX_RAW_USAGE_BYTES,
    MAX_TOKEN_COUNT,
    ScanError,
    MSG_NOT_OBJECT,
    MSG_MODEL_TYPE,
    MSG_MODEL_SURROGATE,
    MSG_STREAM_TYPE,
    MSG_STREAM_OPTIONS_TYPE,
    MSG_INCLUDE_USAGE_TYPE,
    MSG_GENERATION_CONFIG_TYPE,
    msg_max_type,
    msg_duplicate,
    DUPLICATE_NAMES,
    decode_json_string,
    encode_json_string,
    has_lone_surrogate,
)
# more spans than C_SPANS to edit (a body repeating "model" or "stream_options" over and
# over): the twin rewrites those few bodies
from plano_fast.wire._scan_py import rewrite_request as _py_rewrite_request

__all__ = [
    "API_ANTHROPIC",
    "API_GEMINI",
    "API_OPENAI_CHAT",
    "API_OPENAI_RESPONSES",
    "MAX_BODY_BYTES",
    "MAX_DEPTH",
    "MAX_EVENT_BYTES",
    "MAX_HOLD_BYTES",
    "MAX_MODEL_BYTES",
    "MAX_TOKEN_COUNT",
    "RequestFields",
    "ScanError",
    "Usage",
    "UsageScanner",
    "rewrite_request",
    "scan_request",
]

cdef extern from "_simd.h":
    const unsigned char *pf_scan_plain(const unsigned char *p, const unsigned char *end) noexcept nogil
    const unsigned char *pf_scan_text(const unsigned char *p, const unsigned char *end) noexcept nogil
    const unsigned char *pf_find_eol(const unsigned char *p, const unsigned char *end) noexcept nogil


# ------------------------------------------------------------------------------------------
# limits (the Python names come from plano_fast.wire._shared, checked against these below)

cdef enum:
    C_MAX_DEPTH = 512
    C_MAX_BODY = 33554432      # 32 MiB
    C_MAX_EVENT = 8388608      # 8 MiB
    C_MAX_HOLD = 65536         # 64 KiB
    C_MODEL_CAP = 256
    C_KEY_CAP = 32
    C_TYPE_CAP = 32
    C_MAX_DIGITS = 18
    C_SPANS = 8
    C_RAW_CAP = 4096          # bytes of the provider usage document kept for the row
    NOGIL_MIN = 1048576        # release the GIL only for inputs of 1 MiB or more

cdef enum:
    # APIs
    A_CHAT = 1
    A_RESP = 2
    A_ANTH = 3
    A_GEM = 4

if ((A_CHAT, A_RESP, A_ANTH, A_GEM, C_MAX_DEPTH, C_MAX_BODY, C_MAX_EVENT, C_MAX_HOLD, C_MODEL_CAP,
     10 ** int(C_MAX_DIGITS) - 1, C_RAW_CAP)
        != (API_OPENAI_CHAT, API_OPENAI_RESPONSES, API_ANTHROPIC, API_GEMINI, MAX_DEPTH, MAX_BODY_BYTES,
            MAX_EVENT_BYTES, MAX_HOLD_BYTES, MAX_MODEL_BYTES, MAX_TOKEN_COUNT, MAX_RAW_USAGE_BYTES)):
    raise ImportError("plano_fast.wire._scan: its C constants differ from plano_fast.wire._shared")

cdef enum:
    # walker states
    W_VALUE = 0
    W_VALUE_OR_CLOSE
    W_KEY_OR_CLOSE
    W_KEY
    W_COLON
    W_AFTER
    W_STR
    W_NUM
    W_LIT
    W_DONE
    W_ERROR

cdef enum:
    # value kinds
    K_OBJ = 1
    K_ARR
    K_STR
    K_NUM
    K_TRUE
    K_FALSE
    K_NULL

cdef enum:
    # string modes
    SM_SKIP = 0
    SM_KEY
    SM_CAP

cdef enum:
    # number grammar states
    N_MINUS = 0
    N_ZERO
    N_INT
    N_DOT
    N_FRAC
    N_E
    N_ESIGN
    N_EXP

cdef enum:
    # value slots: where the next value goes
    SL_NONE = 0
    SL_ROOT
    SL_DOC
    SL_MODEL1
    SL_MODEL2
    SL_ERROR
    SL_TYPE
    SL_USAGE1
    SL_USAGE2
    SL_NEST
    SL_CHOICES
    SL_CHOICE_ELEM
    SL_DETIN1
    SL_DETOUT1
    SL_DETIN2
    SL_DETOUT2
    SL_CC1           # Anthropic usage.cache_creation
    SL_CC2
    SL_F = 20        # 20..31 record 0, 32..43 record 1 (NF fields each)
    SL_RMODEL = 50
    SL_RSTREAM
    SL_RSOPT
    SL_RINCL
    SL_RMAX = 54     # 54..57
    SL_RGEN = 58

cdef enum:
    # container nodes
    ND_NONE = 0
    ND_DOC
    ND_DOCLIST
    ND_USAGE1
    ND_USAGE2
    ND_NEST
    ND_CHOICES
    ND_DETIN1
    ND_DETOUT1
    ND_DETIN2
    ND_DETOUT2
    ND_REQ
    ND_SOPT
    ND_GEN
    ND_CC1
    ND_CC2

cdef enum:
    F_IN = 0
    F_OUT
    F_CR
    F_CW
    F_RS
    F_HIT            # DeepSeek prompt_cache_hit_tokens: cache_read when cached_tokens is absent
    F_TOOL           # Gemini toolUsePromptTokenCount
    F_CW5            # Anthropic cache_creation.ephemeral_5m_input_tokens
    F_CW1H           # Anthropic cache_creation.ephemeral_1h_input_tokens
    F_AIN            # OpenAI chat prompt_tokens_details.audio_tokens
    F_AOUT           # OpenAI chat completion_tokens_details.audio_tokens
    F_TOT            # OpenAI chat total_tokens (tells xAI's reasoning-outside-completion)
    NF               # fields per usage record

cdef enum:
    # record states
    ST_ABSENT = 0    # absent or null
    ST_OK            # object / int / string as expected
    ST_BAD           # wrong type
    ST_TRUE          # booleans (request side)
    ST_FALSE

cdef enum:
    CH_NONE = 0
    CH_EMPTY
    CH_OTHER

cdef enum:
    E_NONE = 0
    E_CHAR
    E_STRING
    E_ESCAPE
    E_UTF8
    E_CONTROL
    E_NUMBER
    E_LITERAL
    E_DEPTH
    E_TRAILING
    E_EOF

cdef const char* ERR_TEXT[11]
ERR_TEXT[0] = b"no error"
ERR_TEXT[1] = b"unexpected character"
ERR_TEXT[2] = b"invalid string"
ERR_TEXT[3] = b"invalid escape sequence"
ERR_TEXT[4] = b"invalid UTF-8"
ERR_TEXT[5] = b"control character in string"
ERR_TEXT[6] = b"invalid number"
ERR_TEXT[7] = b"invalid literal"
ERR_TEXT[8] = b"nested deeper than 512 levels"
ERR_TEXT[9] = b"extra data after the JSON value"
ERR_TEXT[10] = b"unexpected end of input"


cdef struct Acc:
    int64_t v[NF]    # raw provider fields (F_*), merged; normalized by UsageScanner.result
    # the provider's usage object(s) as received, wrapped (see raw_piece); raw_len -1: over
    # C_RAW_CAP (not kept).  raw_set: pend -- this document has some; acc -- some seen
    bint raw_set
    Py_ssize_t raw_len
    unsigned char raw[C_RAW_CAP]
    bint has_usage
    bint is_error
    bint model_set
    Py_ssize_t model_len
    unsigned char model[C_MODEL_CAP]

cdef struct URec:
    int status
    int fst[NF]
    int64_t fv[NF]
    int det_in
    int det_out
    int cc

cdef struct DocRec:
    int model_st0
    int model_st1
    Py_ssize_t model_len0
    Py_ssize_t model_len1
    unsigned char model_buf0[C_MODEL_CAP]
    unsigned char model_buf1[C_MODEL_CAP]
    bint err
    bint typ
    unsigned char type_buf[C_TYPE_CAP]
    URec u[2]
    # the bytes of u[i]'s object (-1: over C_RAW_CAP)
    Py_ssize_t raw_len[2]
    unsigned char raw[2][C_RAW_CAP]
    int choices
    # strip_usage_chunk: the single top-level "usage":null member
    int usage_members
    bint usage_null
    int64_t cut_start
    int64_t cut_end
    bint cut_pending

cdef struct ReqRec:
    bint root_not_obj
    int model
    bint model_esc
    int64_t model_start
    int64_t model_end
    int stream
    int sopt
    int incl
    int maxst[4]
    int64_t maxv[4]
    int gen
    # top-level members seen (bit = slot - SL_RMODEL) and the first repeated one (0: none)
    int seen
    int dup
    # spans for rewrite_request
    bint overflow
    int64_t root_start
    int n_model
    int64_t model_s[C_SPANS]
    int64_t model_e[C_SPANS]
    int n_sopt
    int64_t sopt_s[C_SPANS]
    int64_t sopt_e[C_SPANS]
    int sopt_kind[C_SPANS]
    int sopt_members[C_SPANS]
    int n_incl
    int64_t incl_s[C_SPANS]
    int64_t incl_e[C_SPANS]
    int incl_owner[C_SPANS]

cdef struct Walker:
    int api             # 0 for requests
    bint track          # strip_usage_chunk member tracking
    bint lenient        # responses: bytes >= 0x80 inside strings are not validated
    int state
    int depth
    int slot
    int root_kind
    unsigned char kind[C_MAX_DEPTH]
    unsigned char node[C_MAX_DEPTH]
    # string
    bint in_key
    int str_mode
    int str_slot
    int esc
    int u8need
    unsigned char u8lo
    unsigned char u8hi
    unsigned int uacc
    unsigned int pend_hi
    bint str_esc
    unsigned char *cap_buf
    Py_ssize_t cap_len
    Py_ssize_t cap_max
    bint cap_over
    bint cap_bad
    unsigned char key[C_KEY_CAP]
    # number
    int num_state
    int num_slot
    bint num_neg
    bint num_isint
    int num_digits
    int64_t num_val
    # literal
    const char *lit
    int lit_i
    int lit_n
    # value spans for depth 0..2
    int64_t vstart[3]
    int vslot[3]
    int vkind[3]
    int members1
    int members2
    int64_t last_end1
    int64_t prev_end1
    int64_t key_start1
    # error
    int err
    int64_t err_pos
    # records
    DocRec *doc
    ReqRec *req
    Acc *pend
    # usage object capture (responses): the buffer being walked, the open usage record
    const unsigned char *cur_buf
    int64_t cur_base
    int rec             # 0: none, else 1 + the record (u[rec - 1]) being captured
    Py_ssize_t rec_from # where the capture resumes in cur_buf


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
    return (SL_F <= slot < SL_F + 2 * NF) or (SL_RMAX <= slot < SL_RMAX + 4)


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
    if slot >= SL_F:
        i = slot - SL_F
        d.u[i // NF].fst[i % NF] = null_or_bad(kind)
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
    slot_scalar(w, slot, K_ARR)
    return ND_NONE


cdef inline int elem_slot(int node) noexcept nogil:
    if node == ND_DOCLIST:
        return SL_DOC
    if node == ND_CHOICES:
        return SL_CHOICE_ELEM
    return SL_NONE


cdef inline bint key_is(const unsigned char *k, Py_ssize_t n, const char *name, Py_ssize_t m) noexcept nogil:
    return n == m and memcmp(k, name, m) == 0


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
            if key_is(k, n, "output_tokens_details", 21):
                return SL_DETOUT1 if rec == 0 else SL_DETOUT2
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
    if r.status != ST_OK or r.det_in == ST_BAD or r.det_out == ST_BAD or r.cc == ST_BAD:
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
    cdef int i
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
    if urec_eval(r):
        raw_piece(a, d, i, api)
        for i in range(NF):
            a.v[i] = r.fv[i] if r.fst[i] == ST_OK else 0
        if r.fst[F_CR] != ST_OK and r.fst[F_HIT] == ST_OK:
            a.v[F_CR] = r.fv[F_HIT]
        a.has_usage = 1


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
        if slot == SL_MODEL1 or slot == SL_MODEL2 or slot == SL_TYPE:
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
            else:
                w.cap_buf = w.doc.type_buf
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


cdef void raw_copy(Walker *w, Py_ssize_t upto) noexcept nogil:
    """Append cur_buf[rec_from:upto] to the captured usage object."""
    cdef int i = w.rec - 1
    cdef Py_ssize_t n = upto - w.rec_from
    cdef Py_ssize_t have = w.doc.raw_len[i]
    if n > 0 and have >= 0:
        if have + n > C_RAW_CAP:
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
    if a.raw_len + n > C_RAW_CAP - 2:  # room for the "[" "]" around Anthropic's pieces
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
    else:
        raw_put(a, b'{"usage":', 9)
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
    elif w.rec and (w.node[depth] == ND_USAGE1 or w.node[depth] == ND_USAGE2):
        raw_copy(w, off - w.cur_base)
        w.rec = 0
    if depth <= 2:
        value_end(w, off)
    w.state = W_DONE if depth == 0 else W_AFTER


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
        else:
            i = slot - SL_F
            w.doc.u[i // NF].fst[i % NF] = st
            w.doc.u[i // NF].fv[i % NF] = w.num_val
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
        q = scalar_end(p, end, w.lenient)
        if q == NULL:
            break
        p = q
        st = W_COLON if (st == W_KEY or st == W_KEY_OR_CLOSE) else W_AFTER
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
    else:
        i = slot - SL_F
        w.doc.u[i // NF].fst[i % NF] = st
        w.doc.u[i // NF].fv[i % NF] = v
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
                    q = pf_scan_plain(p + 1, end)
                    if q < end and q[0] == b'"':
                        # a plain key complete in this buffer: look it up in place
                        key_mark(w, base + (p - buf))
                        w.slot = key_lookup(w, w.node[w.depth - 1], p + 1, q - p - 1)
                        w.state = W_COLON
                        p = q + 1
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
                    elif c == b'"' and (w.slot == SL_MODEL1 or w.slot == SL_MODEL2 or w.slot == SL_TYPE):
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


# ------------------------------------------------------------------------------------------
# request side

@cython.freelist(8)
@cython.final
cdef class RequestFields:
    """What the gateway needs from a request body."""

    cdef readonly object model
    cdef readonly bint stream
    cdef readonly object include_usage
    cdef readonly object max_output_tokens

    def __init__(self, model, bint stream, include_usage, max_output_tokens):
        self.model = model
        self.stream = stream
        self.include_usage = include_usage
        self.max_output_tokens = max_output_tokens

    def __repr__(self):
        return (
            f"RequestFields(model={self.model!r}, stream={self.stream!r}, "
            f"include_usage={self.include_usage!r}, max_output_tokens={self.max_output_tokens!r})"
        )

    def __eq__(self, other):
        if not isinstance(other, RequestFields):
            return NotImplemented
        return (self.model, self.stream, self.include_usage, self.max_output_tokens) == (
            other.model, other.stream, other.include_usage, other.max_output_tokens)

    __hash__ = None


cdef struct ReqScan:
    Walker w
    ReqRec r


cdef int req_walk(ReqScan *s, bytes body) except -1:
    cdef const unsigned char *buf = <const unsigned char *>PyBytes_AS_STRING(body)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(body)
    s.w.api = 0
    s.w.track = 0
    s.w.lenient = 0
    s.w.doc = NULL
    s.w.pend = NULL
    s.w.req = &s.r
    w_reset(&s.w)
    if n >= NOGIL_MIN:
        with nogil:
            w_feed(&s.w, buf, n, 0)
    else:
        w_feed(&s.w, buf, n, 0)
    w_end(&s.w, n)
    if s.w.state != W_DONE:
        raise ScanError(w_error_message(&s.w))
    return 0


cdef object req_max(ReqRec *r, int i, str key, object current):
    if r.maxst[i] == ST_BAD:
        raise ScanError(msg_max_type(key))
    if current is None and r.maxst[i] == ST_OK:
        return r.maxv[i]
    return current


cdef RequestFields req_fields(ReqRec *r, bytes body):
    cdef object model = None
    cdef object include_usage = None
    cdef object max_out = None
    cdef const char *buf
    if r.root_not_obj:
        raise ScanError(MSG_NOT_OBJECT)
    if r.dup:
        raise ScanError(msg_duplicate(DUPLICATE_NAMES[r.dup - SL_RMODEL]))
    if r.model == ST_BAD:
        raise ScanError(MSG_MODEL_TYPE)
    if r.model == ST_OK:
        if r.model_esc:
            model = decode_json_string(body[r.model_start:r.model_end])
            if has_lone_surrogate(model):
                raise ScanError(MSG_MODEL_SURROGATE)
        else:
            buf = PyBytes_AS_STRING(body)
            model = PyUnicode_DecodeUTF8(buf + r.model_start + 1, r.model_end - r.model_start - 2, NULL)
    if r.stream == ST_BAD:
        raise ScanError(MSG_STREAM_TYPE)
    if r.sopt == ST_BAD:
        raise ScanError(MSG_STREAM_OPTIONS_TYPE)
    if r.sopt == ST_OK:
        if r.incl == ST_BAD:
            raise ScanError(MSG_INCLUDE_USAGE_TYPE)
        if r.incl == ST_TRUE:
            include_usage = True
        elif r.incl == ST_FALSE:
            include_usage = False
    max_out = req_max(r, 0, "max_tokens", max_out)
    max_out = req_max(r, 1, "max_completion_tokens", max_out)
    max_out = req_max(r, 2, "max_output_tokens", max_out)
    if r.gen == ST_BAD:
        raise ScanError(MSG_GENERATION_CONFIG_TYPE)
    if r.gen == ST_OK:
        max_out = req_max(r, 3, "generationConfig.maxOutputTokens", max_out)
    return RequestFields(model, r.stream == ST_TRUE, include_usage, max_out)


def scan_request(bytes body not None):
    """Read model / stream / stream_options.include_usage / max tokens from a request body."""
    cdef ReqScan s
    req_walk(&s, body)
    return req_fields(&s.r, body)


_INCLUDE_USAGE_OBJECT = b'{"include_usage":true}'


def rewrite_request(bytes body not None, model=None, bint inject_include_usage=False):
    """Return ``body`` with the model replaced/inserted and/or include_usage forced on.

    Returns the same object when nothing had to change."""
    cdef ReqScan s
    cdef ReqRec *r = &s.r
    cdef int i, j
    cdef bint found
    req_walk(&s, body)
    req_fields(r, body)
    encoded = None if model is None else encode_json_string(model)
    if encoded is None and not inject_include_usage:
        return body
    if r.overflow:
        return _py_rewrite_request(body, model, inject_include_usage)
    edits = []
    inserts = []
    if encoded is not None:
        if r.n_model == 0:
            inserts.append(b'"model":' + encoded)
        for i in range(r.n_model):
            if body[r.model_s[i]:r.model_e[i]] != encoded:
                edits.append((r.model_s[i], r.model_e[i], encoded))
    if inject_include_usage:
        if r.n_sopt == 0:
            inserts.append(b'"stream_options":' + _INCLUDE_USAGE_OBJECT)
        for i in range(r.n_sopt):
            if r.sopt_kind[i] != K_OBJ:
                edits.append((r.sopt_s[i], r.sopt_e[i], _INCLUDE_USAGE_OBJECT))
                continue
            found = 0
            for j in range(r.n_incl):
                if r.incl_owner[j] == i:
                    found = 1
                    if body[r.incl_s[j]:r.incl_e[j]] != b"true":
                        edits.append((r.incl_s[j], r.incl_e[j], b"true"))
            if not found:
                edits.append((r.sopt_s[i] + 1, r.sopt_s[i] + 1,
                              b'"include_usage":true' + (b"," if r.sopt_members[i] else b"")))
    if inserts:
        edits.append((r.root_start + 1, r.root_start + 1,
                      b",".join(inserts) + (b"," if s.w.members1 else b"")))
    if not edits:
        return body
    edits.sort()
    out = []
    pos = 0
    for start, end, replacement in edits:
        out.append(body[pos:start])
        out.append(replacement)
        pos = end
    out.append(body[pos:])
    return b"".join(out)


# ------------------------------------------------------------------------------------------
# response side

@cython.freelist(8)
@cython.final
cdef class Usage:
    """Token usage read from a response body or stream."""

    cdef readonly int64_t input_tokens
    cdef readonly int64_t output_tokens
    cdef readonly int64_t cache_read_tokens
    cdef readonly int64_t cache_write_tokens
    cdef readonly int64_t reasoning_tokens
    cdef readonly bint has_usage
    cdef readonly object model
    cdef readonly bint is_error
    cdef readonly int64_t tool_use_prompt_tokens
    cdef readonly int64_t cache_write_1h_tokens
    cdef readonly int64_t audio_input_tokens
    cdef readonly int64_t audio_output_tokens

    def __init__(self, int64_t input_tokens=0, int64_t output_tokens=0, int64_t cache_read_tokens=0,
                 int64_t cache_write_tokens=0, int64_t reasoning_tokens=0, bint has_usage=False,
                 model=None, bint is_error=False, int64_t tool_use_prompt_tokens=0,
                 int64_t cache_write_1h_tokens=0, int64_t audio_input_tokens=0,
                 int64_t audio_output_tokens=0):
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.cache_read_tokens = cache_read_tokens
        self.cache_write_tokens = cache_write_tokens
        self.reasoning_tokens = reasoning_tokens
        self.has_usage = has_usage
        self.model = model
        self.is_error = is_error
        self.tool_use_prompt_tokens = tool_use_prompt_tokens
        self.cache_write_1h_tokens = cache_write_1h_tokens
        self.audio_input_tokens = audio_input_tokens
        self.audio_output_tokens = audio_output_tokens

    def _key(self):
        return (self.input_tokens, self.output_tokens, self.cache_read_tokens,
                self.cache_write_tokens, self.reasoning_tokens, self.has_usage, self.model,
                self.is_error, self.tool_use_prompt_tokens, self.cache_write_1h_tokens,
                self.audio_input_tokens, self.audio_output_tokens)

    def __repr__(self):
        return (
            f"Usage(input_tokens={self.input_tokens}, output_tokens={self.output_tokens}, "
            f"cache_read_tokens={self.cache_read_tokens}, "
            f"cache_write_tokens={self.cache_write_tokens}, "
            f"reasoning_tokens={self.reasoning_tokens}, has_usage={self.has_usage}, "
            f"model={self.model!r}, is_error={self.is_error}, "
            f"tool_use_prompt_tokens={self.tool_use_prompt_tokens}, "
            f"cache_write_1h_tokens={self.cache_write_1h_tokens}, "
            f"audio_input_tokens={self.audio_input_tokens}, "
            f"audio_output_tokens={self.audio_output_tokens})"
        )

    def __eq__(self, other):
        if not isinstance(other, Usage):
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None


cdef enum:
    MODE_UNDECIDED = 0
    MODE_SSE
    MODE_JSON

cdef enum:
    L_START = 0
    L_FIELD
    L_DATA_SP
    L_DATA
    L_EVENT_SP
    L_EVENT
    L_SKIP

cdef enum:
    DEC_KEEP = 0
    DEC_DROP
    DEC_CUT

cdef const unsigned char *NEWLINE = b"\n"


cdef inline int64_t min64(int64_t a, int64_t b) noexcept nogil:
    return a if a < b else b


cdef void normalize(int api, const int64_t *v, Usage u) noexcept:
    """The row convention (see plano_fast.wire._scan_py, "Normalized usage") from raw fields."""
    cdef int64_t inp, out, cr, cw, cw1h = 0, rs, tool = 0, ain = 0, aout = 0
    if api == A_ANTH:
        cr = v[F_CR]
        cw = v[F_CW]
        if v[F_CW5] + v[F_CW1H] > cw:
            cw = v[F_CW5] + v[F_CW1H]
        cw1h = v[F_CW1H]
        inp = v[F_IN] + cr + cw
        out = v[F_OUT]
        rs = v[F_RS]
    elif api == A_GEM:
        tool = v[F_TOOL]
        inp = v[F_IN] + tool
        cr = v[F_CR]
        cw = 0
        rs = v[F_RS]
        out = v[F_OUT] + rs
    else:
        inp = v[F_IN]
        cr = v[F_CR]
        cw = v[F_CW]
        rs = v[F_RS]
        out = v[F_OUT]
        if api == A_CHAT:
            ain = v[F_AIN]
            aout = v[F_AOUT]
            if rs > 0 and v[F_TOT] == inp + out + rs:
                out += rs  # reasoning reported outside completion_tokens (xAI)
    # subsets never exceed their totals (a malformed object must not bill negative tokens)
    cr = min64(cr, inp)
    cw = min64(cw, inp - cr)
    u.input_tokens = inp
    u.cache_read_tokens = cr
    u.cache_write_tokens = cw
    u.cache_write_1h_tokens = min64(cw1h, cw)
    u.tool_use_prompt_tokens = min64(tool, inp)
    u.audio_input_tokens = min64(ain, inp - cr - cw)
    u.output_tokens = out
    u.reasoning_tokens = min64(rs, out)
    u.audio_output_tokens = min64(aout, out)


@cython.freelist(8)
@cython.final
cdef class UsageScanner:
    """Incremental usage reader for one response body (see plano_fast.wire._scan_py)."""

    cdef Walker w
    cdef DocRec doc
    cdef Acc acc
    cdef Acc pend
    cdef int api
    cdef int mode
    cdef bint strip
    cdef bint finished
    cdef int64_t gpos
    cdef int64_t json_len
    cdef bint json_over
    # SSE
    cdef int lstate
    cdef bint pending_cr
    cdef unsigned char fbuf[8]
    cdef int flen
    cdef unsigned char ebuf[8]
    cdef int elen
    cdef int data_lines
    cdef int64_t data_len
    cdef bint data_over
    # strip_usage_chunk
    cdef bytearray held
    cdef int64_t region_len
    cdef int64_t region_start
    cdef bint flushed
    cdef bint decision_pending
    cdef int decision
    cdef int64_t cut_s
    cdef int64_t cut_e
    # result cache
    cdef object model_obj
    cdef bint model_valid

    def __cinit__(self, int api, bint streaming, bint strip_usage_chunk=False):
        if api < A_CHAT or api > A_GEM:
            raise ValueError(f"unknown api {api!r}")
        if strip_usage_chunk and (api != A_CHAT or not streaming):
            raise ValueError(
                "strip_usage_chunk is only supported for streamed OpenAI chat completions")
        # the object memory is zeroed by tp_alloc: only non-zero fields are set here
        self.w.doc = &self.doc
        self.w.req = NULL
        self.w.pend = &self.pend
        self.w.lenient = 1
        self.api = api
        self.w.api = api
        self.strip = strip_usage_chunk
        self.w.track = strip_usage_chunk
        self.model_valid = 1
        if strip_usage_chunk:
            self.held = bytearray()
        if streaming:
            self.mode = MODE_UNDECIDED
        else:
            self.mode = MODE_JSON
            self.doc_start()

    # -- accumulator --------------------------------------------------------------------------

    cdef inline void doc_start(self) noexcept:
        """A new JSON document (body or event) begins: reset the walker, copy acc to pend."""
        w_reset(&self.w)
        memcpy(self.pend.v, self.acc.v, sizeof(self.acc.v))
        self.pend.has_usage = self.acc.has_usage
        self.pend.is_error = self.acc.is_error
        self.pend.model_set = 0
        self.pend.raw_set = 0
        self.pend.raw_len = 0

    cdef inline void commit(self) noexcept:
        memcpy(self.acc.v, self.pend.v, sizeof(self.acc.v))
        if self.pend.raw_set:
            self.acc.raw_set = 1
            if self.api != A_ANTH:
                self.acc.raw_len = self.pend.raw_len
                if self.pend.raw_len > 0:
                    memcpy(self.acc.raw, self.pend.raw, self.pend.raw_len)
            elif self.pend.raw_len < 0:
                self.acc.raw_len = -1
            else:
                if self.acc.raw_len > 0:
                    raw_put(&self.acc, b",", 1)
                raw_put(&self.acc, self.pend.raw, self.pend.raw_len)
        self.acc.has_usage = self.pend.has_usage
        self.acc.is_error = self.acc.is_error or self.pend.is_error
        if self.pend.model_set:
            if (not self.acc.model_set or self.acc.model_len != self.pend.model_len
                    or memcmp(self.acc.model, self.pend.model, self.pend.model_len) != 0):
                self.acc.model_set = 1
                self.acc.model_len = self.pend.model_len
                memcpy(self.acc.model, self.pend.model, self.pend.model_len)
                self.model_valid = 0

    # -- public API ---------------------------------------------------------------------------

    def feed(self, bytes data not None):
        """Scan the next piece of the body; returns the bytes to forward now."""
        cdef const unsigned char *buf = <const unsigned char *>PyBytes_AS_STRING(data)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        cdef Py_ssize_t k
        cdef object out
        if self.finished:
            raise ValueError("feed() called after finish()")
        if n == 0:
            return data
        if self.mode == MODE_JSON:
            self.json_feed(buf, n)
            self.gpos += n
            return data
        if self.mode == MODE_UNDECIDED:
            k = 0
            while k < n and (buf[k] == b' ' or buf[k] == b'\t' or buf[k] == b'\r' or buf[k] == b'\n'):
                k += 1
            if k < n:
                if buf[k] == b'{' or buf[k] == b'[':
                    self.mode = MODE_JSON
                    self.doc_start()
                    self.json_feed(buf + k, n - k)
                    self.gpos += n
                    if self.strip and len(self.held):
                        out = bytes(self.held) + data
                        self.held.clear()
                        return out
                    return data
                self.mode = MODE_SSE
        out = self.sse(buf, n, data)
        self.gpos += n
        if not self.strip:
            return data
        if out is None:
            return b""
        if len(out) == n and out == data:
            return data
        return bytes(out)

    def finish(self):
        """End of body: returns any held-back bytes to forward (usually b"")."""
        cdef object out = None
        if self.finished:
            return b""
        self.finished = 1
        if self.mode == MODE_JSON:
            if not self.json_over and self.json_len and w_end(&self.w, self.gpos):
                self.commit()
            return b""
        self.pending_cr = 0
        if self.strip and self.decision_pending:
            out = self.apply_decision(out, None, 0, 0)
        if self.lstate == L_FIELD:
            self.field_line_end()
        elif self.lstate == L_EVENT or self.lstate == L_EVENT_SP:
            self.event_line_end()
        self.lstate = L_START
        if self.data_lines:
            self.dispatch()
        if self.strip:
            out = self.apply_decision(out, None, 0, 0)
            return bytes(out)
        return b""

    def raw_usage(self):
        """The provider's usage object(s) as received, in a document that scans (with this
        API, not streaming) to the same counts; ``None`` when no usage was read or the
        document would exceed MAX_RAW_USAGE_BYTES (see plano_fast.wire._scan_py)."""
        cdef Acc *a = &self.acc
        if not a.has_usage or not a.raw_set or a.raw_len <= 0:
            return None
        doc = PyBytes_FromStringAndSize(<const char *>a.raw, a.raw_len)
        if self.api == A_ANTH:
            return b"[" + doc + b"]"
        return doc

    def result(self):
        """The usage read so far (final after finish())."""
        cdef Usage u = Usage.__new__(Usage)
        normalize(self.api, self.acc.v, u)
        u.has_usage = self.acc.has_usage
        u.is_error = self.acc.is_error
        if not self.model_valid:
            self.model_obj = PyUnicode_DecodeUTF8(<const char *>self.acc.model, self.acc.model_len, NULL)
            self.model_valid = 1
        u.model = self.model_obj
        return u

    # -- non-streamed JSON --------------------------------------------------------------------

    cdef inline void json_feed(self, const unsigned char *buf, Py_ssize_t n) noexcept:
        if self.json_over:
            return
        self.json_len += n
        if self.json_len > C_MAX_BODY:
            self.json_over = 1
            return
        if n >= NOGIL_MIN:
            with nogil:
                w_feed_cap(&self.w, buf, n, self.gpos)
        else:
            w_feed_cap(&self.w, buf, n, self.gpos)

    # -- SSE ------------------------------------------------------------------------------------

    cdef inline void data_line_start(self) noexcept:
        if self.data_lines == 0:
            self.doc_start()
        else:
            self.data_bytes(NEWLINE, 1, -1)
        self.data_lines += 1

    cdef inline void data_bytes(self, const unsigned char *p, Py_ssize_t n, int64_t off) noexcept:
        if self.data_over:
            return
        self.data_len += n
        if self.data_len > C_MAX_EVENT:
            self.data_over = 1
            return
        w_feed_cap(&self.w, p, n, off)

    cdef void field_line_end(self) noexcept:
        """A line without ':' ended: the whole line is the field name, value empty."""
        if self.flen == 4 and memcmp(self.fbuf, b"data", 4) == 0:
            self.data_line_start()

    cdef void event_line_end(self) noexcept:
        if self.elen == 5 and memcmp(self.ebuf, b"error", 5) == 0:
            self.acc.is_error = 1

    cdef void dispatch(self) noexcept:
        """Blank line: the pending event (if any) is complete."""
        cdef DocRec *d = &self.doc
        self.decision = DEC_KEEP
        if self.data_lines == 0:
            return
        if not self.data_over and w_end(&self.w, 0):
            self.commit()
            if self.strip and self.w.root_kind == K_OBJ:
                if d.choices == CH_EMPTY and d.u[0].status == ST_OK and not d.err:
                    self.decision = DEC_DROP
                elif self.data_lines == 1 and d.usage_members == 1 and d.usage_null:
                    self.decision = DEC_CUT
                    self.cut_s = d.cut_start - self.region_start
                    self.cut_e = d.cut_end - self.region_start
        self.data_lines = 0
        self.data_len = 0
        self.data_over = 0

    cdef object apply_decision(self, object out, object data, Py_ssize_t a, Py_ssize_t b):
        """The current region (held + data[a:b]) is complete: forward, drop or cut it."""
        cdef int64_t rlen = self.region_len + (b - a)
        cdef bytes region
        if out is None:
            out = bytearray()
        if self.flushed or rlen > C_MAX_HOLD or self.decision == DEC_KEEP:
            if len(self.held):
                out += self.held
            if b > a:
                out += memoryview(data)[a:b]
        elif self.decision == DEC_CUT:
            region = bytes(self.held)
            if b > a:
                region += data[a:b]
            out += memoryview(region)[:self.cut_s]
            out += memoryview(region)[self.cut_e:]
        self.held.clear()
        self.region_len = 0
        self.flushed = 0
        self.decision = DEC_KEEP
        self.decision_pending = 0
        self.region_start = self.gpos + b
        return out

    cdef object region_tail(self, object out, object data, Py_ssize_t a, Py_ssize_t n):
        """Chunk ended inside a region: hold data[a:n] (or forward it past the cap)."""
        if a >= n:
            return out
        self.region_len += n - a
        if out is None:
            out = bytearray()
        if self.flushed:
            out += memoryview(data)[a:n]
            return out
        self.held += memoryview(data)[a:n]
        if self.region_len > C_MAX_HOLD:
            out += self.held
            self.held.clear()
            self.flushed = 1
        return out

    cdef object sse(self, const unsigned char *buf, Py_ssize_t n, object data):
        cdef Py_ssize_t i = 0
        cdef Py_ssize_t j
        cdef Py_ssize_t emit_from = 0
        cdef unsigned char c
        cdef int ls
        cdef object out = None
        cdef bint strip = self.strip
        cdef bint blank
        if self.pending_cr:
            self.pending_cr = 0
            if buf[0] == b'\n':
                i = 1
        if strip and self.decision_pending:
            out = self.apply_decision(out, data, 0, i)
            emit_from = i
        while i < n:
            ls = self.lstate
            if ls == L_START:
                c = buf[i]
                if c == b'\n' or c == b'\r':
                    blank = 1
                elif c == b':':
                    self.lstate = L_SKIP
                    i += 1
                    continue
                elif c == b'd' and n - i >= 5 and memcmp(buf + i, b"data:", 5) == 0:
                    i += 5
                    self.data_line_start()
                    self.lstate = L_DATA_SP
                    continue
                else:
                    self.lstate = L_FIELD
                    self.flen = 0
                    continue
            elif ls == L_DATA:
                j = pf_find_eol(buf + i, buf + n) - buf
                if j > i:
                    self.data_bytes(buf + i, j - i, self.gpos + i)
                i = j
                if i == n:
                    break
                blank = 0
            elif ls == L_SKIP:
                i = pf_find_eol(buf + i, buf + n) - buf
                if i == n:
                    break
                blank = 0
            elif ls == L_FIELD:
                while i < n:
                    c = buf[i]
                    if c == b':' or c == b'\n' or c == b'\r':
                        break
                    if self.flen < 8:
                        self.fbuf[self.flen] = c
                    self.flen += 1
                    i += 1
                if i == n:
                    break
                if buf[i] == b':':
                    i += 1
                    if self.flen == 4 and memcmp(self.fbuf, b"data", 4) == 0:
                        self.data_line_start()
                        self.lstate = L_DATA_SP
                    elif self.flen == 5 and memcmp(self.fbuf, b"event", 5) == 0:
                        self.elen = 0
                        self.lstate = L_EVENT_SP
                    else:
                        self.lstate = L_SKIP
                    continue
                self.field_line_end()
                blank = 0
            elif ls == L_DATA_SP or ls == L_EVENT_SP:
                if buf[i] == b' ':
                    i += 1
                self.lstate = L_DATA if ls == L_DATA_SP else L_EVENT
                continue
            else:  # L_EVENT
                while i < n:
                    c = buf[i]
                    if c == b'\n' or c == b'\r':
                        break
                    if self.elen < 8:
                        self.ebuf[self.elen] = c
                    self.elen += 1
                    i += 1
                if i == n:
                    break
                self.event_line_end()
                blank = 0
            # buf[i] is a line terminator
            c = buf[i]
            i += 1
            if c == b'\r':
                if i < n:
                    if buf[i] == b'\n':
                        i += 1
                else:
                    self.pending_cr = 1
            self.lstate = L_START
            if blank:
                self.dispatch()
                if strip:
                    if self.pending_cr:
                        self.decision_pending = 1
                    else:
                        out = self.apply_decision(out, data, emit_from, i)
                        emit_from = i
        if strip:
            out = self.region_tail(out, data, emit_from, n)
        return out
