/*
 * compat.h - the few newer CPython C API calls the core uses, for the older
 * versions we support (3.9+): the 3.10 reference helpers and module/type
 * lookups (json.c adds 3.10's datetime tzinfo accessor after datetime.h), and 3.12's PyErr_GetRaisedException/PyErr_SetRaisedException.
 * Each is what the newer CPython itself does; on 3.12+ this file is empty.
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

#endif /* PY_VERSION_HEX < 3.10 */

/* 3.12's single-object exception API, which replaces the deprecated
 * PyErr_Fetch/PyErr_NormalizeException/PyErr_Restore triple */
#if PY_VERSION_HEX < 0x030C0000

static inline PyObject *
PyErr_GetRaisedException(void)
{
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    if (et == NULL)
        return NULL;
    PyErr_NormalizeException(&et, &ev, &tb);
    if (tb != NULL && ev != NULL)
        PyException_SetTraceback(ev, tb);
    Py_DECREF(et);
    Py_XDECREF(tb);
    return ev;
}

static inline void
PyErr_SetRaisedException(PyObject *exc)
{
    if (exc == NULL) {
        PyErr_Clear();
        return;
    }
    Py_INCREF(Py_TYPE(exc));
    PyErr_Restore((PyObject *)Py_TYPE(exc), exc, PyException_GetTraceback(exc));
}

#endif /* PY_VERSION_HEX < 3.12 */

#endif /* SB_COMPAT_H */
