/*
 * outbox.c - every publish the client still has to deliver.
 *
 * A publish at QoS>0 becomes a record (sb_out) holding its own copy of topic,
 * payload and properties.  The record is QUEUED while the client cannot send
 * it (disconnected, before the first connect, or behind older queued
 * records), PENDING while paho delivers it under a message id (slot), and
 * DONE / FAILED once the broker answered.  On a lost connection PENDING
 * records stay put: after the reconnect, those paho still holds (a resumed
 * session) are re-sent by paho; the others go back to the queue, in publish
 * order, and the flusher sends them again.  Only close() gives up on a
 * record (LOST).  This is paho-mqtt's promise -- a QoS>0 message is kept
 * until acknowledged -- kept in C, and the unit a durable store can persist.
 *
 * The flusher is one pthread per client, started on first need: it sends
 * queued records while the client is connected and its window has room.  It
 * never runs Python and never holds the GIL; it is a publisher like any other
 * thread (same window, same paho call).
 *
 * Locking: everything here runs with the client's mu held, except
 * sb_paho_publish_nogil and the flusher's paho call, which run with mu
 * released (paho calls our callbacks while holding its own mutex).
 */
#include "sb.h"

#include <stdlib.h>
#include <string.h>

/* ---- records ---------------------------------------------------------- */

/* A new record with one reference (the outbox's).  No GIL needed. */
sb_out *
sb_out_new(const char *topic, Py_ssize_t topic_len, const void *payload, Py_ssize_t len, int qos,
           int retain, const MQTTProperties *props)
{
    sb_out *o = PyMem_RawMalloc(sizeof *o + (size_t)topic_len + 1 + (size_t)len);
    if (o == NULL)
        return NULL;
    memset(o, 0, sizeof *o);
    o->refs = 1;
    o->qos = (unsigned char)qos;
    o->retain = (unsigned char)(retain != 0);
    o->topic_len = (int)topic_len;
    o->len = (int)len;
    o->topic = (char *)(o + 1);
    memcpy(o->topic, topic, (size_t)topic_len);
    o->topic[topic_len] = '\0';
    o->payload = o->topic + topic_len + 1;
    if (len > 0)
        memcpy(o->payload, payload, (size_t)len);
    if (props != NULL && props->count > 0) {
        o->props = MQTTProperties_copy(props);
        o->has_props = 1;
    }
    return o;
}

/* Drop one reference; caller holds the client's mu (which guards refs). */
void
sb_out_release_locked(sb_out *o)
{
    if (o == NULL || --o->refs > 0)
        return;
    if (o->has_props)
        MQTTProperties_free(&o->props);
    PyMem_RawFree(o);
}

/* ---- completion events for on_publish / asyncio ------------------------- */

/* Queue a "published" event when the Python side asked for them.  Events
 * bypass the inbound bound: the caller may be paho's thread holding paho's
 * mutex, which must never wait on the consumer. */
void
sb_push_published_locked(sb_client *c, int mid, int reason)
{
    sb_event *ev;
    if (!c->want_published)
        return;
    ev = PyMem_RawCalloc(1, sizeof *ev);
    if (ev == NULL)
        return;   /* out of memory: on_publish misses one call; the record itself is right */
    ev->kind = SB_EV_PUBLISHED;
    ev->mid = mid;
    ev->reason = reason;
    sb_queue_push_locked(c, ev);
}

/* ---- the queue ---------------------------------------------------------- */

static void
start_flusher_locked(sb_client *c);

/* Queue a record (it keeps its sequence number), in publish order: almost
 * always at the tail; a publisher that waited for window room while the
 * connection dropped may hold an older record than the tail. */
void
sb_outbox_enqueue_locked(sb_client *c, sb_out *o)
{
    o->state = SB_PUB_QUEUED;
    o->token = 0;
    o->next = NULL;
    if (c->q_tail == NULL) {
        c->q_head = c->q_tail = o;
    }
    else if (c->q_tail->seq < o->seq) {
        c->q_tail->next = o;
        c->q_tail = o;
    }
    else if (o->seq < c->q_head->seq) {
        o->next = c->q_head;
        c->q_head = o;
    }
    else {
        sb_out *p = c->q_head;
        while (p->next != NULL && p->next->seq < o->seq)
            p = p->next;
        o->next = p->next;
        p->next = o;
        if (o->next == NULL)
            c->q_tail = o;
    }
    if (c->connected)
        start_flusher_locked(c);
    pthread_cond_signal(&c->ob_cv);
}

