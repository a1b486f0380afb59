/*
 * message.c - MQTTMessage: what on_message receives.
 *
 * Compatible with paho.mqtt.client.MQTTMessage: topic (str), payload (bytes),
 * qos, retain, mid, dup, timestamp, properties (MQTT 5, built lazily), and
 * the constructor MQTTMessage(mid=0, topic=b"").
 */
#include "sb.h"

#include <structmember.h>

typedef struct {
    PyObject_HEAD
    PyObject *topic;       /* bytes, as received */
    PyObject *payload;     /* bytes */
    PyObject *props_pairs; /* list of pairs, or NULL: no properties */
    PyObject *properties;  /* cached Properties object, or NULL */
    PyObject *dict;        /* per-instance attributes (paho code sets extras) */
    int qos, retain, dup, mid, state;
    double timestamp;
} sb_message;

static int
message_traverse(sb_message *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->topic);
    Py_VISIT(self->payload);
    Py_VISIT(self->props_pairs);
    Py_VISIT(self->properties);
    Py_VISIT(self->dict);
    return 0;
}

static int
message_clear(sb_message *self)
{
    Py_CLEAR(self->topic);
    Py_CLEAR(self->payload);
    Py_CLEAR(self->props_pairs);
    Py_CLEAR(self->properties);
    Py_CLEAR(self->dict);
    return 0;
}

static void
message_dealloc(sb_message *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    message_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

/* Build a message from a queued paho message.  GIL held.  The payload is
 * copied into a new bytes object, so nothing borrowed outlives the event. */
PyObject *
sb_message_from_event(sb_state *st, sb_event *ev)
{
    PyTypeObject *tp = st->MessageType;
    sb_message *self = (sb_message *)tp->tp_alloc(tp, 0);
    MQTTClient_message *m = ev->msg;
    if (self == NULL)
        return NULL;
    self->topic = PyBytes_FromStringAndSize(ev->topic, ev->topic_len);
    self->payload = PyBytes_FromStringAndSize((const char *)m->payload, m->payloadlen);
    if (self->topic == NULL || self->payload == NULL)
        goto error;
    if (m->properties.count > 0) {
        self->props_pairs = sb_props_to_pairs(&m->properties);
        if (self->props_pairs == NULL)
            goto error;
    }
    self->qos = m->qos;
    self->retain = m->retained;
    self->dup = m->dup;
    self->mid = m->msgid;
    self->timestamp = ev->timestamp;
    return (PyObject *)self;
error:
    Py_DECREF(self);
    return NULL;
}

static PyObject *
message_new(PyTypeObject *tp, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"mid", "topic", NULL};
    int mid = 0;
    PyObject *topic = NULL;
    sb_message *self;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|iO:MQTTMessage", kwlist, &mid, &topic))
        return NULL;
    if (topic != NULL && PyUnicode_Check(topic))
        topic = PyUnicode_AsUTF8String(topic);
    else if (topic != NULL && PyBytes_Check(topic))
        Py_INCREF(topic);
    else if (topic != NULL) {
        PyErr_Format(PyExc_TypeError, "MQTTMessage topic must be bytes or str, not %.100s",
                     Py_TYPE(topic)->tp_name);
        return NULL;
    }
    else
        topic = PyBytes_FromStringAndSize("", 0);
    if (topic == NULL)
        return NULL;
    self = (sb_message *)tp->tp_alloc(tp, 0);
    if (self == NULL) {
        Py_DECREF(topic);
        return NULL;
    }
    self->topic = topic;
    self->payload = PyBytes_FromStringAndSize("", 0);
    if (self->payload == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    self->mid = mid;
    self->timestamp = sb_monotonic();
    return (PyObject *)self;
}

static PyObject *
message_get_topic(sb_message *self, void *closure)
{
    /* like paho: the topic as str; a non-UTF-8 topic raises here, and the
     * raw bytes stay available as _topic */
    return PyUnicode_DecodeUTF8(PyBytes_AS_STRING(self->topic), PyBytes_GET_SIZE(self->topic), "strict");
}

static int
message_set_topic(sb_message *self, PyObject *value, void *closure)
{
    PyObject *b;
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete topic");
        return -1;
    }
    if (PyUnicode_Check(value))
        b = PyUnicode_AsUTF8String(value);
    else if (PyBytes_Check(value))
        b = Py_NewRef(value);
    else {
        PyErr_SetString(PyExc_TypeError, "topic must be str or bytes");
        return -1;
    }
    if (b == NULL)
        return -1;
    Py_XSETREF(self->topic, b);
    return 0;
}

static PyObject *
message_get_raw_topic(sb_message *self, void *closure)
{
    return Py_NewRef(self->topic);
}

static PyObject *
message_get_payload(sb_message *self, void *closure)
{
    return Py_NewRef(self->payload);
}

