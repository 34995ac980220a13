# _scan_usage.pxi: the response side: Usage, the row convention (normalize), UsageScanner and its SSE layer
# Included by _scan.pyx (one C module: inlining across pieces is unchanged).

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
    cdef readonly int64_t web_search_requests
    cdef readonly object service_tier
    cdef readonly int64_t image_output_tokens
    cdef readonly int64_t audio_cache_read_tokens

    def __init__(self, int64_t input_tokens=0, int64_t output_tokens=0, int64_t cache_read_tokens=0,
                 int64_t cache_write_tokens=0, int64_t reasoning_tokens=0, bint has_usage=False,
                 model=None, bint is_error=False, int64_t tool_use_prompt_tokens=0,
                 int64_t cache_write_1h_tokens=0, int64_t audio_input_tokens=0,
                 int64_t audio_output_tokens=0, int64_t web_search_requests=0, service_tier=None,
                 int64_t image_output_tokens=0, int64_t audio_cache_read_tokens=0):
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
        self.web_search_requests = web_search_requests
        self.service_tier = service_tier
        self.image_output_tokens = image_output_tokens
        self.audio_cache_read_tokens = audio_cache_read_tokens

    def _key(self):
        return (self.input_tokens, self.output_tokens, self.cache_read_tokens,
                self.cache_write_tokens, self.reasoning_tokens, self.has_usage, self.model,
                self.is_error, self.tool_use_prompt_tokens, self.cache_write_1h_tokens,
                self.audio_input_tokens, self.audio_output_tokens, self.web_search_requests,
                self.service_tier, self.image_output_tokens, self.audio_cache_read_tokens)

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
            f"audio_output_tokens={self.audio_output_tokens}, "
            f"web_search_requests={self.web_search_requests}, "
            f"service_tier={self.service_tier!r}, "
            f"image_output_tokens={self.image_output_tokens}, "
            f"audio_cache_read_tokens={self.audio_cache_read_tokens})"
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
cdef const unsigned char *UTF8_BOM = b"\xef\xbb\xbf"

# Usage.service_tier of the TIER_* codes other than standard (the twin's TIER_NAMES)
cdef object TIER_NAME_FLEX = "flex"
cdef object TIER_NAME_PRIORITY = "priority"
cdef object TIER_NAME_OTHER = "unknown"


cdef inline int64_t min64(int64_t a, int64_t b) noexcept nogil:
    return a if a < b else b


cdef void normalize(int api, const int64_t *v, Usage u) noexcept:
    """The row convention (see plano_fast.wire._scan_py, "Normalized usage") from raw fields."""
    cdef int64_t inp, out, cr, cw, cw1h = 0, rs, tool = 0, ain = 0, aout = 0, ws = 0, iout = 0, acr = 0
    if api == A_ANTH:
        cr = v[F_CR]
        cw = v[F_CW]
        if v[F_CW5] + v[F_CW1H] > cw:
            cw = v[F_CW5] + v[F_CW1H]
        cw1h = v[F_CW1H]
        inp = v[F_IN] + cr + cw
        out = v[F_OUT]
        rs = v[F_RS]
        ws = v[F_WS]
    elif api == A_GEM:
        tool = v[F_TOOL]
        inp = v[F_IN] + tool
        cr = v[F_CR]
        cw = 0
        rs = v[F_RS]
        out = v[F_OUT] + rs
        # audio is priced apart (ai.google.dev/gemini-api/docs/pricing); cached audio is a
        # cache read (in cachedContentTokenCount), not an uncached audio token
        ain = v[F_AIN] - v[F_CAUD] if v[F_AIN] > v[F_CAUD] else 0
        aout = v[F_AOUT]
        # ... as are generated images ($30 per 1M for gemini-2.5-flash-image, its text $2.50)
        # and cached audio (the cache read's audio part)
        iout = v[F_IOUT]
        acr = v[F_CAUD]
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
    aout = min64(aout, out)
    u.audio_output_tokens = aout
    u.image_output_tokens = min64(iout, out - aout)
    u.audio_cache_read_tokens = min64(acr, cr)
    u.web_search_requests = ws
    if v[F_TIER] == TIER_FLEX:
        u.service_tier = TIER_NAME_FLEX
    elif v[F_TIER] == TIER_PRIORITY:
        u.service_tier = TIER_NAME_PRIORITY
    elif v[F_TIER] == TIER_OTHER:
        u.service_tier = TIER_NAME_OTHER


cdef int _not_set_up() except -1:
    """A scanner's Python entries refuse one ``__init__`` never set up (the C entries are
    reached only through ``usage_scanner_c``, which sets it up)."""
    raise TypeError("UsageScanner was not initialised: construct it as UsageScanner(api, streaming)")


