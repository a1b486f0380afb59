/*
 * request.c - Connection.subscribe / unsubscribe: a request the broker
 * answers (SUBACK / UNSUBACK).
 *
 * paho.mqtt.c's synchronous subscribe waits for the SUBACK on a semaphore
 * that only the SUBACK posts: when the connection drops after the SUBSCRIBE
 * went out, the call sits out the whole command time-out (10 s) and then
 * disconnects the handle (MQTTClient.c, MQTTClient_subscribeMany5).  So the
 * paho call runs on a short-lived thread of its own, and the caller waits for
 * whichever comes first: the answer, the connection going (lost, disconnected,
 * closed), or the caller's time-out.  If the caller gives up, the thread owns
 * the request and frees it when paho returns.  Until then the thread is a user
 * of the handle, so close() waits for it, and connect() waits for it before a
 * new CONNECT -- otherwise paho's time-out would disconnect the new connection.
 *
 * GIL: the request is built with the GIL (raw copies), the waits and every
 * paho call run without it, and the request thread never touches Python.
 */
#include "sb.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>

enum { REQ_SUBSCRIBE, REQ_UNSUBSCRIBE };
#define REQ_ABANDONED (-1000)   /* the connection went first; the thread owns the request */

typedef struct {
    sb_client *client;
    int kind;
    int v5;
    Py_ssize_t n;
    char **topics;
    int *qos;                       /* subscribe: asked, then granted (3.1.1) */
    MQTTSubscribe_options *opts;    /* subscribe, MQTT 5 */
    MQTTProperties props;
    MQTTResponse resp;
    int done;                       /* under client->mu */
    int abandoned;                  /* the caller gave up: the thread frees it */
} sb_request;

static void
request_free(sb_request *r)
{
    MQTTResponse_free(r->resp);
    MQTTProperties_free(&r->props);
    sb_free_str_array(r->topics, r->n);
    PyMem_RawFree(r->qos);
    PyMem_RawFree(r->opts);
    PyMem_RawFree(r);
}

/* ---- the paho call (no GIL, no Python) ----------------------------------- */

static void
request_call_nogil(sb_request *r)
{
    sb_client *c = r->client;
    if (r->kind == REQ_SUBSCRIBE)
        r->resp = MQTTClient_subscribeMany5(c->handle, (int)r->n, r->topics, r->qos, r->v5 ? r->opts : NULL,
                                            r->v5 ? &r->props : NULL);
    else
        r->resp = MQTTClient_unsubscribeMany5(c->handle, (int)r->n, r->topics, r->v5 ? &r->props : NULL);
}

/* The request thread: the handle was acquired (and `requests` counted) for
 * it by the caller; it releases both when paho returns. */
static void *
request_thread_nogil(void *arg)
{
    sb_request *r = arg;
    sb_client *c = r->client;
    int abandoned;

    request_call_nogil(r);
    pthread_mutex_lock(&c->mu);
    sb_blocking_leave_locked(c);
    r->done = 1;
    abandoned = r->abandoned;
    c->requests--;
    pthread_cond_broadcast(&c->req_cv);
    sb_handle_release_locked(c);    /* last touch of c: close() may free it now */
    pthread_mutex_unlock(&c->mu);
    if (abandoned)
        request_free(r);
    return NULL;
}

/* Run the request: 0 when paho returned (r->resp), MQTTCLIENT_DISCONNECTED
 * when there was no connection to send it on, REQ_ABANDONED when the
 * connection went first (r then belongs to the request thread: hands off). */
static int
request_run_nogil(sb_client *c, sb_request *r)
{
    pthread_t t;
    pthread_attr_t attr;
    int started = 0, gave_up = 0;

    pthread_mutex_lock(&c->mu);
    if (!c->connected || !sb_handle_acquire_locked(c)) {
        pthread_mutex_unlock(&c->mu);
        return MQTTCLIENT_DISCONNECTED;
    }
    c->requests++;
    /* paho's receive thread must not wait for queue room meanwhile: it has
     * to read the answer */
    sb_blocking_enter_locked(c);
    pthread_mutex_unlock(&c->mu);

    if (pthread_attr_init(&attr) == 0) {
        (void)pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        started = pthread_create(&t, &attr, request_thread_nogil, r) == 0;
        pthread_attr_destroy(&attr);
    }
    if (!started) {
        request_thread_nogil(r);   /* no thread to spare: wait in paho ourselves */
        return 0;
    }
    pthread_mutex_lock(&c->mu);
    while (!r->done && c->connected && !c->closing)
        pthread_cond_wait(&c->req_cv, &c->mu);
    if (!r->done) {
        r->abandoned = 1;          /* request_thread_nogil frees it */
        gave_up = 1;
    }
    pthread_mutex_unlock(&c->mu);
    return gave_up ? REQ_ABANDONED : 0;
}

/* ---- building the request, and the answer (GIL held) ------------------ */

/* Common start: usable, connected, args parsed.  Returns the items as a new
 * "fast" sequence, *props borrowed. */
static PyObject *
request_items(sb_client *self, sb_state *st, PyObject *args, const char *what, PyObject **props)
{
    PyObject *items;
    char fmt[64];
    *props = Py_None;
    if (st == NULL || sb_check_usable(self, st) < 0)
        return NULL;
    snprintf(fmt, sizeof fmt, "O|O:%s", what);
    if (!PyArg_ParseTuple(args, fmt, &items, props))
        return NULL;
    if (self->handle == NULL || !self->connected) {
        PyErr_Format(st->NotConnectedError, "%s needs a connection; call connect() first", what);
        return NULL;
    }
    return PySequence_Fast(items, "expected a sequence of topic filters");
}