static sb_out *
dequeue_locked(sb_client *c)
{
    sb_out *o = c->q_head;
    if (o != NULL) {
        c->q_head = o->next;
        if (c->q_head == NULL)
            c->q_tail = NULL;
        o->next = NULL;
    }
    return o;
}

/* Is everything accepted delivered (nothing queued, in flight or being sent)? */
int
sb_outbox_idle_locked(const sb_client *c)
{
    return c->ob_count == 0 && c->sending == 0;
}

/* Wake flush() waiters once the outbox ran empty. */
static void
note_progress_locked(sb_client *c)
{
    if (c->pub_waiters && sb_outbox_idle_locked(c))
        pthread_cond_broadcast(&c->pub_cv);
}

/* ---- sending -------------------------------------------------------------- */

/* The one place that calls paho's publish.  GIL not held, mu not held; the
 * caller holds a handle reference (handle_users) and counts itself in
 * c->sending.  Returns paho's return code (MQTTCLIENT_SUCCESS or < 0). */
int
sb_paho_publish_nogil(sb_client *c, const char *topic, int len, const void *payload, int qos,
                      int retain, MQTTProperties *props, uint64_t seq, int *token)
{
    int fd = c->sock_fd, rc;
    sb_store *store = qos > 0 ? c->store : NULL;
    /* every 64 publishes (or for a big one) make sure the kernel can take
     * the write now, so paho never finds a half-written packet and sleeps
     * 100 ms (the fd is only a hint: worst case a needless poll) */
    if (fd >= 0 && (++c->pubs_since_poll >= 64 || len > 4096)) {
        c->pubs_since_poll = 0;
        sb_wait_writable(fd, 1000);
    }
    *token = 0;
    /* the record paho stores for this PUBLISH (store.c) names our message,
     * so a restart knows which accepted message paho had in flight */
    if (store != NULL)
        sb_store_publishing(store, seq);
    if (c->mqtt_version >= MQTTVERSION_5) {
        MQTTProperties empty = MQTTProperties_initializer;
        MQTTResponse resp = MQTTClient_publish5(c->handle, topic, len, payload, qos, retain,
                                                props ? props : &empty, token);
        /* paho's return codes are negative; MQTTReasonCodes is an unsigned
         * enum, so compare as int (a "< 0" on the enum is always false) */
        rc = (int)resp.reasonCode;
        MQTTResponse_free(resp);
        rc = rc < 0 ? rc : MQTTCLIENT_SUCCESS;
    }
    else
        rc = MQTTClient_publish(c->handle, topic, len, payload, qos, retain, token);
    if (store != NULL)
        sb_store_publishing(store, 0);
    return rc;
}

/* A record that ends without paho ever holding it (paho refused it): the
 * durable store must not send it again after a restart.  mu held. */
void
sb_outbox_settled_without_paho_locked(sb_client *c, sb_out *o)
{
    if (c->store != NULL && o->qos > 0)
        sb_store_done(c->store, o->seq);
}

/* paho took the record under message id token (PENDING), or the broker
 * already answered (the slot's early note).  QoS 0 records are done once
 * written.  Caller holds mu; the outbox's reference moves to the slot. */
void
sb_outbox_sent_locked(sb_client *c, sb_out *o, int token)
{
    sb_slot *s;
    if (o->qos == 0 || token <= 0 || token >= SB_SLOTS) {
        o->state = SB_PUB_DONE;
        c->ob_count--;
        if (o->qos == 0)
            sb_push_published_locked(c, o->mid, 0);
        sb_out_release_locked(o);
        note_progress_locked(c);
        return;
    }
    s = &c->slots[token];
    if (s->early) {
        /* the broker answered before we got here; the window slot is free */
        o->reason = s->early_reason;
        o->state = s->early_reason >= 0x80 ? SB_PUB_FAILED : SB_PUB_DONE;
        s->early = 0;
        s->early_reason = 0;
        c->ob_count--;
        sb_push_published_locked(c, o->mid, o->reason);
        sb_out_release_locked(o);
        note_progress_locked(c);
        return;
    }
    o->state = SB_PUB_PENDING;
    o->token = token;
    s->out = o;
}

/* The broker completed paho message id token (PUBACK, PUBCOMP, or a failed
 * PUBREC).  Runs on paho's receive thread with mu held: no Python. */
