# _scan_request.pxi: the request side: RequestFields, scan_request, rewrite_request
# Included by _scan.pyx (one C module: inlining across pieces is unchanged).

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


# The last model name decoded from a request (its UTF-8 bytes, the str): clients send the
# same few names over and over, so the str is handed out again (its hash already computed
# for the routing and pricing look-ups) rather than decoded anew; ~0.3k instructions.
cdef bytes _last_model_utf8 = b""
cdef object _last_model = None


cdef object model_str(const char *p, Py_ssize_t n):
    """``p[:n]`` (a JSON string's content without escapes, valid UTF-8: the walker checked
    it) decoded."""
    global _last_model_utf8, _last_model
    if (_last_model is not None and PyBytes_GET_SIZE(_last_model_utf8) == n
            and memcmp(PyBytes_AS_STRING(_last_model_utf8), p, n) == 0):
        return _last_model
    model = PyUnicode_DecodeUTF8(p, n, NULL)
    _last_model_utf8 = PyBytes_FromStringAndSize(p, n)
    _last_model = model
    return model


cdef object req_max(ReqRec *r, int i, str key, object current):
    if r.maxst[i] == ST_BAD:
        raise ScanError(msg_max_type(key))
    # the largest cap given: the value is an upper bound (a managed reservation), and
    # providers differ on which member wins (vLLM: max_completion_tokens over max_tokens)
    if r.maxst[i] == ST_OK and (current is None or r.maxv[i] > current):
        return r.maxv[i]
    return current


cdef RequestFields req_fields(ReqRec *r, bytes body):
    cdef object model = None
    cdef object include_usage = None
    cdef object max_out = None
    cdef const char *buf
    cdef RequestFields fields
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
            model = model_str(buf + r.model_start + 1, r.model_end - r.model_start - 2)
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
    # (its slots written here: the class call parsed four arguments into __init__, ~0.15k)
    fields = <RequestFields>RequestFields.__new__(RequestFields)
    fields.model = model
    fields.stream = r.stream == ST_TRUE
    fields.include_usage = include_usage
    fields.max_output_tokens = max_out
    return fields


def scan_request(bytes body not None):
    """Read model / stream / stream_options.include_usage / max tokens from a request body."""
    return scan_request_c(body)


cdef object scan_request_c(bytes body):
    """``scan_request`` for compiled callers (``_scan.pxd``)."""
    cdef ReqScan s
    if body is None:
        raise TypeError("body must be bytes, not None")
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