static sb_request *
request_new(sb_client *self, int kind, Py_ssize_t n)
{
    sb_request *r = PyMem_RawCalloc(1, sizeof *r);
    MQTTProperties init = MQTTProperties_initializer;
    MQTTResponse rinit = MQTTResponse_initializer;
    if (r == NULL)
        return (sb_request *)PyErr_NoMemory();
    r->client = self;
    r->kind = kind;
    r->v5 = self->mqtt_version >= MQTTVERSION_5;
    r->props = init;
    r->resp = rinit;
    r->topics = PyMem_RawCalloc((size_t)(n ? n : 1), sizeof(char *));
    if (r->topics == NULL) {
        PyMem_RawFree(r);
        return (sb_request *)PyErr_NoMemory();
    }
    r->n = n;
    return r;
}

/* Subscribe items: (filter, qos, no_local, retain_as_published, retain_handling). */
static int
request_add_subscriptions(sb_request *r, PyObject *seq)
{
    Py_ssize_t i;
    r->qos = PyMem_RawCalloc((size_t)r->n, sizeof(int));
    r->opts = PyMem_RawCalloc((size_t)r->n, sizeof(MQTTSubscribe_options));
    if (r->qos == NULL || r->opts == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (i = 0; i < r->n; i++) {
        PyObject *f;
        int q, nl, rap, rh;
        MQTTSubscribe_options init = MQTTSubscribe_options_initializer;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "Uippi:subscribe item", &f, &q, &nl, &rap, &rh))
            return -1;
        if ((r->topics[i] = sb_raw_utf8(f, "topic filter")) == NULL)
            return -1;
        r->qos[i] = q;
        r->opts[i] = init;
        r->opts[i].noLocal = (unsigned char)nl;
        r->opts[i].retainAsPublished = (unsigned char)rap;
        r->opts[i].retainHandling = (unsigned char)rh;
    }
    return 0;
}

static int
request_add_filters(sb_request *r, PyObject *seq)
{
    Py_ssize_t i;
    for (i = 0; i < r->n; i++)
        if ((r->topics[i] = sb_raw_utf8(PySequence_Fast_GET_ITEM(seq, i), "topic filter")) == NULL)
            return -1;
    return 0;
}

/* The reason code per item, or an exception. */
static PyObject *
request_answer(sb_state *st, const sb_request *r, int rc, const char *what)
{
    PyObject *result;
    Py_ssize_t i;
    int code = (int)r->resp.reasonCode;   /* as int: MQTTReasonCodes is an unsigned enum */

    if (rc != 0)
        return sb_raise_rc(st, what, rc);
    /* paho's return codes are negative; on 3.1.1 a refused filter is
     * MQTTCLIENT_FAILURE with qos[i] = 0x80 */
    if (code < 0 && !(r->kind == REQ_SUBSCRIBE && !r->v5 && code == MQTTCLIENT_FAILURE))
        return sb_raise_rc(st, what, code);
    if ((result = PyList_New(r->n)) == NULL)
        return NULL;
    for (i = 0; i < r->n; i++) {
        int c;
        if (r->kind == REQ_SUBSCRIBE && !r->v5)
            c = r->qos[i];   /* 3.1.1: granted QoS or 0x80 */
        else if (r->v5 && r->n > 1 && r->resp.reasonCodes)
            c = (int)r->resp.reasonCodes[i];
        else
            c = code;
        PyList_SET_ITEM(result, i, PyLong_FromLong(c));
    }
    return result;
}

static PyObject *
request_do(sb_client *self, PyObject *args, int kind, const char *what)
{
    sb_state *st = sb_state_of(self);
    PyObject *props, *seq, *result = NULL;
    sb_request *r;
    int rc, ok;

    if ((seq = request_items(self, st, args, what, &props)) == NULL)
        return NULL;
    if (kind == REQ_SUBSCRIBE && PySequence_Fast_GET_SIZE(seq) < 1) {
        PyErr_SetString(PyExc_ValueError, "subscribe needs at least one topic filter");
        Py_DECREF(seq);
        return NULL;
    }
    if ((r = request_new(self, kind, PySequence_Fast_GET_SIZE(seq))) == NULL) {
        Py_DECREF(seq);
        return NULL;
    }
    ok = (kind == REQ_SUBSCRIBE ? request_add_subscriptions(r, seq) : request_add_filters(r, seq)) == 0 &&
         (!r->v5 || sb_props_from_pairs(props, &r->props) == 0);
    Py_DECREF(seq);
    if (!ok) {
        request_free(r);
        return NULL;
    }
    /* the answer comes through paho's receive thread: wait without the GIL */
    Py_BEGIN_ALLOW_THREADS
    rc = request_run_nogil(self, r);
    Py_END_ALLOW_THREADS
    if (rc == REQ_ABANDONED)
        return PyErr_Format(st->ConnectionLostError,
                            "the connection was lost before the broker answered the %s", what);
    /* r is ours again: paho returned, or it never started */
    result = request_answer(st, r, rc, what);
    request_free(r);
    return result;
}

PyObject *
sb_conn_subscribe(sb_client *self, PyObject *args)
{
    return request_do(self, args, REQ_SUBSCRIBE, "subscribe");
}

PyObject *
sb_conn_unsubscribe(sb_client *self, PyObject *args)
{
    return request_do(self, args, REQ_UNSUBSCRIBE, "unsubscribe");
}

/* connect(): wait (no GIL) until no request is inside paho with the old
 * connection; bounded by paho's command time-out plus a margin. */
void
sb_requests_drain_locked(sb_client *c)
{
    double deadline = sb_monotonic() + 15.0;
    while (c->requests > 0)
        if (sb_timed_wait(&c->req_cv, &c->mu, deadline) == ETIMEDOUT)
            break;
}