void
sb_outbox_complete_locked(sb_client *c, int token, int state, int reason)
{
    sb_slot *s;
    sb_out *o;
    if (token <= 0 || token >= SB_SLOTS)
        return;
    s = &c->slots[token];
    o = s->out;
    if (o != NULL) {
        s->out = NULL;
        o->state = (unsigned char)state;
        if (reason > o->reason)
            o->reason = (unsigned char)reason;
        o->token = 0;
        c->ob_count--;
        sb_push_published_locked(c, o->mid, o->reason);
        sb_out_release_locked(o);
    }
    else if (c->sending > 0) {
        /* a publisher is between paho's publish returning and recording
         * the slot: leave it a note */
        s->early = 1;
        if (reason > s->early_reason)
            s->early_reason = (unsigned char)reason;
    }
    else
        return;   /* not ours (stale id): the window was not ours either */
    if (c->inflight > 0)
        c->inflight--;
    if (c->pub_waiters)
        pthread_cond_broadcast(&c->pub_cv);
    /* Wake a publisher waiting for window room only once a quarter of the
     * window is free: one wake-up per batch of PUBACKs, not one per PUBACK. */
    if (c->window_waiters) {
        unsigned quarter = c->window / 4 ? c->window / 4 : 1;
        if (c->inflight + quarter <= c->window)
            pthread_cond_broadcast(&c->win_cv);
    }
}

/* ---- connection changes ----------------------------------------------------- */

static int
seq_cmp(const void *a, const void *b)
{
    uint64_t x = (*(sb_out *const *)a)->seq, y = (*(sb_out *const *)b)->seq;
    return x < y ? -1 : x > y;
}

/* Connected again.  held_tokens: the message ids paho still delivers (a
 * resumed session); their records stay PENDING.  Every other PENDING record
 * was dropped by paho (clean session) and goes back to the queue, oldest
 * first, ahead of what was published meanwhile.  Caller holds mu. */
void
sb_outbox_after_connect_locked(sb_client *c, const int *held_tokens, int n_held)
{
    unsigned char *held = PyMem_RawCalloc(SB_SLOTS / 8, 1);
    sb_out **back = NULL;
    int i, n_back = 0, n_pending = 0;

    for (i = 0; i < SB_SLOTS; i++)
        if (c->slots[i].out != NULL)
            n_pending++;
    c->inflight = 0;
    if (n_pending > 0)
        back = PyMem_RawMalloc((size_t)n_pending * sizeof *back);
    for (i = 0; held != NULL && i < n_held; i++)
        if (held_tokens[i] > 0 && held_tokens[i] < SB_SLOTS)
            held[held_tokens[i] / 8] |= (unsigned char)(1u << (held_tokens[i] % 8));
    for (i = 1; i < SB_SLOTS; i++) {
        sb_slot *s = &c->slots[i];
        s->early = 0;
        s->early_reason = 0;
        if (s->out == NULL)
            continue;
        if (held != NULL && (held[i / 8] & (1u << (i % 8)))) {
            c->inflight++;     /* paho re-sends it on the resumed session */
            continue;
        }
        if (back == NULL) {
            /* out of memory for the sort: queue it as it comes (order may
             * suffer, nothing is lost) */
            sb_out *o = s->out;
            s->out = NULL;
            sb_outbox_enqueue_locked(c, o);
            continue;
        }
        back[n_back++] = s->out;
        s->out = NULL;
    }
    if (n_back > 0) {
        /* back holds records older than anything queued: put them in front */
        qsort(back, (size_t)n_back, sizeof *back, seq_cmp);
        for (i = n_back - 1; i >= 0; i--) {
            sb_out *o = back[i];
            o->state = SB_PUB_QUEUED;
            o->token = 0;
            o->next = c->q_head;
            c->q_head = o;
            if (c->q_tail == NULL)
                c->q_tail = o;
        }
    }
    PyMem_RawFree(back);
    PyMem_RawFree(held);
    if (c->q_head != NULL) {
        start_flusher_locked(c);
        pthread_cond_signal(&c->ob_cv);
    }
}

/* close(): give up every record (their waiters see LOST).  Caller holds mu;
 * paho no longer runs our callbacks for this client. */
