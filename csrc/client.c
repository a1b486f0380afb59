/*
 * client.c - the Connection type: one MQTTClient handle and its queues.
 *
 * Python (sermas_bus.client.Client) drives this object; it decides *what* to
 * do (reconnect policy, callbacks, subscriptions to restore), this file does
 * the work that must be fast or must not hold the GIL.
 *
 * GIL discipline: every MQTTClient_* call below sits inside
 * Py_BEGIN_ALLOW_THREADS / Py_END_ALLOW_THREADS, because paho runs our
 * callbacks while holding its global mutex; a thread holding the GIL while
 * waiting for that mutex would deadlock against any thread waiting for the
 * GIL.  Strings handed to paho while the GIL is released are raw copies
 * (PyMem_Raw*), never buffers of Python objects another thread could free.
 */
#include "sb.h"
#include "keeper.h"

#include <errno.h>
#include <sched.h>
#include <stddef.h>
#include <structmember.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MQTT_ERR_SUCCESS 0
#define MQTT_ERR_NOMEM 1
#define MQTT_ERR_NO_CONN 4
#define MQTT_ERR_QUEUE_SIZE 15

/* ---- helpers ---------------------------------------------------------- */

char *
sb_raw_strdup(const char *s, Py_ssize_t len)
{
    char *r = PyMem_RawMalloc((size_t)len + 1);
    if (r == NULL)
        return NULL;
    memcpy(r, s, (size_t)len);
    r[len] = '\0';
    return r;
}

/* str -> raw UTF-8 copy; NULL with an exception on error. */
char *
sb_raw_utf8(PyObject *o, const char *what)
{
    Py_ssize_t len;
    const char *s;
    if (!PyUnicode_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be str, not %.100s", what, Py_TYPE(o)->tp_name);
        return NULL;
    }
    s = PyUnicode_AsUTF8AndSize(o, &len);
    if (s == NULL)
        return NULL;
    if ((Py_ssize_t)strlen(s) != len) {
        PyErr_Format(PyExc_ValueError, "%s must not contain NUL characters", what);
        return NULL;
    }
    return sb_raw_strdup(s, len);
}

void
sb_free_str_array(char **a, Py_ssize_t n)
{
    Py_ssize_t i;
    if (a == NULL)
        return;
    for (i = 0; i < n; i++)
        PyMem_RawFree(a[i]);
    PyMem_RawFree(a);
}

/* getattr that returns 0 with *out = NULL when the attribute is missing */
static int
PyObject_GetOptionalAttrString_compat(PyObject *o, const char *name, PyObject **out)
{
    *out = PyObject_GetAttrString(o, name);
    if (*out != NULL)
        return 1;
    if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Clear();
        return 0;
    }
    return -1;
}

static int
check_usable_pid(sb_client *self, sb_state *st)
{
    if (self->owner_pid != getpid()) {
        PyErr_SetString(st->ForkError,
                        "this client was created in the parent process and cannot be used after fork(); "
                        "create clients after fork() (paho.mqtt.c's threads do not survive it)");
        return -1;
    }
    return 0;
}

int
sb_check_usable(sb_client *self, sb_state *st)
{
    if (check_usable_pid(self, st) < 0)
        return -1;
    if (self->closing) {
        PyErr_SetString(st->ClosedError, "the client is closed; create a new one");
        return -1;
    }
    return 0;
}

sb_state *
sb_state_of(sb_client *self)
{
    return sb_get_state_by_type(Py_TYPE(self));
}

/* ---- lifecycle ----------------------------------------------------------- */

