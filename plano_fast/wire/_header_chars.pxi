# Header character classes both HTTP fast paths read (_request.pyx: request heads;
# _head.pyx: response heads), written once.  Included (textual): each module keeps its own
# 512 bytes of tables, filled when it is imported, and reads them with no indirection.

# RFC 9110 5.6.2 tchar (header names); field-value bytes (visible, SP, HTAB, obs-text).
cdef unsigned char TCHAR[256]
cdef unsigned char VALUE[256]


cdef void _init_header_chars():
    cdef int c
    for c in range(256):
        TCHAR[c] = 0
        VALUE[c] = 1 if c >= 32 and c != 127 else 0
    for c in b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ":
        TCHAR[c] = 1
    VALUE[9] = 1


_init_header_chars()