void
sb_outbox_close_locked(sb_client *c)
{
    sb_out *o;
    int i;
    while ((o = dequeue_locked(c)) != NULL) {
        o->state = SB_PUB_LOST;
        sb_out_release_locked(o);
    }
    for (i = 1; i < SB_SLOTS; i++) {
        sb_slot *s = &c->slots[i];
        if (s->out != NULL) {
            s->out->state = SB_PUB_LOST;
            s->out->token = 0;
            sb_out_release_locked(s->out);
            s->out = NULL;
        }
        s->early = 0;
    }
    c->ob_count = 0;
    c->inflight = 0;
    c->outbox_closed = 1;
    pthread_cond_broadcast(&c->pub_cv);
    pthread_cond_broadcast(&c->win_cv);
    pthread_cond_broadcast(&c->ob_cv);
}

/* ---- the flusher thread -------------------------------------------------------- */

/* Send one queued record; returns 0 to go on, -1 to wait for a change
 * (window full, no handle, connection gone).  Caller holds mu. */
static int
flush_one_nogil(sb_client *c)
{
    sb_out *o = c->q_head;
    int rc, token = 0;

    if (o->qos > 0 && c->inflight >= c->window) {
        /* waiting for PUBACKs, which paho's receive thread reads: it must
         * not wait for queue room meanwhile */
        sb_blocking_enter_locked(c);
        c->window_waiters++;
        while (c->inflight >= c->window && c->connected && !c->closing)
            pthread_cond_wait(&c->win_cv, &c->mu);
        c->window_waiters--;
        sb_blocking_leave_locked(c);
        return 0;   /* re-check everything */
    }
    if (c->closing || c->recreating || c->handle == NULL || !c->connected)
        return -1;
    dequeue_locked(c);
    c->handle_users++;
    c->sending++;
    c->flush_busy = 1;
    if (o->qos > 0)
        c->inflight++;
    pthread_mutex_unlock(&c->mu);
    rc = sb_paho_publish_nogil(c, o->topic, o->len, o->payload, o->qos, o->retain,
                               o->has_props && c->mqtt_version >= MQTTVERSION_5 ? &o->props : NULL,
                               o->seq, &token);
    pthread_mutex_lock(&c->mu);
    c->sending--;
    if (--c->handle_users == 0)
        pthread_cond_broadcast(&c->pub_cv);
    if (rc == MQTTCLIENT_SUCCESS)
        sb_outbox_sent_locked(c, o, token);
    else {
        if (o->qos > 0 && c->inflight > 0)
            c->inflight--;
        if (rc == MQTTCLIENT_DISCONNECTED || !c->connected) {
            sb_outbox_enqueue_locked(c, o);   /* back in front (oldest seq): after the reconnect */
            c->flush_busy = 0;
            return -1;
        }
        /* paho refused the message itself (cannot happen for what publish()
         * validated): fail it rather than retry for ever */
        o->state = SB_PUB_FAILED;
        o->reason = 0x80;
        sb_outbox_settled_without_paho_locked(c, o);
        c->ob_count--;
        sb_push_published_locked(c, o->mid, 0x80);
        sb_out_release_locked(o);
    }
    if (c->q_head == NULL)
        c->flush_busy = 0;
    note_progress_locked(c);
    return 0;
}

static void *
flusher_main_nogil(void *arg)
{
    sb_client *c = arg;
    /* a plain C thread: never Python, never the GIL */
    pthread_mutex_lock(&c->mu);
    while (!c->closing) {
        if (c->q_head == NULL || !c->connected || c->handle == NULL || c->recreating) {
            c->flush_busy = 0;
            pthread_cond_wait(&c->ob_cv, &c->mu);
            continue;
        }
        if (flush_one_nogil(c) < 0 && !c->closing)
            pthread_cond_wait(&c->ob_cv, &c->mu);
    }
    c->flush_busy = 0;
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

static void
start_flusher_locked(sb_client *c)
{
    if (c->flusher_started || c->closing)
        return;
    if (pthread_create(&c->flusher, NULL, flusher_main_nogil, c) == 0)
        c->flusher_started = 1;
    /* else: no thread now; the next enqueue or connect tries again, and
     * flush() reports the records still queued */
}

/* close(): stop the flusher (closing is set).  GIL not held: the flusher may
 * be inside paho's publish, which close's disconnect ends. */
void
sb_outbox_stop_flusher_nogil(sb_client *c)
{
    int started;
    pthread_mutex_lock(&c->mu);
    started = c->flusher_started;
    c->flusher_started = 0;
    pthread_cond_broadcast(&c->ob_cv);
    pthread_cond_broadcast(&c->win_cv);
    pthread_mutex_unlock(&c->mu);
    if (started)
        pthread_join(c->flusher, NULL);
}