static PyObject *
conn_new(PyTypeObject *tp, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"client_id", "queue_max", NULL};
    PyObject *client_id;
    Py_ssize_t queue_max = 10000;
    sb_client *self;
    int rc;

    if (!PyArg_ParseTupleAndKeywords(args, kw, "U|n:Connection", kwlist, &client_id, &queue_max))
        return NULL;
    if (queue_max < 1) {
        PyErr_SetString(PyExc_ValueError, "queue_max must be at least 1");
        return NULL;
    }
    self = (sb_client *)tp->tp_alloc(tp, 0);
    if (self == NULL)
        return NULL;
    self->efd = -1;
    self->owner_pid = getpid();
    self->qmax = queue_max;
    self->nodelay = 1;
    self->sock_fd = -1;
    self->window = 20;
    self->next_mid = 0;
    self->client_id = sb_raw_utf8(client_id, "client_id");
    if (self->client_id == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    self->slots = PyMem_RawCalloc(SB_SLOTS, sizeof(sb_slot));
    if (self->slots == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    if ((rc = sb_queue_init(self)) != 0) {
        Py_DECREF(self);
        errno = rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return (PyObject *)self;
}

#define SB_FENCE_TIMEOUT_S 5.0
#define SB_FENCE_FALLBACK_NS 20000000L   /* no keeper: 20 ms for paho to move on */

/* Let paho's receive thread finish with the handle.  It runs our
 * messageArrived with its mutex released and, once we return, goes on using
 * the handle (it takes the message off the handle's queue): destroying the
 * handle in that window made it write into freed memory.  Only a callback
 * already running can be in that window (the caller has disconnected, so
 * nothing new is read for the handle); the keeper's fence waits until the
 * receive thread is past it.  Meanwhile we count as a thread waiting on
 * paho, so that no client's callback parks the receive thread for room. */
static void
wait_receive_thread_past_nogil(sb_client *self)
{
    pthread_mutex_lock(&self->mu);
    sb_blocking_enter_locked(self);
    pthread_mutex_unlock(&self->mu);
    if (sb_keeper_fence_nogil(SB_FENCE_TIMEOUT_S) != 0) {
        /* no keeper (it failed to start, or we are a forked child): give
         * the few instructions of the callback's tail time instead */
        struct timespec pause = {0, SB_FENCE_FALLBACK_NS};
        (void)nanosleep(&pause, NULL);
    }
    pthread_mutex_lock(&self->mu);
    sb_blocking_leave_locked(self);
    pthread_mutex_unlock(&self->mu);
}

/* Destroy the paho handle.  GIL must NOT be held: MQTTClient_destroy may wait
 * up to ~10 s for paho's receive thread, which may want the mutex it holds,
 * and the fence waits for that thread too. */
void
sb_destroy_handle_nogil(sb_client *self)
{
    MQTTClient h = self->handle;
    if (h == NULL)
        return;
    wait_receive_thread_past_nogil(self);
    self->handle = NULL;
    MQTTClient_destroy(&h);
}

/* Handle lifetime: paho's handle may be destroyed (close) or re-created
 * (connect with another MQTT version) only while no thread is inside a paho
 * call with it.  Users bracket their paho calls with sb_handle_acquire_locked /
 * sb_handle_release_locked; destroyers set closing or recreating, then wait in
 * sb_handle_drain_nogil. */
int
sb_handle_acquire_locked(sb_client *self)
{
    if (self->closing || self->recreating || self->handle == NULL)
        return 0;
    self->handle_users++;
    return 1;
}

void
sb_handle_release_locked(sb_client *self)
{
    if (--self->handle_users == 0)
        pthread_cond_broadcast(&self->pub_cv);
}

void
sb_handle_drain_nogil(sb_client *self)
{
    pthread_mutex_lock(&self->mu);
    while (self->handle_users > 0)
        pthread_cond_wait(&self->pub_cv, &self->mu);
    pthread_mutex_unlock(&self->mu);
}

/* Close: mark closed, wake everything, disconnect (which also ends paho
 * calls other threads are blocked in), wait for them, destroy without the
 * GIL, then free queued events with it.  Safe to call twice. */
static void
conn_close_impl(sb_client *self)
{
    MQTTClient h = self->handle;
    int was_connected, connect_in_progress;

    if (self->slots == NULL)   /* half-built object */
        return;
    pthread_mutex_lock(&self->mu);
    self->closing = 1;
    /* a thread inside paho's connect: disconnecting under it leaves paho's
     * connect waiting for ever; let it finish (bounded by its time-out),
     * then disconnect below */
    connect_in_progress = self->connecting > 0;
    was_connected = self->connected;
    self->sock_fd = -1;
    self->connected = 0;
    pthread_cond_broadcast(&self->space_cv);   /* a blocked producer must let go */
    pthread_cond_broadcast(&self->ev_cv);
    pthread_cond_broadcast(&self->pub_cv);
    pthread_cond_broadcast(&self->win_cv);
    pthread_cond_broadcast(&self->ob_cv);
    pthread_cond_broadcast(&self->req_cv);     /* subscribers give up */
    pthread_mutex_unlock(&self->mu);

    if (self->owner_pid == getpid()) {
        /* release the GIL: disconnect/destroy wait for paho's threads, and
         * the flusher may be inside paho's publish */
        Py_BEGIN_ALLOW_THREADS
        if (h != NULL && was_connected && !connect_in_progress)
            MQTTClient_disconnect(h, 0);
        sb_outbox_stop_flusher_nogil(self);
        if (h != NULL) {
            sb_handle_drain_nogil(self);
            /* nobody else is in paho now: end what the connect made */
            if (connect_in_progress && MQTTClient_isConnected(h))
                MQTTClient_disconnect(h, 0);
            sb_destroy_handle_nogil(self);
        }
        /* paho is done with the store: what is buffered goes to the file,
         * the lock is released (file I/O: no GIL) */
        sb_outbox_store_close_nogil(self);
        Py_END_ALLOW_THREADS
    }
    else
        sb_outbox_store_forget(self);   /* the parent's files: only forget */
    self->handle = NULL;   /* after fork: forget, never destroy (paho's state is the parent's) */
    sb_queue_clear(self);
    pthread_mutex_lock(&self->mu);
    sb_outbox_close_locked(self);
    pthread_mutex_unlock(&self->mu);
}

static int
conn_traverse(sb_client *self, visitproc visit, void *arg)
{
    sb_event *ev;
    Py_VISIT(Py_TYPE(self));
    /* posted objects are owned by queued events: visit them (GIL held, and
     * paho's thread never touches SB_EV_USER events) */
    for (ev = self->head; ev; ev = ev->next)
        if (ev->kind == SB_EV_USER)
            Py_VISIT(ev->obj);
    return 0;
}

static int
conn_clear(sb_client *self)
{
    return 0;   /* posted objects are dropped by close */
}

static void
conn_dealloc(sb_client *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL)
        PyObject_ClearWeakRefs((PyObject *)self);
    if (self->slots != NULL) {
        conn_close_impl(self);
        pthread_mutex_destroy(&self->mu);
        pthread_cond_destroy(&self->ev_cv);
        pthread_cond_destroy(&self->space_cv);
        pthread_cond_destroy(&self->pub_cv);
        pthread_cond_destroy(&self->win_cv);
        pthread_cond_destroy(&self->ob_cv);
        pthread_cond_destroy(&self->req_cv);
        PyMem_RawFree(self->slots);
    }
    if (self->efd >= 0)
        close(self->efd);
    PyMem_RawFree(self->client_id);
    PyMem_RawFree(self->first_uri);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

/* ---- publish ----------------------------------------------------------- */

/* ValueError "invalid topic '<t>': <why>"; returns -1. */
static int
bad_topic(const char *t, Py_ssize_t len, const char *why)
{
    PyObject *shown = PyUnicode_DecodeUTF8(t, len, "replace");
    if (shown != NULL) {
        PyErr_Format(PyExc_ValueError, "invalid topic %R: %s", shown, why);
        Py_DECREF(shown);
    }
    return -1;
}

/* Validate a topic name for publishing; returns 0 or -1 with ValueError. */
static int
check_pub_topic(const char *t, Py_ssize_t len)
{
    if (len == 0) {
        PyErr_SetString(PyExc_ValueError, "invalid topic: a publish topic must not be empty");
        return -1;
    }
    if (len > 65535) {
        PyErr_SetString(PyExc_ValueError, "invalid topic: longer than 65535 UTF-8 bytes");
        return -1;
    }
    if (memchr(t, '+', (size_t)len) || memchr(t, '#', (size_t)len))
        return bad_topic(t, len, "wildcards '+' and '#' are only allowed when subscribing");
    if (memchr(t, '\0', (size_t)len)) {
        PyErr_SetString(PyExc_ValueError, "invalid topic: contains a NUL character");
        return -1;
    }
    if (sb_topic_control_char(t, len) >= 0)
        return bad_topic(t, len, "it contains a control character, which MQTT topics should not hold "
                                 "(mosquitto drops the connection of a client that sends one)");
    return 0;
}

/* A publish's arguments, validated and ready to hand to paho without the
 * GIL: topic and payload point into objects the caller's frame keeps alive
 * (str/bytes are immutable, buffers are held), properties are converted. */
typedef struct {
    PyObject *topic_obj;
    const char *topic;
    Py_ssize_t topic_len;
    Py_buffer buf;
    int have_buf;
    PyObject *tmp_payload, *props_pairs;
    MQTTProperties props;
    int qos, retain;
} pub_args;

static void
pub_args_free(pub_args *a)
{
    MQTTProperties_free(&a->props);
    if (a->have_buf)
        PyBuffer_Release(&a->buf);
    Py_XDECREF(a->tmp_payload);
    Py_XDECREF(a->props_pairs);
}

/* topic: str or bytes, valid UTF-8, a valid publish topic */
static int
pub_parse_topic(PyObject *topic, pub_args *a)
{
    a->topic_obj = topic;
    if (PyUnicode_Check(topic)) {
        a->topic = PyUnicode_AsUTF8AndSize(topic, &a->topic_len);
        if (a->topic == NULL) {
            PyErr_Clear();
            PyErr_SetString(PyExc_ValueError, "invalid topic: not encodable as UTF-8 (lone surrogates?)");
            return -1;
        }
    }
    else if (PyBytes_Check(topic)) {
        PyObject *check;
        a->topic = PyBytes_AS_STRING(topic);
        a->topic_len = PyBytes_GET_SIZE(topic);
        check = PyUnicode_DecodeUTF8(a->topic, a->topic_len, "strict");
        if (check == NULL) {
            PyErr_Clear();
            PyErr_SetString(PyExc_ValueError, "invalid topic: bytes are not valid UTF-8");
            return -1;
        }
        Py_DECREF(check);
    }
    else {
        PyErr_Format(PyExc_TypeError, "topic must be str or bytes, not %.100s", Py_TYPE(topic)->tp_name);
        return -1;
    }
    return check_pub_topic(a->topic, a->topic_len);
}

/* payload: None, str (UTF-8), int/float (as text, like paho), or any buffer */
static int
pub_parse_payload(PyObject *payload, pub_args *a)
{
    if (payload == Py_None)
        a->tmp_payload = PyBytes_FromStringAndSize("", 0);
    else if (PyUnicode_Check(payload)) {
        /* the UTF-8 form is cached in the str, which args keep alive: no copy */
        const char *data = PyUnicode_AsUTF8AndSize(payload, &a->buf.len);
        if (data == NULL)
            return -1;
        a->buf.buf = (void *)data;
        goto sized;
    }
    else if (PyLong_Check(payload) || PyFloat_Check(payload)) {
        PyObject *s = PyObject_Str(payload);
        if (s != NULL) {
            a->tmp_payload = PyUnicode_AsUTF8String(s);
            Py_DECREF(s);
        }
    }
    else if (PyObject_CheckBuffer(payload)) {
        if (PyObject_GetBuffer(payload, &a->buf, PyBUF_SIMPLE) < 0) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "payload of type %.100s is not a contiguous buffer; pass bytes",
                         Py_TYPE(payload)->tp_name);
            return -1;
        }
        a->have_buf = 1;
        goto sized;
    }
    else {
        PyErr_Format(PyExc_TypeError,
                     "payload must be bytes, bytearray, memoryview, str, int, float or None, not %.100s "
                     "(encode it first, e.g. json.dumps(payload))", Py_TYPE(payload)->tp_name);
        return -1;
    }
    if (a->tmp_payload == NULL || PyObject_GetBuffer(a->tmp_payload, &a->buf, PyBUF_SIMPLE) < 0)
        return -1;
    a->have_buf = 1;
sized:
    if (a->buf.len > 268435455) {
        PyErr_SetString(PyExc_ValueError, "payload too large: MQTT allows at most 268435455 bytes");
        return -1;
    }
    return 0;
}