@cython.freelist(64)
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
    # bytes of a leading UTF-8 BOM seen so far (0 at the start: the memory is zeroed); -1
    # once the body's start is decided (plano_fast.wire._scan_py, "Validity")
    cdef int bom
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

    # The checks and fields are set by ``setup``, called by ``__init__`` or, from C, by
    # ``usage_scanner_c``: a ``__cinit__`` with arguments made every construction from C a
    # type call with an argument tuple parsed (~0.65k instructions a request).  (Without a
    # ``__cinit__`` nothing checks the constructor's arguments but ``__init__``.)
    def __init__(self, int api, bint streaming, bint strip_usage_chunk=False):
        if self.api:
            raise TypeError("UsageScanner.__init__ called twice")
        self.setup(api, streaming, strip_usage_chunk)

    cdef int setup(self, int api, bint streaming, bint strip_usage_chunk) except -1:
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
        return 0

    def __dealloc__(self):
        # the raw-usage buffers (raw_buf) back to the pool
        raw_release(self.acc.raw)
        raw_release(self.pend.raw)
        raw_release(self.doc.raw[0])
        raw_release(self.doc.raw[1])

    cdef bint raw_fill(self) noexcept:
        """Take all four raw-usage buffers now, with the GIL held: the walker may need them
        while the GIL is released (raw_buf must not touch the pool then).  False when a
        malloc failed: the caller then keeps the GIL."""
        return (raw_buf(&self.acc.raw) & raw_buf(&self.pend.raw)
                & raw_buf(&self.doc.raw[0]) & raw_buf(&self.doc.raw[1]))

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
                if self.pend.raw_len > 0:  # swap the buffers: pend's is scratch from here on
                    self.acc.raw, self.pend.raw = self.pend.raw, self.acc.raw
            elif self.pend.raw_len < 0:
                self.acc.raw_len = -1
            else:
                if self.acc.raw_len > 0:
                    raw_put(&self.acc, b",", 1)
                if self.pend.raw_len > 0:
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
        cdef Py_ssize_t k, skip = 0
        cdef object out
        if self.api == 0:  # made by __new__ without __init__: its walker points nowhere
            _not_set_up()
        if self.finished:
            raise ValueError("feed() called after finish()")
        if n == 0:
            return data
        if self.bom >= 0:
            skip = self.take_bom(buf, n)
            if self.bom > 0:  # the body so far is the start of a BOM: nothing to read yet
                self.gpos += n
                if self.strip:
                    self.region_len += n
                    self.held += data
                    return b""
                return data
        if self.mode == MODE_JSON:
            if n > skip:
                self.json_feed(buf + skip, n - skip)
            self.gpos += n
            return data
        if self.mode == MODE_UNDECIDED:
            k = skip
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
        out = self.sse(buf, n, data, skip)
        self.gpos += n
        if not self.strip:
            return data
        if out is None:
            return b""
        if len(out) == n and out == data:
            return data
        return bytes(out)

    def feed_from(self, bytes data not None, Py_ssize_t start):
        """``feed(data[start:])`` without that copy: None when the bytes to forward are
        exactly ``data[start:]`` (always, unless the scanner strips the usage chunk), else
        those bytes.

        Why: the compiled answer pass (``gateway/_answer.pyx``) has the body inside the
        upstream read, after the head; the slice was a bytes object per answer (~0.4k
        instructions), copied again into the client's answer."""
        if self.api == 0:  # made by __new__ without __init__: its walker points nowhere
            _not_set_up()
        return self.feed_from_c(data, start)

    cdef object feed_from_c(self, bytes data, Py_ssize_t start):
        cdef const unsigned char *buf
        cdef Py_ssize_t n, k, skip = 0
        if start < 0 or start > PyBytes_GET_SIZE(data):
            raise ValueError("start is outside data")
        if self.strip:
            return self.feed(data[start:])
        if self.finished:
            raise ValueError("feed() called after finish()")
        buf = <const unsigned char *>PyBytes_AS_STRING(data) + start
        n = PyBytes_GET_SIZE(data) - start
        if n == 0:
            return None
        if self.bom >= 0:
            skip = self.take_bom(buf, n)
            if self.bom > 0:  # the body so far is the start of a BOM
                self.gpos += n
                return None
        if self.mode == MODE_UNDECIDED:
            k = skip
            while k < n and (buf[k] == b' ' or buf[k] == b'\t' or buf[k] == b'\r' or buf[k] == b'\n'):
                k += 1
            if k < n:
                if buf[k] == b'{' or buf[k] == b'[':
                    self.mode = MODE_JSON
                    self.doc_start()
                    self.json_feed(buf + k, n - k)
                    self.gpos += n
                    return None
                self.mode = MODE_SSE
        if self.mode == MODE_JSON:
            if n > skip:
                self.json_feed(buf + skip, n - skip)
        else:
            self.sse(buf, n, None, skip)  # (``data`` is read only when stripping)
        self.gpos += n
        return None

    cdef Py_ssize_t take_bom(self, const unsigned char *buf, Py_ssize_t n) noexcept:
        """At the body's start: how many bytes of ``buf`` continue a leading UTF-8 BOM (all of
        them while it is incomplete); when the body does not start with one, the bytes earlier
        feeds took are read as what they are (the twin's ``_take_bom``) and 0 is returned."""
        cdef int have = self.bom
        cdef Py_ssize_t i = 0
        while i < n and have + i < 3 and buf[i] == UTF8_BOM[have + i]:
            i += 1
        if have + i == 3:
            self.bom = -1
            return i
        if i == n:
            self.bom = <int>(have + i)
            return n
        self.bom = -1
        if have:
            if self.mode == MODE_JSON:
                self.json_feed(UTF8_BOM, have)
            else:  # an SSE line whose field name starts with these bytes (never a known one)
                self.mode = MODE_SSE
                self.lstate = L_FIELD
                self.flen = have
                memcpy(self.fbuf, UTF8_BOM, have)
        return 0

    def finish(self):
        """End of body: returns any held-back bytes to forward (usually b"")."""
        if self.api == 0:  # made by __new__ without __init__: its walker points nowhere
            _not_set_up()
        return self.finish_c()

    cdef object finish_c(self):
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
        if self.api == 0:  # made by __new__ without __init__: its walker points nowhere
            _not_set_up()
        return self.raw_usage_c()

    def result(self):
        """The usage read so far (final after finish())."""
        if self.api == 0:  # made by __new__ without __init__: its walker points nowhere
            _not_set_up()
        return self.result_c()

    def usage_fields(self):
        """``result()._key() + (raw_usage(),)``: the counts, the model, the error flag and
        the raw usage document in one call.

        Why: the settle step's usage event (``gateway/_settle.pyx``) took them with three
        Python calls and a ``Usage`` object (~1.3k instructions a request)."""
        cdef Usage u = self.result_c()
        if self.api == 0:  # made by __new__ without __init__: its walker points nowhere
            _not_set_up()
        return (u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens,
                u.reasoning_tokens, u.has_usage, u.model, u.is_error, u.tool_use_prompt_tokens,
                u.cache_write_1h_tokens, u.audio_input_tokens, u.audio_output_tokens,
                u.web_search_requests, u.service_tier, u.image_output_tokens, u.audio_cache_read_tokens,
                self.raw_usage_c())

    cdef object raw_usage_c(self):
        cdef Acc *a = &self.acc
        if not a.has_usage or not a.raw_set or a.raw_len <= 0:
            return None
        doc = PyBytes_FromStringAndSize(<const char *>a.raw, a.raw_len)
        if self.api == A_ANTH:
            return b"[" + doc + b"]"
        return doc

    cdef Usage result_c(self):
        cdef Usage u = Usage.__new__(Usage)
        normalize(self.api, self.acc.v, u)
        if self.api == A_ANTH and not self.acc.has_usage:
            # only message_start's usage counted: its output_tokens is a placeholder, not a
            # count (the twin's result(), plano_fast.wire._scan_py): no output reported
            u.output_tokens = 0
            u.reasoning_tokens = 0
            u.audio_output_tokens = 0
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
        if n >= NOGIL_MIN and self.raw_fill():
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

    cdef object sse(self, const unsigned char *buf, Py_ssize_t n, object data, Py_ssize_t start):
        """``buf[start:n]`` read as SSE (``start``: past a leading BOM, which still belongs to
        the first region when stripping)."""
        cdef Py_ssize_t i = start
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


