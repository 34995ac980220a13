# _scan_defs.pxi: the C limits, the walker's enums (states, slots, nodes, fields) and its structs
# Included by _scan.pyx (one C module: inlining across pieces is unchanged).

# ------------------------------------------------------------------------------------------
# limits and the public constants (equal to plano_fast.wire._shared's: tests/test_scan.py checks)

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

# MAX_TOKEN_COUNT as a C value: a sum of counts is capped here
cdef int64_t C_MAX_COUNT = 999999999999999999

cdef enum:
    # APIs
    A_CHAT = 1
    A_RESP = 2
    A_ANTH = 3
    A_GEM = 4

# The Python names are made from the C values here (importing them from _shared instead
# measured 2-4% slower on the stream micro-benchmarks: a bigger module init moved the hot
# functions; the instructions per call were the same).
API_OPENAI_CHAT = 1
API_OPENAI_RESPONSES = 2
API_ANTHROPIC = 3
API_GEMINI = 4
MAX_DEPTH = C_MAX_DEPTH
MAX_BODY_BYTES = C_MAX_BODY
MAX_EVENT_BYTES = C_MAX_EVENT
MAX_HOLD_BYTES = C_MAX_HOLD
MAX_MODEL_BYTES = C_MODEL_CAP
MAX_TOKEN_COUNT = 999_999_999_999_999_999  # 10**C_MAX_DIGITS - 1
MAX_RAW_USAGE_BYTES = C_RAW_CAP

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
    SL_STU1          # Anthropic usage.server_tool_use
    SL_STU2
    SL_F = 20        # 20..35 record 0, 36..51 record 1 (NF fields each)
    SL_MLIST_IN = 52 # Gemini usageMetadata.promptTokensDetails (a ModalityTokenCount list)
    SL_MLIST_CR      # .cacheTokensDetails
    SL_MLIST_OUT     # .candidatesTokensDetails
    SL_MELEM         # an element of one of them
    SL_MODALITY      # its modality (captured: "AUDIO", "IMAGE" or another: MOD_*)
    SL_MCOUNT        # its tokenCount
    SL_TIER1 = 58    # a service_tier string: the document's (OpenAI) / usage's (Anthropic)
    SL_TIER2         # ... the nested object's (Responses' response) / message.usage's (Anthropic)
    SL_RMODEL = 60
    SL_RSTREAM
    SL_RSOPT
    SL_RINCL
    SL_RMAX = 64     # 64..67
    SL_RGEN = 68
    SL_RMSGS = 69    # 69..72: messages, contents, input, system (only noted: DUPLICATE_NAMES)

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
    ND_STU1
    ND_STU2
    ND_MLIST         # a Gemini ModalityTokenCount list (DocRec.mlist: the field it adds to)
    ND_MELEM         # one of its elements

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
    F_WS             # Anthropic server_tool_use.web_search_requests (requests, not tokens)
    F_CAUD           # Gemini cacheTokensDetails AUDIO (F_AIN / F_AOUT: prompt / candidates AUDIO)
    F_TIER           # the service tier (a TIER_* code): Anthropic's usage.service_tier; OpenAI's,
                     # beside the usage object, copied in from DocRec.tier_* when it counts
    F_IOUT           # Gemini candidatesTokensDetails IMAGE (generated images: their own price)
    NF               # fields per usage record

cdef enum:
    # the modality of a Gemini ModalityTokenCount element (DocRec.m_kind): the ones read
    MOD_OTHER = 0
    MOD_AUDIO
    MOD_IMAGE

cdef enum:
    # service tier codes (the twin's _TIER_*; Usage.service_tier by TIER_NAMES)
    TIER_ABSENT = 0
    TIER_STANDARD
    TIER_FLEX
    TIER_PRIORITY
    TIER_OTHER

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
    # C_RAW_CAP bytes, malloc'ed at the first byte kept (raw_buf), freed by the scanner's
    # __dealloc__: most scanners never keep a usage object, and zeroing four inline 4 KiB
    # buffers at every UsageScanner allocation cost ~20k instructions per request
    unsigned char *raw
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
    int stu

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
    unsigned char *raw[2]  # as Acc.raw
    int choices
    # strip_usage_chunk: the single top-level "usage":null member
    int usage_members
    bint usage_null
    int64_t cut_start
    int64_t cut_end
    bint cut_pending
    # Gemini ModalityTokenCount lists (one open at a time): the field the open list adds its
    # AUDIO counts to (candidates: IMAGE counts to F_IOUT), and the element being read
    int mlist
    int m_kind
    int m_cst
    int64_t m_cv
    unsigned char mod_buf[C_TYPE_CAP]
    # OpenAI's service_tier beside the usage objects: [0] the document's, [1] the nested
    # response object's (state, TIER_* code); folded into the usage record that counts
    int tier_st[2]
    int64_t tier_v[2]
    unsigned char tier_buf[C_TYPE_CAP]

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