/* props: None, a list of (identifier, value) pairs, or a Properties object */
static int
pub_parse_props(sb_client *self, sb_state *st, PyObject *props, pub_args *a)
{
    if (props != Py_None && !PyList_Check(props)) {
        /* a sermas_bus.properties.Properties: flatten it */
        PyObject *to_pairs;
        if (PyObject_GetOptionalAttrString_compat(props, "to_pairs", &to_pairs) < 0)
            return -1;
        if (to_pairs == NULL) {
            PyErr_Format(PyExc_TypeError, "properties must be sermas_bus.properties.Properties or None, not %.100s",
                         Py_TYPE(props)->tp_name);
            return -1;
        }
        a->props_pairs = PyObject_CallNoArgs(to_pairs);
        Py_DECREF(to_pairs);
        if (a->props_pairs == NULL)
            return -1;
        props = a->props_pairs;
    }
    /* before the first connect the version is not known yet: keep them (a
     * 3.1.1 connection sends the message without them) */
    if (self->handle == NULL || self->mqtt_version >= MQTTVERSION_5)
        return sb_props_from_pairs(props, &a->props);
    if (props != Py_None && PyObject_IsTrue(props)) {
        PyErr_SetString(st->ProtocolError,
                        "MQTT 5 properties cannot be sent over MQTT 3.1.1; connect with protocol=MQTTv5");
        return -1;
    }
    return 0;
}

static int
pub_args_parse(sb_client *self, sb_state *st, PyObject *const *args, Py_ssize_t nargs, pub_args *a)
{
    long qos;
    if (nargs < 4 || nargs > 5) {
        PyErr_SetString(PyExc_TypeError, "publish(topic, payload, qos, retain, props=None)");
        return -1;
    }
    /* range-check as a long: a truncating cast would turn 2**32+1 into 1 */
    qos = PyLong_AsLong(args[2]);
    if (qos == -1 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            PyErr_SetString(PyExc_ValueError, "invalid QoS: must be 0, 1 or 2");
        }
        return -1;
    }
    if (qos < 0 || qos > 2) {
        PyErr_Format(PyExc_ValueError, "invalid QoS %ld: must be 0, 1 or 2", qos);
        return -1;
    }
    a->qos = (int)qos;
    if ((a->retain = PyObject_IsTrue(args[3])) < 0)
        return -1;
    if (pub_parse_props(self, st, nargs == 5 ? args[4] : Py_None, a) < 0)
        return -1;
    if (pub_parse_topic(args[0], a) < 0)
        return -1;
    return pub_parse_payload(args[1], a);
}

/* What one publish became. */
typedef struct {
    int rc;           /* MQTT_ERR_* for the info object, -1: raise paho_rc, or PUB_STORE_* */
    int paho_rc;
    int mid;
    sb_out *out;      /* a reference for the info object, or NULL */
    int stored;       /* appended to the durable store: commit before returning */
    int store_rc;     /* the commit's SB_STORE_* */
    char store_err[600];
} pub_result;

