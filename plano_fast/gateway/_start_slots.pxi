# The names every compiled start reads alike (``_config.pyx``, ``_firewall.pyx``,
# ``_managed.pyx`` include this file; each then adds its own): the offsets of the slots
# of the exchange, its context, the request and the client's headers
# (``plano_fast/_slots.pxd``), the classes a value is checked against before those slots
# are read (``type(x) is _Request``: a subclass could lay them out differently), and the
# wire functions, held as C globals (no module-dict lookup per request).  Written once so
# a slot renamed in one class is renamed for all three; at import, an offset that is not
# a slot raises ImportError and the including module's twin is used.
#
# The including module has imported ``slot_offset`` (cimport), ``Exchange``,
# ``ExchangeContext``, ``Request``, ``ClientHeaders``, ``Credential`` and ``wire`` as
# ``_wire``.

cdef Py_ssize_t X_CTX = slot_offset(Exchange, "ctx")
cdef Py_ssize_t X_REQUEST = slot_offset(Exchange, "request")
cdef Py_ssize_t X_CLIENT = slot_offset(Exchange, "client")
cdef Py_ssize_t X_PROVIDER_ID = slot_offset(Exchange, "provider_id")
cdef Py_ssize_t X_MODEL = slot_offset(Exchange, "model")
cdef Py_ssize_t X_STREAMING = slot_offset(Exchange, "streaming")
cdef Py_ssize_t X_WIRE_FORMAT = slot_offset(Exchange, "wire_format")
cdef Py_ssize_t X_SCAN_API = slot_offset(Exchange, "scan_api")
cdef Py_ssize_t X_SCANNER = slot_offset(Exchange, "scanner")
cdef Py_ssize_t X_REQUEST_ID = slot_offset(Exchange, "request_id")
cdef Py_ssize_t X_UPSTREAM_DATA = slot_offset(Exchange, "upstream_data")
cdef Py_ssize_t X_ORIGIN = slot_offset(Exchange, "origin")

cdef Py_ssize_t C_GUARDRAILS = slot_offset(ExchangeContext, "guardrails")
cdef Py_ssize_t C_RATELIMITS = slot_offset(ExchangeContext, "ratelimits")

cdef Py_ssize_t Q_METHOD = slot_offset(Request, "method")
cdef Py_ssize_t Q_BODY = slot_offset(Request, "body")

cdef Py_ssize_t H_OPERATOR_BLOCK = slot_offset(ClientHeaders, "operator_block")
cdef Py_ssize_t H_REQUEST_ID = slot_offset(ClientHeaders, "request_id")
cdef Py_ssize_t H_CREDENTIAL = slot_offset(ClientHeaders, "credential")
cdef Py_ssize_t K_SECRET = slot_offset(Credential, "secret")

cdef type _Context = ExchangeContext
cdef type _Request = Request
cdef type _ClientHeaders = ClientHeaders
cdef type _Credential = Credential
cdef object _scan_request = _wire.scan_request
cdef object _ScanError = _wire.ScanError
cdef object _UsageScanner = _wire.UsageScanner
cdef object _content_length_line = _wire.content_length_line
