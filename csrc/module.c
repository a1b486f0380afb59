/*
 * module.c - sermas_bus._core: module state, exception hierarchy, types,
 * and the runtime check of the paho.mqtt.c library.
 *
 * Multi-phase init; everything lives in module state (no static types or
 * global module pointers: those are where shutdown-order crashes live).
 */
#include "sb.h"
#include "keeper.h"

#include <cjson/cJSON.h>

#include <stdio.h>
#include <string.h>

#define SB_MIN_PAHO_MAJOR 1
#define SB_MIN_PAHO_MINOR 3
#define SB_MIN_PAHO_PATCH 8     /* cleanstart, httpHeaders (connect options v8) */

static struct PyModuleDef sb_module;

sb_state *
sb_get_state_by_type(PyTypeObject *tp)
{
    PyObject *mod = PyType_GetModuleByDef(tp, &sb_module);
    if (mod == NULL)
        return NULL;
    return (sb_state *)PyModule_GetState(mod);
}

static sb_state *
get_state(PyObject *mod)
{
    return (sb_state *)PyModule_GetState(mod);
}

/* One entry of paho's runtime version information ("Version": e.g.
 * "1.3.12"; "OpenSSL version": the OpenSSL paho runs with), or NULL. */
static const char *
paho_runtime_info(const char *name)
{
    MQTTClient_nameValue *info = MQTTClient_getVersionInfo();
    for (; info && info->name; info++)
        if (strcmp(info->name, name) == 0)
            return info->value;
    return NULL;
}

static const char *
paho_runtime_version(void)
{
    return paho_runtime_info("Version");
}

static PyObject *
sb_set_properties_factory(PyObject *mod, PyObject *factory)
{
    sb_state *st = get_state(mod);
    if (!PyCallable_Check(factory)) {
        PyErr_SetString(PyExc_TypeError, "properties factory must be callable");
        return NULL;
    }
    Py_XSETREF(st->properties_factory, Py_NewRef(factory));
    Py_RETURN_NONE;
}

/* MQTTMessageInfo (a PublishInfo subclass) and its rc values, from Python */
static PyObject *
sb_set_info_type(PyObject *mod, PyObject *args)
{
    sb_state *st = get_state(mod);
    PyObject *tp, *lookup;
    if (!PyArg_ParseTuple(args, "O!O!:_set_info_type", &PyType_Type, &tp, &PyDict_Type, &lookup))
        return NULL;
    if (!PyType_IsSubtype((PyTypeObject *)tp, st->InfoType)) {
        PyErr_SetString(PyExc_TypeError, "info type must subclass PublishInfo");
        return NULL;
    }
    Py_XSETREF(st->InfoSubtype, (PyTypeObject *)Py_NewRef(tp));
    Py_XSETREF(st->rc_lookup, Py_NewRef(lookup));
    Py_RETURN_NONE;
}

static PyObject *
sb_reason_string(PyObject *mod, PyObject *arg)
{
    long v = PyLong_AsLong(arg);
    if (v == -1 && PyErr_Occurred())
        return NULL;
    return PyUnicode_FromString(sb_reason_text((int)v));
}

