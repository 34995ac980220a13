# cython: language_level=3
"""Reading and writing a ``__slots__`` class's fields in place, for the compiled modules
that handle usage records per event (``billing/_drain.pyx``, ``store/_params.pyx``) and
the compiled request passes (``_serve.pyx``, ``gateway/_*.pyx``).

Each slot of a class with ``__slots__`` is an object pointer at a fixed offset of the
instance, which its member descriptor names (``PyMemberDef.offset``, type ``T_OBJECT_EX``).
``slot_offset`` reads it from the descriptor (ImportError, so the caller's module is not
used and its pure twin is, when the field is not such a slot); ``get_slot`` / ``put_slot``
then do what the descriptor's ``__get__`` / ``__set__`` do (``PyMember_GetOne`` /
``PyMember_SetOne``) without the attribute lookup around them (~140 instructions a field).
Only for an instance of exactly that class (the caller checks ``type(obj) is cls``): a
subclass could lay its slots out differently.  ``get_slot`` is NULL for an unset slot (the
caller takes ``getattr``, which raises its AttributeError).  Neither can raise: both are
``noexcept`` (else Cython 3 tests ``PyErr_Occurred`` after every call, ~4 instructions a
field, ~65 calls a usage row).
"""

from cpython.object cimport Py_TYPE, PyObject, PyTypeObject
from cpython.ref cimport Py_INCREF, Py_XDECREF

cdef extern from "structmember.h":
    ctypedef struct PyMemberDef:
        int type
        Py_ssize_t offset
    int T_OBJECT_EX

cdef extern from "descrobject.h":
    ctypedef struct PyMemberDescrObject:
        PyMemberDef *d_member
    PyTypeObject PyMemberDescr_Type  # types.MemberDescriptorType


cdef inline Py_ssize_t slot_offset(object cls, str name) except -1:
    """The offset of ``cls``' object slot ``name`` (ImportError: not one)."""
    descr = cls.__dict__.get(name)
    if Py_TYPE(descr) is not &PyMemberDescr_Type:
        raise ImportError(f"{cls.__name__}.{name} is not a slot: the pure twin is used")
    cdef PyMemberDef *member = (<PyMemberDescrObject*><PyObject*>descr).d_member
    if member.type != T_OBJECT_EX:
        raise ImportError(f"{cls.__name__}.{name} is not an object slot: the pure twin is used")
    return member.offset


cdef inline PyObject *get_slot(object obj, Py_ssize_t offset) noexcept:
    return (<PyObject**>((<char*><PyObject*>obj) + offset))[0]


cdef inline object slot_or_attr(object obj, Py_ssize_t offset, str name):
    """The slot at ``offset`` of ``obj``; an unset one is read as the attribute ``name``,
    which raises its AttributeError as the attribute read would.  (The request passes
    cimport it as ``_get``.)"""
    cdef PyObject *value = get_slot(obj, offset)
    if value == NULL:
        return getattr(obj, name)
    return <object>value


cdef inline void put_slot(object obj, Py_ssize_t offset, object value) noexcept:
    cdef PyObject **slot = <PyObject**>((<char*><PyObject*>obj) + offset)
    cdef PyObject *old = slot[0]
    Py_INCREF(value)
    slot[0] = <PyObject*>value
    Py_XDECREF(old)


cdef inline object new_instance(type cls):
    """``object.__new__(cls)`` without a Python-level call: the class's own ``tp_new`` (for
    a ``__slots__`` class without ``__new__``, object's: an allocation, slots unset) with
    no arguments.  The call through ``object.__new__`` builds an argument tuple and goes
    through ``tp_new_wrapper``: ~0.25k instructions more, five times a request."""
    cdef tuple no_args = ()
    return (<PyTypeObject*>cls).tp_new(cls, <PyObject*>no_args, NULL)


cdef extern from "Python.h":
    void PyObject_GC_UnTrack(void *op)
    PyTypeObject PyUnicode_Type
    PyTypeObject PyLong_Type
    PyTypeObject PyFloat_Type
    PyTypeObject PyBool_Type
    PyObject *Py_None


cdef inline void untrack_if_scalars(object obj, const Py_ssize_t *offsets, Py_ssize_t n) noexcept:
    """Take ``obj`` out of the cyclic GC's lists when each of its slots at ``offsets`` is
    unset or holds None, an exact str, int, float or bool: an object referring to no
    container can be in no reference cycle (CPython untracks such tuples and dicts
    itself).  For the usage records, whose fields are all scalars and are only ever set
    to scalars: queued by the hundred until a flush, they were most of what each young
    collection scanned (~1.5k objects a collection, ~2.6% of a firewall gateway's CPU at
    saturation).  A record that holds anything else stays tracked.  Deallocation
    untracks again, which is a no-op for an untracked object."""
    cdef Py_ssize_t i
    cdef PyObject *value
    cdef PyTypeObject *kind
    for i in range(n):
        value = get_slot(obj, offsets[i])
        if value == NULL or value == Py_None:
            continue
        kind = Py_TYPE(<object>value)
        if kind != &PyUnicode_Type and kind != &PyLong_Type and kind != &PyFloat_Type and kind != &PyBool_Type:
            return
    PyObject_GC_UnTrack(<void *><PyObject *>obj)