/* publish() refusals of the durable store (pub_result.rc) */
#define PUB_STORE_FULL (-100)
#define PUB_STORE_IO (-101)

/* Append an accepted QoS>0 record to the durable store (it gets the next
 * seq).  0, or a pub_result.rc refusal.  mu held. */
static int
store_record_locked(sb_client *self, sb_out *o, pub_result *r)
{
    unsigned char *props = NULL;
    uint32_t props_len = 0;
    int rc;
    if (o->has_props && sb_props_pack(&o->props, &props, &props_len) < 0)
        return MQTT_ERR_NOMEM;
    rc = sb_store_accept(self->store, self->pub_seq + 1, o->qos, o->retain, o->topic,
                         (uint32_t)o->topic_len, o->payload, (uint32_t)o->len, props, props_len);
    PyMem_RawFree(props);
    if (rc == SB_STORE_E_FULL)
        return PUB_STORE_FULL;
    if (rc == SB_STORE_E_IO)
        return PUB_STORE_IO;
    if (rc != SB_STORE_OK)
        return MQTT_ERR_NOMEM;
    r->stored = 1;
    self->store_users++;     /* until the commit: close() waits for it */
    return MQTT_ERR_SUCCESS;
}

/* Accept a record into the outbox's books (bound checked) and, with
 * persistence, into the store; mu held. */
static int
accept_record_locked(sb_client *self, sb_out *o, int mid, pub_result *r)
{
    int rc;
    if (self->ob_max > 0 && self->ob_count >= self->ob_max)
        return MQTT_ERR_QUEUE_SIZE;     /* as paho: never a silent drop */
    if (self->store != NULL && o->qos > 0 && (rc = store_record_locked(self, o, r)) != MQTT_ERR_SUCCESS)
        return rc;
    o->mid = mid;
    o->seq = ++self->pub_seq;
    o->refs++;                          /* the info object's */
    self->ob_count++;
    return MQTT_ERR_SUCCESS;
}

/* Send directly on this thread: connected, nothing queued ahead, window room
 * (waited for).  Returns 0 when sent (or settled), -1 when the record must be
 * queued instead (the connection dropped meanwhile).  mu held on entry and
 * exit; released around paho's call. */
static int
publish_direct_nogil(sb_client *self, pub_args *a, sb_out *o, pub_result *r)
{
    int token = 0, blocked = 0, paho_rc;
    /* The thread running on_message must never wait (window room, socket
     * writes) while paho's receive thread waits for that same thread to drain
     * the queue: while it publishes, the receive thread may overfill instead. */
    int is_dispatcher = sb_is_dispatching();

    if (a->qos > 0) {
        /* waiting for window room is waiting for PUBACKs, which paho's
         * receive thread reads; so is a dispatcher's send */
        if (is_dispatcher || self->inflight >= self->window) {
            sb_blocking_enter_locked(self);
            blocked = 1;
        }
        while (self->inflight >= self->window && self->connected && !self->closing) {
            self->window_waiters++;
            pthread_cond_wait(&self->win_cv, &self->mu);
            self->window_waiters--;
        }
    }
    else if (is_dispatcher) {
        sb_blocking_enter_locked(self);
        blocked = 1;
    }
    if (!self->connected || !sb_handle_acquire_locked(self)) {
        if (blocked)
            sb_blocking_leave_locked(self);
        return -1;
    }
    if (a->qos > 0)
        self->inflight++;   /* our place in the window */
    self->sending++;
    pthread_mutex_unlock(&self->mu);
    paho_rc = sb_paho_publish_nogil(self, a->topic, (int)a->buf.len, a->buf.buf, a->qos, a->retain,
                                    self->mqtt_version >= MQTTVERSION_5 ? &a->props : NULL,
                                    o != NULL ? o->seq : 0, &token);
    pthread_mutex_lock(&self->mu);
    self->sending--;
    sb_handle_release_locked(self);
    if (blocked)
        sb_blocking_leave_locked(self);
    if (paho_rc == MQTTCLIENT_SUCCESS) {
        if (o != NULL)
            sb_outbox_sent_locked(self, o, token);
        else
            sb_push_published_locked(self, r->mid, 0);
        return 0;
    }
    if (a->qos > 0 && self->inflight > 0)
        self->inflight--;
    if (paho_rc == MQTTCLIENT_DISCONNECTED || !self->connected)
        return -1;            /* the connection went: queue it */
    /* paho refused the message itself */
    if (o != NULL) {
        o->state = SB_PUB_FAILED;
        sb_outbox_settled_without_paho_locked(self, o);
        self->ob_count--;
        sb_out_release_locked(o);            /* the outbox's */
    }
    r->paho_rc = paho_rc;
    r->rc = paho_rc == MQTTCLIENT_MAX_MESSAGES_INFLIGHT ? MQTT_ERR_QUEUE_SIZE : -1;
    return 0;
}

/* Decide and do, with the GIL released: send now, queue in the outbox, or
 * refuse (outbox full / QoS 0 while disconnected, as paho does). */
