/*
 * outbox_store.c - the outbox made durable: Connection.open_store(), the
 * restore of what a previous run left, and MQTT 5 properties packed for the
 * store.  The log itself is store.c (plain C); the outbox is outbox.c.
 *
 * What goes where:
 *   publish()   an accepted QoS>0 record is appended (ACCEPT) before it is
 *               handed to paho or queued, and committed before publish
 *               returns (client.c);
 *   paho        its in-flight and inbound QoS 2 records go through the
 *               store's MQTTClient_persistence interface, so a restarted
 *               client resumes the MQTT session exactly (resend with DUP);
 *   open_store  before the first connect: restores the messages not yet
 *               delivered into the outbox -- those paho had in flight into
 *               their message-id slots (paho re-sends them on a resumed
 *               session; on a clean one they go back to the queue), the
 *               others into the queue, in publish order.
 */
#include "sb.h"

#include <string.h>

/* ---- MQTT 5 properties <-> bytes ------------------------------------------ *
 * Each property: identifier (1 byte), then by type a 4-byte value, or a
 * 4-byte length and bytes, or two of those (user property).  Only read back
 * by sb_props_unpack, which checks every length. */

static void
pack32(unsigned char **p, uint32_t v)
{
    (*p)[0] = (unsigned char)v;
    (*p)[1] = (unsigned char)(v >> 8);
    (*p)[2] = (unsigned char)(v >> 16);
    (*p)[3] = (unsigned char)(v >> 24);
    *p += 4;
}

static int
unpack32(const unsigned char **p, const unsigned char *end, uint32_t *v)
{
    if (end - *p < 4)
        return -1;
    *v = (uint32_t)(*p)[0] | (uint32_t)(*p)[1] << 8 | (uint32_t)(*p)[2] << 16 | (uint32_t)(*p)[3] << 24;
    *p += 4;
    return 0;
}

static void
pack_str(unsigned char **p, const MQTTLenString *s)
{
    pack32(p, (uint32_t)s->len);
    if (s->len > 0)
        memcpy(*p, s->data, (size_t)s->len);
    *p += s->len;
}

/* Packed size of props (0 for none). */
static size_t
props_packed_size(const MQTTProperties *props)
{
    size_t n = 0;
    int i;
    for (i = 0; props != NULL && i < props->count; i++) {
        const MQTTProperty *p = &props->array[i];
        n += 1 + 4;
        switch (MQTTProperty_getType(p->identifier)) {
        case MQTTPROPERTY_TYPE_BINARY_DATA:
        case MQTTPROPERTY_TYPE_UTF_8_ENCODED_STRING:
            n += (size_t)p->value.data.len;
            break;
        case MQTTPROPERTY_TYPE_UTF_8_STRING_PAIR:
            n += (size_t)p->value.data.len + 4 + (size_t)p->value.value.len;
            break;
        default:
            break;
        }
    }
    return n;
}

/* Pack props into a PyMem_Raw buffer (*out NULL and *len 0 for none).
 * 0, or -1 out of memory. */
int
sb_props_pack(const MQTTProperties *props, unsigned char **out, uint32_t *len)
{
    size_t n = props_packed_size(props);
    unsigned char *b, *p;
    int i;
    *out = NULL;
    *len = 0;
    if (n == 0)
        return 0;
    if (n > UINT32_MAX || (b = PyMem_RawMalloc(n)) == NULL)
        return -1;
    p = b;
    for (i = 0; i < props->count; i++) {
        const MQTTProperty *pr = &props->array[i];
        *p++ = (unsigned char)pr->identifier;
        switch (MQTTProperty_getType(pr->identifier)) {
        case MQTTPROPERTY_TYPE_BYTE:
            pack32(&p, pr->value.byte);
            break;
        case MQTTPROPERTY_TYPE_TWO_BYTE_INTEGER:
            pack32(&p, pr->value.integer2);
            break;
        case MQTTPROPERTY_TYPE_FOUR_BYTE_INTEGER:
        case MQTTPROPERTY_TYPE_VARIABLE_BYTE_INTEGER:
            pack32(&p, pr->value.integer4);
            break;
        case MQTTPROPERTY_TYPE_BINARY_DATA:
        case MQTTPROPERTY_TYPE_UTF_8_ENCODED_STRING:
            pack_str(&p, &pr->value.data);
            break;
        case MQTTPROPERTY_TYPE_UTF_8_STRING_PAIR:
            pack_str(&p, &pr->value.data);
            pack_str(&p, &pr->value.value);
            break;
        default:
            pack32(&p, 0);
            break;
        }
    }
    *out = b;
    *len = (uint32_t)(p - b);
    return 0;
}

