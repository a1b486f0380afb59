/*
 * info.c - PublishInfo: what publish() returns, built in C so that the hot
 * path creates one small object and no Python frame.  sermas_bus.client
 * subclasses it as MQTTMessageInfo (wait_for_publish, is_published, ...).
 */
#include "sb.h"

#include <structmember.h>

typedef struct {
    PyObject_HEAD
    int mid;
    int rc;
    sb_out *out;       /* the outbox record (one reference), NULL for QoS 0 sent at once */
    PyObject *conn;    /* the Connection, to wait on; strong reference */
    PyObject *topic;   /* for error messages */
} sb_info;

/* Not a GC type: an info refers only to its Connection and topic, neither of
 * which can refer back to it, so it can never be part of a cycle (and one
 * is created per publish: skipping GC tracking is measurable). */
static void
info_dealloc(sb_info *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    if (self->out != NULL) {
        /* the record's references are guarded by the connection's mu; its
         * holders never wait for the GIL, so taking it here cannot deadlock */
        sb_client *c = (sb_client *)self->conn;
        pthread_mutex_lock(&c->mu);
        sb_out_release_locked(self->out);
        pthread_mutex_unlock(&c->mu);
        self->out = NULL;
    }
    Py_CLEAR(self->conn);
    Py_CLEAR(self->topic);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

/* GIL held.  tp: the registered subclass (or the base type).  out: a
 * record whose reference the new object takes over (NULL: none). */
PyObject *
sb_info_new(sb_state *st, int rc, int mid, sb_out *out, PyObject *conn, PyObject *topic)
{
    PyTypeObject *tp = st->InfoSubtype ? st->InfoSubtype : st->InfoType;
    sb_info *self = (sb_info *)tp->tp_alloc(tp, 0);
    if (self == NULL)
        return NULL;   /* the caller still owns out's reference */
    self->rc = rc;
    self->mid = mid;
    self->out = out;
    self->conn = Py_NewRef(conn);
    self->topic = Py_NewRef(topic);
    return (PyObject *)self;
}

/* The record behind an info object of conn (borrowed; NULL for a QoS 0
 * publish sent at once).  -1 with TypeError for anything else. */
int
sb_info_record(sb_state *st, PyObject *info, PyObject *conn, sb_out **out)
{
    if (!PyObject_TypeCheck(info, st->InfoType) || ((sb_info *)info)->conn != conn) {
        PyErr_SetString(PyExc_TypeError, "expected a PublishInfo returned by this connection's publish()");
        return -1;
    }
    *out = ((sb_info *)info)->out;
    return 0;
}

static PyObject *
info_new(PyTypeObject *tp, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"mid", "rc", NULL};
    int mid = 0, rc = 0;
    sb_info *self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|ii:MQTTMessageInfo", kwlist, &mid, &rc))
        return NULL;
    self = (sb_info *)tp->tp_alloc(tp, 0);
    if (self == NULL)
        return NULL;
    self->mid = mid;
    self->rc = rc;
    self->conn = Py_NewRef(Py_None);
    self->topic = PyUnicode_FromString("");
    if (self->topic == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

/* rc as the MQTTErrorCode member Python registered (plain int otherwise) */
static PyObject *
info_get_rc(sb_info *self, void *closure)
{
    sb_state *st = sb_get_state_by_type(Py_TYPE(self));
    if (st != NULL && st->rc_lookup != NULL) {
        PyObject *key = PyLong_FromLong(self->rc), *v;
        if (key == NULL)
            return NULL;
        v = PyDict_GetItemWithError(st->rc_lookup, key);
        Py_DECREF(key);
        if (v != NULL)
            return Py_NewRef(v);
        if (PyErr_Occurred())
            return NULL;
    }
    return PyLong_FromLong(self->rc);
}

static int
info_set_rc(sb_info *self, PyObject *value, void *closure)
{
    long v = value ? PyLong_AsLong(value) : -1;
    if (v == -1 && PyErr_Occurred())
        return -1;
    self->rc = (int)v;
    return 0;
}

/* Does the outbox keep this message (QoS>0, or a queued QoS 0)? */
static PyObject *
info_get_queued(sb_info *self, void *closure)
{
    return PyBool_FromLong(self->out != NULL);
}

static PyGetSetDef info_getset[] = {
    {"rc", (getter)info_get_rc, (setter)info_set_rc, "MQTTErrorCode of the publish call.", NULL},
    {"_queued", (getter)info_get_queued, NULL, NULL, NULL},
    {NULL}
};

static PyMemberDef info_members[] = {
    {"mid", T_INT, offsetof(sb_info, mid), 0, "Message id of this publish."},
    {"_conn", T_OBJECT, offsetof(sb_info, conn), READONLY, NULL},
    {"_topic", T_OBJECT, offsetof(sb_info, topic), READONLY, NULL},
    {NULL}
};

static PyType_Slot info_slots[] = {
    {Py_tp_doc, "PublishInfo(mid=0, rc=0)\n--\n\nResult of a publish (base of MQTTMessageInfo)."},
    {Py_tp_new, info_new},
    {Py_tp_dealloc, info_dealloc},
    {Py_tp_getset, info_getset},
    {Py_tp_members, info_members},
    {0, NULL}
};

PyType_Spec sb_info_spec = {
    .name = "sermas_bus._core.PublishInfo",
    .basicsize = sizeof(sb_info),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .slots = info_slots,
};