static int
message_set_payload(sb_message *self, PyObject *value, void *closure)
{
    PyObject *b;
    if (value == NULL || value == Py_None)
        b = PyBytes_FromStringAndSize("", 0);
    else if (PyUnicode_Check(value))
        b = PyUnicode_AsUTF8String(value);
    else
        b = PyBytes_FromObject(value);
    if (b == NULL)
        return -1;
    Py_XSETREF(self->payload, b);
    return 0;
}

static PyObject *
message_get_properties(sb_message *self, void *closure)
{
    sb_state *st;
    if (self->properties != NULL)
        return Py_NewRef(self->properties);
    if (self->props_pairs == NULL)
        Py_RETURN_NONE;
    st = sb_get_state_by_type(Py_TYPE(self));
    if (st == NULL)
        return NULL;
    if (st->properties_factory == NULL)
        return Py_NewRef(self->props_pairs);
    self->properties = PyObject_CallFunction(st->properties_factory, "iO", 3 /* PUBLISH */,
                                             self->props_pairs);
    return Py_XNewRef(self->properties);
}

/* MQTT 5 Subscription Identifiers of this delivery, without building a
 * Properties object: lets a dispatcher route each copy to exactly the
 * subscription it was sent for. */
static PyObject *
message_get_subscription_ids(sb_message *self, void *closure)
{
    PyObject *ids = PyList_New(0), *res;
    Py_ssize_t i, n = self->props_pairs ? PyList_GET_SIZE(self->props_pairs) : 0;
    if (ids == NULL)
        return NULL;
    for (i = 0; i < n; i++) {
        PyObject *pair = PyList_GET_ITEM(self->props_pairs, i);
        long ident = PyLong_AsLong(PyTuple_GET_ITEM(pair, 0));
        if (ident == -1 && PyErr_Occurred())
            goto error;
        if (ident == 11 /* SubscriptionIdentifier */ && PyList_Append(ids, PyTuple_GET_ITEM(pair, 1)) < 0)
            goto error;
    }
    res = PyList_AsTuple(ids);
    Py_DECREF(ids);
    return res;
error:
    Py_DECREF(ids);
    return NULL;
}

static int
message_set_properties(sb_message *self, PyObject *value, void *closure)
{
    Py_XSETREF(self->properties, Py_XNewRef(value == Py_None ? NULL : value));
    return 0;
}

static PyObject *
message_repr(sb_message *self)
{
    return PyUnicode_FromFormat("<MQTTMessage topic=%R qos=%d retain=%s mid=%d payload=%zd bytes>",
                                self->topic, self->qos, self->retain ? "True" : "False",
                                self->mid, PyBytes_GET_SIZE(self->payload));
}

static PyGetSetDef message_getset[] = {
    {"topic", (getter)message_get_topic, (setter)message_set_topic,
     "The topic as str (UTF-8 decoded; raises UnicodeDecodeError if the broker sent invalid UTF-8).", NULL},
    {"_topic", (getter)message_get_raw_topic, NULL, "The topic as received, bytes.", NULL},
    {"payload", (getter)message_get_payload, (setter)message_set_payload, "The payload, bytes.", NULL},
    {"properties", (getter)message_get_properties, (setter)message_set_properties,
     "MQTT 5 properties (sermas_bus.properties.Properties) or None.", NULL},
    {"subscription_ids", (getter)message_get_subscription_ids, NULL,
     "MQTT 5 Subscription Identifiers the broker attached to this delivery (a tuple of int).", NULL},
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {NULL}
};

static PyMemberDef message_members[] = {
    {"qos", T_INT, offsetof(sb_message, qos), 0, "QoS of the delivery (0, 1 or 2)."},
    {"retain", T_BOOL, offsetof(sb_message, retain), 0, "True for a retained message."},
    {"dup", T_BOOL, offsetof(sb_message, dup), 0, "True when the broker re-sent the message."},
    {"mid", T_INT, offsetof(sb_message, mid), 0, "Message id (0 for QoS 0)."},
    {"state", T_INT, offsetof(sb_message, state), 0, "paho compatibility; always 0."},
    {"timestamp", T_DOUBLE, offsetof(sb_message, timestamp), 0, "time.monotonic() at arrival."},
    {"__dictoffset__", T_PYSSIZET, offsetof(sb_message, dict), READONLY},
    {NULL}
};

static PyType_Slot message_slots[] = {
    {Py_tp_doc, "MQTTMessage(mid=0, topic=b'')\n--\n\nA message received from the broker."},
    {Py_tp_new, message_new},
    {Py_tp_dealloc, message_dealloc},
    {Py_tp_traverse, message_traverse},
    {Py_tp_clear, message_clear},
    {Py_tp_repr, message_repr},
    {Py_tp_getset, message_getset},
    {Py_tp_members, message_members},
    {0, NULL}
};

PyType_Spec sb_message_spec = {
    .name = "sermas_bus._core.MQTTMessage",
    .basicsize = sizeof(sb_message),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = message_slots,
};