static int
unpack_str(const unsigned char **p, const unsigned char *end, MQTTLenString *s)
{
    uint32_t n;
    if (unpack32(p, end, &n) < 0 || n > (uint32_t)(end - *p) || n > 65535)
        return -1;
    s->len = (int)n;
    s->data = (char *)*p;      /* MQTTProperties_add copies it */
    *p += n;
    return 0;
}

/* Rebuild packed properties into *props (which must be empty).  0, or -1
 * for bytes that are not a packing of ours (props freed). */
int
sb_props_unpack(const unsigned char *b, uint32_t len, MQTTProperties *props)
{
    const unsigned char *p = b, *end = b + len;
    while (p < end) {
        MQTTProperty pr;
        uint32_t v;
        memset(&pr, 0, sizeof pr);
        pr.identifier = (enum MQTTPropertyCodes) * p++;
        switch (MQTTProperty_getType(pr.identifier)) {
        case MQTTPROPERTY_TYPE_BYTE:
            if (unpack32(&p, end, &v) < 0 || v > 0xff)
                goto bad;
            pr.value.byte = (unsigned char)v;
            break;
        case MQTTPROPERTY_TYPE_TWO_BYTE_INTEGER:
            if (unpack32(&p, end, &v) < 0 || v > 0xffff)
                goto bad;
            pr.value.integer2 = (unsigned short)v;
            break;
        case MQTTPROPERTY_TYPE_FOUR_BYTE_INTEGER:
        case MQTTPROPERTY_TYPE_VARIABLE_BYTE_INTEGER:
            if (unpack32(&p, end, &v) < 0)
                goto bad;
            pr.value.integer4 = v;
            break;
        case MQTTPROPERTY_TYPE_BINARY_DATA:
        case MQTTPROPERTY_TYPE_UTF_8_ENCODED_STRING:
            if (unpack_str(&p, end, &pr.value.data) < 0)
                goto bad;
            break;
        case MQTTPROPERTY_TYPE_UTF_8_STRING_PAIR:
            if (unpack_str(&p, end, &pr.value.data) < 0 || unpack_str(&p, end, &pr.value.value) < 0)
                goto bad;
            break;
        default:
            goto bad;
        }
        if (MQTTProperties_add(props, &pr) != 0)
            goto bad;
    }
    return 0;
bad:
    MQTTProperties_free(props);
    return -1;
}

/* ---- restore ----------------------------------------------------------------- */

typedef struct {
    sb_client *c;
    Py_ssize_t restored, in_flight;
} restore_ctx;

/* One message a previous run accepted: back into the outbox.  Runs with the
 * client's mu held (open_store, before any connect or publish). */
static int
restore_one_locked(void *arg, const sb_store_msg *m)
{
    restore_ctx *ctx = arg;
    sb_client *c = ctx->c;
    MQTTProperties props = MQTTProperties_initializer;
    sb_out *o;

    if (m->props_len > 0 && sb_props_unpack(m->props, m->props_len, &props) < 0)
        props = (MQTTProperties)MQTTProperties_initializer;   /* (cannot happen: packed by us) */
    o = sb_out_new(m->topic, m->topic_len, m->payload, m->len, m->qos, m->retain, &props);
    MQTTProperties_free(&props);
    if (o == NULL)
        return -1;
    o->seq = m->seq;
    if (++c->next_mid > 65535)
        c->next_mid = 1;
    o->mid = c->next_mid;
    if (m->seq > c->pub_seq)
        c->pub_seq = m->seq;
    c->ob_count++;
    ctx->restored++;
    if (m->token > 0 && m->token < SB_SLOTS && c->slots[m->token].out == NULL) {
        /* paho restores its own record of it and re-sends it (DUP) on a
         * resumed session; after_connect moves it to the queue otherwise */
        o->state = SB_PUB_PENDING;
        o->token = m->token;
        c->slots[m->token].out = o;
        ctx->in_flight++;
    }
    else
        sb_outbox_enqueue_locked(c, o);
    return 0;
}