static PyObject *
sb_keeper_park(PyObject *mod, PyObject *unused)
{
    /* before fork() with no connection open: let paho's receive thread stop
     * so the child inherits an idle paho (the keeper would keep it running) */
    Py_BEGIN_ALLOW_THREADS
    sb_keeper_park_nogil();
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyMethodDef sb_functions[] = {
    {"_keeper_park", sb_keeper_park, METH_NOARGS,
     "_keeper_park()\n--\n\nBefore fork(): stop the connect keeper (paho's receive thread stops)."},
    {"_set_properties_factory", sb_set_properties_factory, METH_O,
     "_set_properties_factory(factory, /)\n--\n\nfactory(packet_type, pairs) builds Properties objects."},
    {"_set_info_type", sb_set_info_type, METH_VARARGS,
     "_set_info_type(cls, rc_lookup, /)\n--\n\npublish() returns cls instances; rc maps through rc_lookup."},
    {"reason_string", sb_reason_string, METH_O,
     "reason_string(code, /)\n--\n\nCONNACK / MQTT 5 reason code in words."},
    {NULL}
};

/* Create an exception type, add it to the module and keep it in state.
 * Every step is checked (the ADD_EXCEPTION habit of CPython's _sqlite). */
static int
add_exception(PyObject *mod, PyObject **slot, const char *name, PyObject *bases, const char *doc)
{
    char qualname[128];
    snprintf(qualname, sizeof qualname, "sermas_bus.errors.%s", name);
    *slot = PyErr_NewExceptionWithDoc(qualname, doc, bases, NULL);
    Py_DECREF(bases);
    if (*slot == NULL)
        return -1;
    return PyModule_AddObjectRef(mod, name, *slot);
}

#define ADD_EXC(field, name, bases, doc) \
    do { \
        PyObject *b_ = (bases); \
        if (b_ == NULL || add_exception(mod, &st->field, name, b_, doc) < 0) \
            return -1; \
    } while (0)

/* paho.mqtt.c records its allocations in a tree that MQTTClient_create
 * sets up when the library is not initialised (Heap_initialize, a memset of
 * the tree), and MQTTClient_terminate ends when the last handle goes.
 * Until the first create, what paho allocates is never released by its own
 * free (properties converted before any handle exists -- a publish while
 * offline, the durable store's restore -- lost 470 bytes each; found by
 * fuzz/fuzz_core.c's properties harness); and each later re-initialisation
 * forgets the allocations alive then, and resets the tree under any thread
 * converting properties at that moment.  So one handle, never connected and
 * never destroyed, keeps the library initialised for the process's life
 * (an unconnected handle starts no thread and holds no socket).  Returns
 * paho's rc. */
static int
init_paho_anchor(void)
{
    static MQTTClient anchor = NULL;
    int rc = MQTTCLIENT_SUCCESS;
    if (anchor != NULL)
        return rc;   /* another interpreter imported us first */
    /* a paho call: no GIL (the rule; nothing else runs paho yet) */
    Py_BEGIN_ALLOW_THREADS
    rc = MQTTClient_create(&anchor, "tcp://127.0.0.1:1", "sermas-bus-anchor", MQTTCLIENT_PERSISTENCE_NONE,
                           NULL);
    Py_END_ALLOW_THREADS
    if (rc != MQTTCLIENT_SUCCESS)
        anchor = NULL;
    return rc;
}

static int
sb_exec(PyObject *mod)
{
    sb_state *st = get_state(mod);
    const char *ver = paho_runtime_version();
    int major = 0, minor = 0, patch = 0;

    if (ver == NULL || sscanf(ver, "%d.%d.%d", &major, &minor, &patch) < 2) {
        PyErr_SetString(PyExc_ImportError, "sermas_bus: cannot read the paho.mqtt.c version");
        return -1;
    }
    if (major < SB_MIN_PAHO_MAJOR ||
        (major == SB_MIN_PAHO_MAJOR && (minor < SB_MIN_PAHO_MINOR ||
                                        (minor == SB_MIN_PAHO_MINOR && patch < SB_MIN_PAHO_PATCH)))) {
        PyErr_Format(PyExc_ImportError,
                     "sermas_bus needs paho.mqtt.c >= %d.%d.%d, found %s; upgrade libpaho-mqtt1.3",
                     SB_MIN_PAHO_MAJOR, SB_MIN_PAHO_MINOR, SB_MIN_PAHO_PATCH, ver);
        return -1;
    }
    if (init_paho_anchor() != MQTTCLIENT_SUCCESS) {
        PyErr_SetString(PyExc_ImportError, "sermas_bus: paho.mqtt.c could not create a client (out of memory?)");
        return -1;
    }
    if (PyModule_AddStringConstant(mod, "paho_version", ver) < 0)
        return -1;
    if (PyModule_AddStringConstant(mod, "paho_library", "paho-mqtt3cs") < 0)
        return -1;
    /* the libraries actually loaded (a repaired wheel bundles its own) */
    if (PyModule_AddStringConstant(mod, "cjson_version", cJSON_Version()) < 0)
        return -1;
    {
        const char *ssl = paho_runtime_info("OpenSSL version");
        if (PyModule_AddStringConstant(mod, "openssl_version", ssl ? ssl : "") < 0)
            return -1;
    }

    ADD_EXC(Error, "SermasBusError", PyTuple_Pack(1, PyExc_Exception),
            "Base class of every sermas_bus error.");
    ADD_EXC(ConnectError, "ConnectError", PyTuple_Pack(2, st->Error, PyExc_ConnectionError),
            "The connection to the broker could not be established.");
    ADD_EXC(NotAuthorizedError, "NotAuthorizedError", PyTuple_Pack(1, st->ConnectError),
            "The broker refused the credentials (bad/expired token, not authorised).");
    /* also an ssl.SSLError, the type paho-mqtt raises for a failed handshake */
    {
        PyObject *ssl_mod = PyImport_ImportModule("ssl");
        PyObject *ssl_error = ssl_mod ? PyObject_GetAttrString(ssl_mod, "SSLError") : NULL;
        Py_XDECREF(ssl_mod);
        if (ssl_error == NULL)
            return -1;
        /* ssl.SSLError's own __str__ prints a one-argument error as a tuple:
         * keep BaseException's, so the message reads as written */
        PyObject *dict = PyDict_New();
        PyObject *str_ = PyObject_GetAttrString((PyObject *)PyExc_BaseException, "__str__");
        PyObject *bases = PyTuple_Pack(2, st->ConnectError, ssl_error);
        int bad = dict == NULL || str_ == NULL || bases == NULL || PyDict_SetItemString(dict, "__str__", str_) < 0;
        Py_DECREF(ssl_error);
        Py_XDECREF(str_);
        if (!bad) {
            st->TLSError = PyErr_NewExceptionWithDoc(
                "sermas_bus.errors.TLSError",
                "The TLS handshake failed (certificate, host name, protocol); also an ssl.SSLError.",
                bases, dict);
            bad = st->TLSError == NULL || PyModule_AddObjectRef(mod, "TLSError", st->TLSError) < 0;
        }
        Py_XDECREF(dict);
        Py_XDECREF(bases);
        if (bad)
            return -1;
    }
    ADD_EXC(ProtocolVersionError, "ProtocolVersionError", PyTuple_Pack(1, st->ConnectError),
            "The broker does not accept the requested MQTT protocol version.");
    ADD_EXC(ConnectionLostError, "ConnectionLostError", PyTuple_Pack(2, st->Error, PyExc_ConnectionError),
            "The connection was lost before the operation completed.");
    ADD_EXC(NotConnectedError, "NotConnectedError", PyTuple_Pack(2, st->Error, PyExc_ConnectionError),
            "The operation needs a connection and there is none.");
    ADD_EXC(TimeoutError, "TimeoutError", PyTuple_Pack(2, st->Error, PyExc_TimeoutError),
            "An operation did not complete in time.");
    ADD_EXC(ProtocolError, "ProtocolError", PyTuple_Pack(2, st->Error, PyExc_ValueError),
            "An option cannot be expressed in the MQTT version in use.");
    ADD_EXC(PublishError, "PublishError", PyTuple_Pack(1, st->Error),
            "The broker refused a publish (MQTT 5 reason code >= 0x80).");
    ADD_EXC(SubscribeError, "SubscribeError", PyTuple_Pack(1, st->Error),
            "A subscribe or unsubscribe was refused or failed.");
    ADD_EXC(ForkError, "ForkError", PyTuple_Pack(2, st->Error, PyExc_RuntimeError),
            "A client created before fork() was used in the child.");
    ADD_EXC(ClosedError, "ClosedError", PyTuple_Pack(2, st->Error, PyExc_RuntimeError),
            "The client was closed.");
    ADD_EXC(PersistenceError, "PersistenceError", PyTuple_Pack(2, st->Error, PyExc_OSError),
            "The durable outbox (persistence=) could not be opened or written.");
    ADD_EXC(PersistenceLockedError, "PersistenceLockedError", PyTuple_Pack(1, st->PersistenceError),
            "The persistence directory is in use by another live client.");
    ADD_EXC(PersistenceFullError, "PersistenceFullError", PyTuple_Pack(1, st->PersistenceError),
            "The durable outbox holds its persistence_max_bytes of undelivered messages.");

    st->MessageType = (PyTypeObject *)PyType_FromModuleAndSpec(mod, &sb_message_spec, NULL);
    if (st->MessageType == NULL || PyModule_AddType(mod, st->MessageType) < 0)
        return -1;
    st->InfoType = (PyTypeObject *)PyType_FromModuleAndSpec(mod, &sb_info_spec, NULL);
    if (st->InfoType == NULL || PyModule_AddType(mod, st->InfoType) < 0)
        return -1;
    st->ConnectionType = (PyTypeObject *)PyType_FromModuleAndSpec(mod, &sb_connection_spec, NULL);
    if (st->ConnectionType == NULL || PyModule_AddType(mod, st->ConnectionType) < 0)
        return -1;
    if (sb_topics_init(mod, st) < 0)
        return -1;
    if (PyModule_AddIntConstant(mod, "PUB_PENDING", SB_PUB_PENDING) < 0 ||
        PyModule_AddIntConstant(mod, "PUB_DONE", SB_PUB_DONE) < 0 ||
        PyModule_AddIntConstant(mod, "PUB_FAILED", SB_PUB_FAILED) < 0 ||
        PyModule_AddIntConstant(mod, "PUB_LOST", SB_PUB_LOST) < 0)
        return -1;
    if (sb_json_exec(mod, st) < 0)
        return -1;
    return 0;
}

static int
sb_traverse(PyObject *mod, visitproc visit, void *arg)
{
    sb_state *st = get_state(mod);
    Py_VISIT(st->ConnectionType);
    Py_VISIT(st->MessageType);
    Py_VISIT(st->InfoType);
    Py_VISIT(st->InfoSubtype);
    Py_VISIT(st->rc_lookup);
    Py_VISIT(st->TopicTableType);
    Py_VISIT(st->FilterTrieType);
    Py_VISIT(st->Error);
    Py_VISIT(st->ConnectError);
    Py_VISIT(st->NotAuthorizedError);
    Py_VISIT(st->TLSError);
    Py_VISIT(st->ProtocolVersionError);
    Py_VISIT(st->ConnectionLostError);
    Py_VISIT(st->NotConnectedError);
    Py_VISIT(st->TimeoutError);
    Py_VISIT(st->ProtocolError);
    Py_VISIT(st->PublishError);
    Py_VISIT(st->SubscribeError);
    Py_VISIT(st->ForkError);
    Py_VISIT(st->ClosedError);
    Py_VISIT(st->PersistenceError);
    Py_VISIT(st->PersistenceLockedError);
    Py_VISIT(st->PersistenceFullError);
    Py_VISIT(st->properties_factory);
    return sb_json_traverse(st, visit, arg);
}

static int
sb_clear(PyObject *mod)
{
    sb_state *st = get_state(mod);
    Py_CLEAR(st->ConnectionType);
    Py_CLEAR(st->MessageType);
    Py_CLEAR(st->InfoType);
    Py_CLEAR(st->InfoSubtype);
    Py_CLEAR(st->rc_lookup);
    Py_CLEAR(st->TopicTableType);
    Py_CLEAR(st->FilterTrieType);
    Py_CLEAR(st->Error);
    Py_CLEAR(st->ConnectError);
    Py_CLEAR(st->NotAuthorizedError);
    Py_CLEAR(st->TLSError);
    Py_CLEAR(st->ProtocolVersionError);
    Py_CLEAR(st->ConnectionLostError);
    Py_CLEAR(st->NotConnectedError);
    Py_CLEAR(st->TimeoutError);
    Py_CLEAR(st->ProtocolError);
    Py_CLEAR(st->PublishError);
    Py_CLEAR(st->SubscribeError);
    Py_CLEAR(st->ForkError);
    Py_CLEAR(st->ClosedError);
    Py_CLEAR(st->PersistenceError);
    Py_CLEAR(st->PersistenceLockedError);
    Py_CLEAR(st->PersistenceFullError);
    Py_CLEAR(st->properties_factory);
    sb_json_clear(st);
    return 0;
}

static void
sb_free(void *mod)
{
    sb_clear((PyObject *)mod);
}

static PyModuleDef_Slot sb_slots[] = {
    {Py_mod_exec, sb_exec},
#ifdef Py_mod_multiple_interpreters
    /* paho's threads and process-wide state cannot be shared between interpreters */
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#endif
#ifdef Py_mod_gil
    /* What is true today: the Python-side state of a Connection, a filter
     * trie or a topic table (their dicts, lists, callbacks and caches) is
     * guarded by the GIL, not by locks of ours; a free-threaded build
     * re-enables the GIL when it imports us rather than race */
    {Py_mod_gil, Py_MOD_GIL_USED},
#endif
    {0, NULL}
};

static struct PyModuleDef sb_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "sermas_bus._core",
    .m_doc = "C core of sermas_bus: MQTT over paho.mqtt.c with a batched, GIL-free receive path.",
    .m_size = sizeof(sb_state),
    .m_methods = sb_functions,
    .m_slots = sb_slots,
    .m_traverse = sb_traverse,
    .m_clear = sb_clear,
    .m_free = sb_free,
};

PyMODINIT_FUNC
PyInit__core(void)
{
    return PyModuleDef_Init(&sb_module);
}