static void
publish_submit_nogil(sb_client *self, pub_args *a, pub_result *r)
{
    sb_out *o = NULL;
    /* QoS>0 always keeps a copy (re-sent after a reconnect); QoS 0 only if
     * it has to wait (queue_qos0, read here as a hint, checked below) */
    if (a->qos > 0 || (self->queue_qos0 && !self->connected)) {
        o = sb_out_new(a->topic, a->topic_len, a->buf.buf, a->buf.len, a->qos, a->retain, &a->props);
        if (o == NULL) {
            r->rc = MQTT_ERR_NOMEM;
            return;
        }
    }
    pthread_mutex_lock(&self->mu);
    if (++self->next_mid > 65535)
        self->next_mid = 1;
    r->mid = self->next_mid;
    r->rc = MQTT_ERR_SUCCESS;
    if (self->closing) {
        r->rc = MQTT_ERR_NO_CONN;
        goto drop;
    }
    if (o != NULL && (r->rc = accept_record_locked(self, o, r->mid, r)) != MQTT_ERR_SUCCESS)
        goto drop;
    /* direct: QoS 0 whenever connected; QoS>0 only with nothing queued ahead
     * of it (order), else it joins the queue the flusher drains */
    if (self->connected && (o == NULL || (self->q_head == NULL && !self->flush_busy))) {
        if (publish_direct_nogil(self, a, o, r) == 0) {
            if (r->rc != MQTT_ERR_SUCCESS && o != NULL) {
                sb_out_release_locked(o);   /* refused: the info gets no record */
                o = NULL;
            }
            r->out = o;
            pthread_mutex_unlock(&self->mu);
            return;
        }
    }
    if (o == NULL) {
        if (!self->queue_qos0) {
            r->rc = MQTT_ERR_NO_CONN;       /* QoS 0 while disconnected: as paho */
            pthread_mutex_unlock(&self->mu);
            return;
        }
        /* queue_qos0 (SermasClient): it waits for the reconnect too */
        o = sb_out_new(a->topic, a->topic_len, a->buf.buf, a->buf.len, 0, a->retain, &a->props);
        if (o == NULL) {
            r->rc = MQTT_ERR_NOMEM;
            pthread_mutex_unlock(&self->mu);
            return;
        }
        if ((r->rc = accept_record_locked(self, o, r->mid, r)) != MQTT_ERR_SUCCESS)
            goto drop;
    }
    sb_outbox_enqueue_locked(self, o);
    /* paho answers MQTT_ERR_NO_CONN for a QoS>0 message it keeps for the
     * reconnect; so do we (wait_for_publish waits for it) */
    r->rc = self->connected ? MQTT_ERR_SUCCESS : MQTT_ERR_NO_CONN;
    r->out = o;
    pthread_mutex_unlock(&self->mu);
    return;
drop:
    if (o != NULL)
        sb_out_release_locked(o);   /* never accepted: its only reference */
    pthread_mutex_unlock(&self->mu);
}

/* What publish() accepted is in the store before it returns: written to
 * the OS, or fdatasync'ed (persistence_sync).  GIL not held: it may wait for
 * a group fdatasync. */
static void
publish_commit_nogil(sb_client *self, pub_result *r)
{
    r->store_rc = sb_store_commit(self->store, r->store_err, sizeof r->store_err);
    pthread_mutex_lock(&self->mu);
    if (--self->store_users == 0)
        pthread_cond_broadcast(&self->pub_cv);
    pthread_mutex_unlock(&self->mu);
}

static void
raise_store_refusal(sb_client *self, sb_state *st, int rc)
{
    sb_store_stats ss;
    if (rc == PUB_STORE_IO) {
        PyErr_SetString(st->PersistenceError,
                        "publish refused: the outbox store failed earlier and cannot keep messages "
                        "(see the first PersistenceError); fix the directory and open the client again");
        return;
    }
    memset(&ss, 0, sizeof ss);
    pthread_mutex_lock(&self->mu);     /* close() clears store under mu before freeing it */
    if (self->store != NULL)
        sb_store_get_stats(self->store, &ss);
    pthread_mutex_unlock(&self->mu);
    PyErr_Format(st->PersistenceFullError,
                 "publish refused: the outbox store is full (%llu of its max_bytes %llu hold %llu "
                 "messages the broker has not acknowledged); wait for the connection (flush()) or "
                 "raise persistence_max_bytes",
                 (unsigned long long)ss.live_bytes, (unsigned long long)ss.max_bytes,
                 (unsigned long long)ss.messages);
}

static PyObject *
conn_publish(sb_client *self, PyObject *const *args, Py_ssize_t nargs)
{
    sb_state *st = sb_state_of(self);
    pub_args a;
    pub_result r = {MQTT_ERR_SUCCESS, 0, 0, NULL};
    PyObject *result = NULL;

    memset(&a, 0, sizeof a);
    a.props = (MQTTProperties)MQTTProperties_initializer;
    if (st == NULL || sb_check_usable(self, st) < 0)
        return NULL;
    if (pub_args_parse(self, st, args, nargs, &a) < 0)
        goto done;
    /* publishing needs paho's mutex and may wait for window room: no GIL.
     * a.topic and a.buf stay valid: the caller's frame holds their objects. */
    Py_BEGIN_ALLOW_THREADS
    publish_submit_nogil(self, &a, &r);
    if (r.stored)
        publish_commit_nogil(self, &r);
    Py_END_ALLOW_THREADS
    if (r.rc == PUB_STORE_FULL || r.rc == PUB_STORE_IO) {
        raise_store_refusal(self, st, r.rc);
        goto done;
    }
    if (r.rc == -1) {
        sb_raise_rc(st, "publish", r.paho_rc);
        goto done;
    }
    if (r.rc == MQTT_ERR_NOMEM) {
        PyErr_NoMemory();
        goto done;
    }
    if (r.store_rc != SB_STORE_OK) {
        /* accepted and in the outbox (sent while this process lives), but
         * the store could not keep it: say so rather than promise */
        PyErr_SetString(st->PersistenceError, r.store_err);
        if (r.out != NULL) {
            pthread_mutex_lock(&self->mu);
            sb_out_release_locked(r.out);
            pthread_mutex_unlock(&self->mu);
        }
        goto done;
    }
    result = sb_info_new(st, r.rc, r.mid, r.out, (PyObject *)self, a.topic_obj);
    if (result == NULL && r.out != NULL) {
        pthread_mutex_lock(&self->mu);
        sb_out_release_locked(r.out);
        pthread_mutex_unlock(&self->mu);
    }
done:
    pub_args_free(&a);
    return result;
}

/* Where a record stands, as wait_published reports it; mu held. */
static int
record_state_locked(const sb_out *o, int *reason)
{
    *reason = o ? o->reason : 0;
    if (o == NULL)
        return SB_PUB_DONE;      /* QoS 0: done once written */
    return o->state == SB_PUB_QUEUED ? SB_PUB_PENDING : o->state;
}

static PyObject *
conn_wait_published(sb_client *self, PyObject *args)
{
    PyObject *info;
    sb_state *st = sb_state_of(self);
    sb_out *o;
    int state, reason = 0;
    double timeout, deadline;
    if (st == NULL || !PyArg_ParseTuple(args, "Od:wait_published", &info, &timeout))
        return NULL;
    if (sb_info_record(st, info, (PyObject *)self, &o) < 0)
        return NULL;
    deadline = timeout < 0 ? -1.0 : sb_monotonic() + timeout;
    /* waiting for the broker's acknowledgement: release the GIL (info, and
     * so the record, is kept alive by our caller) */
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&self->mu);
    /* closing alone is not the end: close() disconnects (which can take a
     * while on a silent broker) before it gives the records up as LOST */
    while ((state = record_state_locked(o, &reason)) == SB_PUB_PENDING && !self->outbox_closed) {
        int r;
        self->pub_waiters++;
        sb_blocking_enter_locked(self);   /* the PUBACK is read by paho's thread */
        r = sb_timed_wait(&self->pub_cv, &self->mu, deadline);
        sb_blocking_leave_locked(self);
        self->pub_waiters--;
        if (r == ETIMEDOUT) {
            state = record_state_locked(o, &reason);
            break;
        }
    }
    pthread_mutex_unlock(&self->mu);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("(ii)", state, reason);
}