/* Connection.open_store(directory, sync, max_bytes) -> report dict. */
PyObject *
sb_conn_open_store(sb_client *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"directory", "sync", "max_bytes", NULL};
    sb_state *st = sb_state_of(self);
    PyObject *dir_obj, *dir_bytes = NULL, *report = NULL, *exc_type;
    int sync = SB_STORE_SYNC_WRITE, kind = 0, rc;
    unsigned long long max_bytes = 0;
    sb_store *store;
    sb_store_report rep;
    char err[1024];
    restore_ctx ctx = {self, 0, 0};

    if (st == NULL || sb_check_usable(self, st) < 0)
        return NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|iK:open_store", kwlist, &dir_obj, &sync, &max_bytes))
        return NULL;
    if (sync != SB_STORE_SYNC_WRITE && sync != SB_STORE_SYNC_FSYNC) {
        PyErr_SetString(PyExc_ValueError, "sync must be 0 (write) or 1 (fsync)");
        return NULL;
    }
    if (self->client_id == NULL || self->client_id[0] == '\0') {
        PyErr_SetString(PyExc_ValueError,
                        "persistence needs a client_id: the store and the broker's session belong "
                        "to one client id, the same at every start");
        return NULL;
    }
    pthread_mutex_lock(&self->mu);
    rc = self->store != NULL ? 1 : (self->handle != NULL || self->pub_seq > 0) ? 2 : 0;
    pthread_mutex_unlock(&self->mu);
    if (rc != 0) {
        PyErr_SetString(PyExc_RuntimeError,
                        rc == 1 ? "this client already has a persistence directory"
                                : "persistence must be opened before the first connect() or publish()");
        return NULL;
    }
    if (!PyUnicode_FSConverter(dir_obj, &dir_bytes))
        return NULL;
    /* reading and rewriting the log is file I/O: no GIL */
    Py_BEGIN_ALLOW_THREADS
    store = sb_store_open(PyBytes_AS_STRING(dir_bytes), self->client_id, sync, max_bytes, &rep, &kind,
                          err, sizeof err);
    Py_END_ALLOW_THREADS
    Py_DECREF(dir_bytes);
    if (store == NULL) {
        if (kind == SB_STORE_E_NOMEM)
            return PyErr_NoMemory();
        exc_type = kind == SB_STORE_E_LOCKED ? st->PersistenceLockedError : st->PersistenceError;
        PyErr_SetString(exc_type, err);
        return NULL;
    }
    /* back into the outbox, before anything else can touch it: checked
     * again under the same lock (a connect or publish may have begun while
     * the log was read) */
    pthread_mutex_lock(&self->mu);
    if (self->handle != NULL || self->pub_seq > 0 || self->recreating || self->closing) {
        pthread_mutex_unlock(&self->mu);
        Py_BEGIN_ALLOW_THREADS
        sb_store_close(store);
        Py_END_ALLOW_THREADS
        PyErr_SetString(PyExc_RuntimeError,
                        "persistence must be opened before the first connect() or publish()");
        return NULL;
    }
    self->store = store;
    rc = sb_store_each_message(store, restore_one_locked, &ctx);
    /* new messages are numbered after every seq the log names, restored or not */
    if (sb_store_max_seq(store) > self->pub_seq)
        self->pub_seq = sb_store_max_seq(store);
    pthread_mutex_unlock(&self->mu);
    if (rc != 0) {
        /* out of memory half-way: what was restored stays; the rest is in
         * the log and comes back at the next open */
        return PyErr_NoMemory();
    }
    report = Py_BuildValue("{s:K,s:n,s:n,s:K,s:K,s:K,s:O,s:s}", "records", (unsigned long long)rep.records,
                           "messages", ctx.restored, "in_flight", ctx.in_flight, "paho_records",
                           (unsigned long long)rep.paho_records, "damaged_bytes",
                           (unsigned long long)rep.damaged_bytes, "damaged_spans",
                           (unsigned long long)rep.damaged_spans, "torn_tail",
                           rep.torn_tail ? Py_True : Py_False, "damaged_copy", rep.damaged_copy);
    return report;
}

/* Close the store with the client: publishers still between accept and
 * commit finish first; buffered records reach the file; the lock is
 * released.  File I/O and a wait: the caller released the GIL. */
void
sb_outbox_store_close_nogil(sb_client *self)
{
    sb_store *s;
    pthread_mutex_lock(&self->mu);
    while (self->store_users > 0)
        pthread_cond_wait(&self->pub_cv, &self->mu);
    s = self->store;
    self->store = NULL;
    pthread_mutex_unlock(&self->mu);
    sb_store_close(s);
}

/* A forked child's close: the lock and the log are the parent's; free our
 * copy only (no I/O, no wait: the child has no other threads). */
void
sb_outbox_store_forget(sb_client *self)
{
    sb_store *s = self->store;
    self->store = NULL;
    sb_store_forget(s);
}