# -- the C entries (``_scan.pxd``): the Python API's bodies, for compiled callers ----------------

cdef object usage_scanner_c(int api, bint streaming, bint strip_usage_chunk):
    """``UsageScanner(api, streaming, strip_usage_chunk)``."""
    cdef UsageScanner s = UsageScanner.__new__(UsageScanner)
    s.setup(api, streaming, strip_usage_chunk)
    return s


cdef object feed_from_c(object scanner, bytes data, Py_ssize_t start):
    """``scanner.feed_from(data, start)``."""
    if data is None:
        raise TypeError("data must be bytes, not None")
    return (<UsageScanner?>scanner).feed_from_c(data, start)


cdef object finish_c(object scanner):
    """``scanner.finish()``."""
    return (<UsageScanner?>scanner).finish_c()


cdef int has_usage_c(object scanner) except -1:
    """``scanner.result().has_usage`` without the ``Usage`` object (result_c's flag)."""
    return (<UsageScanner?>scanner).acc.has_usage


cdef int reads_json_aside_c(object scanner) except -1:
    """Whether ``scanner`` reads one JSON body without touching what is relayed: not
    stripping a usage chunk, in JSON mode (a request that does not stream), nothing fed
    yet.  Its ``feed_from`` then returns None and its ``finish`` b"" whatever the bytes,
    and neither can fail (the JSON walk is ``noexcept``), so the compiled answer pass
    (``gateway/_answer.pyx``) writes the client's answer first and reads its usage after
    (issue 27: concurrency 1 waits for what runs before the write, not after)."""
    cdef UsageScanner s = <UsageScanner?>scanner
    return not s.strip and s.mode == MODE_JSON and not s.finished and s.gpos == 0