/* flush(timeout): wait until every accepted publish is delivered. */
static PyObject *
conn_flush(sb_client *self, PyObject *args)
{
    double timeout, deadline;
    int idle;
    if (!PyArg_ParseTuple(args, "d:flush", &timeout))
        return NULL;
    deadline = timeout < 0 ? -1.0 : sb_monotonic() + timeout;
    /* waits on PUBACKs (paho's receive thread): no GIL */
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&self->mu);
    while (!(idle = sb_outbox_idle_locked(self)) && !self->closing) {
        int r;
        self->pub_waiters++;
        sb_blocking_enter_locked(self);
        r = sb_timed_wait(&self->pub_cv, &self->mu, deadline);
        sb_blocking_leave_locked(self);
        self->pub_waiters--;
        if (r == ETIMEDOUT) {
            idle = sb_outbox_idle_locked(self);
            break;
        }
    }
    pthread_mutex_unlock(&self->mu);
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(idle);
}

/* ---- disconnect / close ------------------------------------------------ */

static PyObject *
conn_disconnect(sb_client *self, PyObject *args)
{
    sb_state *st = sb_state_of(self);
    double timeout = 0, deadline;
    int reason = 0, was_connected, acquired;
    PyObject *props = Py_None;
    MQTTProperties mprops = MQTTProperties_initializer;

    if (st == NULL)
        return NULL;
    if (!PyArg_ParseTuple(args, "|diO:disconnect", &timeout, &reason, &props))
        return NULL;
    if (self->owner_pid != getpid() || self->handle == NULL)
        Py_RETURN_FALSE;
    if (self->mqtt_version >= MQTTVERSION_5 && sb_props_from_pairs(props, &mprops) < 0)
        return NULL;
    deadline = sb_monotonic() + timeout;
    /* wait for in-flight QoS>0 flows (signalled, not polled), then send
     * DISCONNECT; both wait on the network: no GIL */
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&self->mu);
    sb_blocking_enter_locked(self);
    while (self->inflight > 0 && self->connected && timeout > 0) {
        int r;
        self->pub_waiters++;
        r = sb_timed_wait(&self->pub_cv, &self->mu, deadline);
        self->pub_waiters--;
        if (r == ETIMEDOUT)
            break;
    }
    was_connected = self->connected;
    self->sock_fd = -1;
    self->connected = 0;
    acquired = was_connected && sb_handle_acquire_locked(self);
    pthread_mutex_unlock(&self->mu);
    if (acquired) {
        if (self->mqtt_version >= MQTTVERSION_5)
            MQTTClient_disconnect5(self->handle, 0, (enum MQTTReasonCodes)reason, &mprops);
        else
            MQTTClient_disconnect(self->handle, 0);
    }
    pthread_mutex_lock(&self->mu);
    if (acquired)
        sb_handle_release_locked(self);
    sb_blocking_leave_locked(self);
    /* unacknowledged publishes stay in the outbox for the next connect, as
     * in paho-mqtt; window waiters queue theirs, subscribers give up */
    pthread_cond_broadcast(&self->win_cv);
    pthread_cond_broadcast(&self->req_cv);
    pthread_mutex_unlock(&self->mu);
    Py_END_ALLOW_THREADS
    MQTTProperties_free(&mprops);
    return PyBool_FromLong(was_connected);
}

static PyObject *
conn_close(sb_client *self, PyObject *unused)
{
    conn_close_impl(self);
    Py_RETURN_NONE;
}

static PyObject *
conn_forget(sb_client *self, PyObject *unused)
{
    /* in a forked child: paho's threads and locks belong to the parent, so the
     * handle can be neither used nor destroyed; drop it (a deliberate leak) */
    self->handle = NULL;
    self->connected = 0;
    self->closing = 1;
    Py_RETURN_NONE;
}

/* ---- the consumer side: pump and post ---------------------------------- */

