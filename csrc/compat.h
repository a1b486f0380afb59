/*
 * compat.h - the few CPython C API calls of 3.10+ that the core uses, for
 * CPython 3.9 (the oldest we support).  Each is what CPython 3.10 itself
 * does; on 3.10 and later this file is empty.
 */
#ifndef SB_COMPAT_H
#define SB_COMPAT_H

#include <Python.h>

#if PY_VERSION_HEX < 0x030A0000

static inline PyObject *
Py_NewRef(PyObject *o)
{
    Py_INCREF(o);
    return o;
}

static inline PyObject *
Py_XNewRef(PyObject *o)
{
    Py_XINCREF(o);
    return o;
}

/* like PyModule_AddObject, but never steals: the caller keeps its reference */
static inline int
PyModule_AddObjectRef(PyObject *mod, const char *name, PyObject *value)
{
    int rc;
    if (value == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_SystemError, "PyModule_AddObjectRef() must be called with an exception "
                                               "raised if value is NULL");
        return -1;
    }
    Py_INCREF(value);
    rc = PyModule_AddObject(mod, name, value);
    if (rc < 0)
        Py_DECREF(value);
    return rc;
}

/* the module of the first heap type along type's MRO made from def */
static inline PyObject *
PyType_GetModuleByDef(PyTypeObject *type, PyModuleDef *def)
{
    PyObject *mro = type->tp_mro;
    Py_ssize_t i;
    for (i = 0; mro != NULL && i < PyTuple_GET_SIZE(mro); i++) {
        PyTypeObject *base = (PyTypeObject *)PyTuple_GET_ITEM(mro, i);
        if (PyType_HasFeature(base, Py_TPFLAGS_HEAPTYPE)) {
            PyObject *mod = ((PyHeapTypeObject *)base)->ht_module;
            if (mod != NULL && PyModule_GetDef(mod) == def)
                return mod;
        }
    }
    PyErr_Format(PyExc_TypeError, "PyType_GetModuleByDef: no superclass of '%s' has the given module",
                 type->tp_name);
    return NULL;
}

/* for files that include datetime.h */
#define SB_DATETIME_TZINFO(o) \
    (((_PyDateTime_BaseTZInfo *)(o))->hastzinfo ? ((PyDateTime_DateTime *)(o))->tzinfo : Py_None)

#else

#define SB_DATETIME_TZINFO(o) PyDateTime_DATE_GET_TZINFO(o)

#endif /* PY_VERSION_HEX < 3.10 */

#endif /* SB_COMPAT_H */