static PyObject *
conn_pump(sb_client *self, PyObject *args)
{
    sb_state *st = sb_state_of(self);
    PyObject *callback, *cbargs, *on_error, *events = NULL;
    double timeout, deadline;
    Py_ssize_t max_batch, nmsgs = 0, nargs;
    unsigned interrupts;
    sb_event *batch, *ev;
    PyObject *stack[8];

    if (st == NULL || check_usable_pid(self, st) < 0)
        return NULL;
    if (!PyArg_ParseTuple(args, "OO!Odn:pump", &callback, &PyTuple_Type, &cbargs, &on_error,
                          &timeout, &max_batch))
        return NULL;
    nargs = PyTuple_GET_SIZE(cbargs);
    if (nargs > 6) {
        PyErr_SetString(PyExc_ValueError, "pump: at most 6 callback arguments");
        return NULL;
    }
    deadline = timeout < 0 ? -1.0 : sb_monotonic() + timeout;
    interrupts = self->interrupts;

    /* wait for paho's receive thread to queue something: no GIL while blocked */
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&self->mu);
    if (self->head == NULL && timeout != 0 && self->spin_us > 0) {
        /* Briefly poll before sleeping: a message that arrives within
         * spin_us is picked up without a futex wake-up (~20-30 us on small
         * VMs).  sched_yield lets paho's thread run if it shares our CPU. */
        double spin_end = sb_monotonic() + self->spin_us * 1e-6;
        while (self->head == NULL && !self->closing && sb_monotonic() < spin_end) {
            pthread_mutex_unlock(&self->mu);
            sched_yield();
            pthread_mutex_lock(&self->mu);
        }
    }
    while (self->head == NULL && !self->closing && timeout != 0 && self->interrupts == interrupts) {
        int r;
        self->consumer_waiting++;
        r = sb_timed_wait(&self->ev_cv, &self->mu, deadline);
        self->consumer_waiting--;
        if (r == ETIMEDOUT)
            break;
    }
    batch = sb_queue_take_locked(self, max_batch, &nmsgs);
    self->consumer_seen = sb_monotonic();
    pthread_mutex_unlock(&self->mu);
    Py_END_ALLOW_THREADS

    events = PyList_New(0);
    if (events == NULL)
        goto fail;
    pthread_mutex_lock(&self->mu);
    self->dispatching++;
    sb_dispatching_enter();
    pthread_mutex_unlock(&self->mu);
    {
        Py_ssize_t k;
        for (k = 0; k < nargs; k++)
            stack[k] = PyTuple_GET_ITEM(cbargs, k);
    }
    while (batch) {
        PyObject *obj = NULL;
        if (self->interrupts != interrupts) {
            /* loop_stop()/close(): stop after the callback in progress; the
             * rest stays queued (nothing is lost) */
            pthread_mutex_lock(&self->mu);
            sb_queue_requeue_front_locked(self, batch, nmsgs);
            self->dispatching--;
            self->consumer_seen = sb_monotonic();
            sb_dispatching_leave();
            pthread_mutex_unlock(&self->mu);
            return events;
        }
        ev = batch;
        batch = ev->next;
        ev->next = NULL;
        if (ev->kind == SB_EV_MESSAGE) {
            nmsgs--;
            obj = sb_message_from_event(st, ev);
            sb_event_free(ev);
            if (obj == NULL)
                goto fail;
            if (callback != Py_None) {
                PyObject *r;
                stack[nargs] = obj;
                r = PyObject_Vectorcall(callback, stack, (size_t)nargs + 1, NULL);
                Py_DECREF(obj);
                if (r != NULL) {
                    Py_DECREF(r);
                    continue;
                }
                if (on_error == Py_None)
                    goto fail;
                else {
                    /* report through the Python layer (logging), keep going */
                    PyObject *exc = PyErr_GetRaisedException(), *r2;
                    r2 = PyObject_CallOneArg(on_error, exc ? exc : Py_None);
                    Py_XDECREF(exc);
                    if (r2 == NULL)
                        goto fail;
                    Py_DECREF(r2);
                    continue;
                }
            }
        }
        else if (ev->kind == SB_EV_PUBLISHED) {
            obj = Py_BuildValue("(sii)", "published", ev->mid, ev->reason);
            sb_event_free(ev);
        }
        else if (ev->kind == SB_EV_LOST) {
            obj = Py_BuildValue("(s)", "lost");
            sb_event_free(ev);
        }
        else {
            obj = Py_NewRef(ev->obj);
            sb_event_free(ev);
        }
        if (obj == NULL)
            goto fail;
        if (PyList_Append(events, obj) < 0) {
            Py_DECREF(obj);
            goto fail;
        }
        Py_DECREF(obj);
    }
    pthread_mutex_lock(&self->mu);
    self->dispatching--;
    self->consumer_seen = sb_monotonic();
    pthread_mutex_unlock(&self->mu);
    sb_dispatching_leave();
    return events;

fail:
    if (events != NULL) {
        pthread_mutex_lock(&self->mu);
        self->dispatching--;
        self->consumer_seen = sb_monotonic();
        pthread_mutex_unlock(&self->mu);
        sb_dispatching_leave();
    }
    /* nothing is lost: undelivered events go back to the front of the queue */
    if (batch) {
        pthread_mutex_lock(&self->mu);
        sb_queue_requeue_front_locked(self, batch, nmsgs);
        pthread_mutex_unlock(&self->mu);
    }
    Py_XDECREF(events);
    return NULL;
}

static PyObject *
conn_interrupt(sb_client *self, PyObject *unused)
{
    /* wake a waiting pump and make a delivering one return after the
     * callback in progress (read without the lock by pump: a word-sized
     * counter; the mutex orders the wake-up) */
    pthread_mutex_lock(&self->mu);
    self->interrupts++;
    pthread_cond_broadcast(&self->ev_cv);
    pthread_mutex_unlock(&self->mu);
    Py_RETURN_NONE;
}

static PyObject *
conn_post(sb_client *self, PyObject *obj)
{
    sb_event *ev = PyMem_RawCalloc(1, sizeof *ev);
    if (ev == NULL)
        return PyErr_NoMemory();
    ev->kind = SB_EV_USER;
    ev->obj = Py_NewRef(obj);
    pthread_mutex_lock(&self->mu);
    sb_queue_push_locked(self, ev);
    pthread_mutex_unlock(&self->mu);
    Py_RETURN_NONE;
}

/* ---- small accessors --------------------------------------------------- */

static PyObject *
conn_fileno(sb_client *self, PyObject *unused)
{
    return PyLong_FromLong(self->efd);
}

static PyObject *
conn_is_connected(sb_client *self, PyObject *unused)
{
    int c;
    sb_state *st = sb_state_of(self);
    if (st == NULL || check_usable_pid(self, st) < 0)
        return NULL;
    pthread_mutex_lock(&self->mu);
    c = self->connected;
    pthread_mutex_unlock(&self->mu);
    return PyBool_FromLong(c);
}

static PyObject *
conn_set_options(sb_client *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"want_published", "queue_max", "spin_us", "nodelay", "max_queued",
                             "queue_qos0", NULL};
    int want = -1, spin = -1, nodelay = -1, qos0 = -1;
    Py_ssize_t qmax = -1, obmax = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|iniini:set_options", kwlist, &want, &qmax, &spin, &nodelay,
                                     &obmax, &qos0))
        return NULL;
    if (nodelay >= 0)
        self->nodelay = nodelay;   /* read by connect() on the calling thread */
    pthread_mutex_lock(&self->mu);
    if (spin >= 0)
        self->spin_us = spin;
    if (want >= 0)
        self->want_published = want;
    if (qmax > 0) {
        self->qmax = qmax;
        pthread_cond_broadcast(&self->space_cv);
    }
    if (obmax >= 0)
        self->ob_max = obmax;
    if (qos0 >= 0)
        self->queue_qos0 = qos0;
    pthread_mutex_unlock(&self->mu);
    Py_RETURN_NONE;
}

static PyObject *
conn_stats(sb_client *self, PyObject *unused)
{
    unsigned long long in, dropped, waits;
    Py_ssize_t qlen, qmax, outbox, outbox_max;
    unsigned inflight, window;
    int connected;
    sb_store *store;
    sb_store_stats ss;
    PyObject *result;
    pthread_mutex_lock(&self->mu);
    in = self->messages_in;
    dropped = self->messages_dropped_on_close;
    waits = self->producer_waits;
    qlen = self->qlen;
    qmax = self->qmax;
    inflight = self->inflight;
    window = self->window;
    connected = self->connected;
    outbox = self->ob_count;
    outbox_max = self->ob_max;
    store = self->store;
    if (store != NULL)
        sb_store_get_stats(store, &ss);
    pthread_mutex_unlock(&self->mu);
    result = Py_BuildValue("{s:K,s:K,s:K,s:n,s:n,s:I,s:I,s:O,s:n,s:n}", "messages_in", in,
                           "dropped_on_close", dropped, "producer_waits", waits, "queued", qlen,
                           "queue_max", qmax, "inflight", inflight, "window", window,
                           "connected", connected ? Py_True : Py_False,
                           "outbox", outbox, "outbox_max", outbox_max);
    if (result != NULL && store != NULL) {
        PyObject *d = Py_BuildValue("{s:K,s:K,s:K,s:K,s:K,s:K,s:K}", "file_bytes", ss.file_bytes,
                                    "live_bytes", ss.live_bytes, "max_bytes", ss.max_bytes,
                                    "messages", ss.messages, "compactions", ss.compactions,
                                    "writes", ss.writes, "syncs", ss.syncs);
        if (d == NULL || PyDict_SetItemString(result, "store", d) < 0)
            Py_CLEAR(result);
        Py_XDECREF(d);
    }
    return result;
}

static PyMethodDef conn_methods[] = {
    {"connect", (PyCFunction)(void (*)(void))sb_conn_connect, METH_VARARGS | METH_KEYWORDS,
     "connect($self, /, uris, mqtt_version=5, keepalive=60, clean=True, username=None, password=None,"
     " will=None, will_props=None, props=None, tls=None, http_headers=None, timeout=30.0,"
     " max_inflight=20)\n--\n\nConnect (blocking, GIL released); returns a dict about the session."},
    {"publish", (PyCFunction)(void (*)(void))conn_publish, METH_FASTCALL,
     "publish($self, topic, payload, qos, retain, props=None, /)\n--\n\n"
     "Publish; returns a PublishInfo.  Waits for window room at QoS>0 while connected; "
     "queues in the outbox otherwise."},
    {"wait_published", (PyCFunction)conn_wait_published, METH_VARARGS,
     "wait_published($self, info, timeout, /)\n--\n\nWait (timeout<0: forever); returns (state, reason)."},
    {"flush", (PyCFunction)conn_flush, METH_VARARGS,
     "flush($self, timeout, /)\n--\n\nWait (timeout<0: forever) until every accepted publish is "
     "acknowledged (QoS>0) or written (QoS 0); returns whether the outbox is empty."},
    {"subscribe", (PyCFunction)sb_conn_subscribe, METH_VARARGS,
     "subscribe($self, items, props=None, /)\n--\n\n"
     "items: [(filter, qos, no_local, retain_as_published, retain_handling)]; returns reason codes."},
    {"unsubscribe", (PyCFunction)sb_conn_unsubscribe, METH_VARARGS,
     "unsubscribe($self, filters, props=None, /)\n--\n\nReturns reason codes."},
    {"disconnect", (PyCFunction)conn_disconnect, METH_VARARGS,
     "disconnect($self, timeout=0.0, reason=0, props=None, /)\n--\n\n"
     "Wait up to timeout for in-flight publishes, then disconnect.  Returns whether it was connected."},
    {"close", (PyCFunction)conn_close, METH_NOARGS,
     "close($self, /)\n--\n\nDisconnect, stop paho's use of this object and drop queued events."},
    {"forget", (PyCFunction)conn_forget, METH_NOARGS,
     "forget($self, /)\n--\n\nIn a forked child: abandon the parent's handle without touching it."},
    {"pump", (PyCFunction)conn_pump, METH_VARARGS,
     "pump($self, callback, args, on_error, timeout, max_batch, /)\n--\n\n"
     "Wait up to timeout for events, then deliver a batch: messages go to callback(*args, msg) "
     "(or into the result when callback is None); other events are returned as a list."},
    {"interrupt", (PyCFunction)conn_interrupt, METH_NOARGS,
     "interrupt($self, /)\n--\n\nMake a running pump() return after the callback in progress."},
    {"post", (PyCFunction)conn_post, METH_O,
     "post($self, obj, /)\n--\n\nQueue obj for the consumer (ordered with messages)."},
    {"fileno", (PyCFunction)conn_fileno, METH_NOARGS,
     "fileno($self, /)\n--\n\nAn eventfd that is readable while events are queued."},
    {"is_connected", (PyCFunction)conn_is_connected, METH_NOARGS, "is_connected($self, /)\n--\n\n"},
    {"set_options", (PyCFunction)(void (*)(void))conn_set_options, METH_VARARGS | METH_KEYWORDS,
     "set_options($self, /, want_published=-1, queue_max=-1, spin_us=-1, nodelay=-1, max_queued=-1,"
     " queue_qos0=-1)\n--\n\n"
     "Tune the connection; -1 leaves a setting unchanged.  nodelay applies from the next connect."},
    {"open_store", (PyCFunction)(void (*)(void))sb_conn_open_store, METH_VARARGS | METH_KEYWORDS,
     "open_store($self, /, directory, sync=0, max_bytes=0)\n--\n\n"
     "Make the outbox durable in directory (before the first connect or publish); "
     "restores what a previous run left and returns what was found."},
    {"stats", (PyCFunction)conn_stats, METH_NOARGS, "stats($self, /)\n--\n\nCounters, for tests and tuning."},
    {NULL}
};

static PyMemberDef conn_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(sb_client, weakreflist), READONLY},
    {NULL}
};

static PyType_Slot conn_slots[] = {
    {Py_tp_doc, "Connection(client_id, queue_max=10000)\n--\n\n"
                "One MQTT connection over paho.mqtt.c (internal; use sermas_bus.client.Client)."},
    {Py_tp_new, conn_new},
    {Py_tp_dealloc, conn_dealloc},
    {Py_tp_traverse, conn_traverse},
    {Py_tp_clear, conn_clear},
    {Py_tp_methods, conn_methods},
    {Py_tp_members, conn_members},
    {0, NULL}
};

PyType_Spec sb_connection_spec = {
    .name = "sermas_bus._core.Connection",
    .basicsize = sizeof(sb_client),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = conn_slots,
};
