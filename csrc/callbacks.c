/*
 * callbacks.c - everything that runs on paho.mqtt.c's own threads.
 *
 * Rule: nothing in this file touches Python.  No GIL, no Python allocation,
 * no reference counts.  paho calls these while holding its process-wide
 * mqttclient_mutex (delivery/acks) or from short-lived helper threads
 * (connection lost); taking the GIL here could deadlock against a Python
 * thread that holds the GIL and waits for that mutex.  We only take
 * sb_client.mu, which no thread ever holds while calling into paho.
 *
 * Allocation uses PyMem_RawMalloc: safe without the GIL.
 */
#include "sb.h"

#include <string.h>

/* paho.mqtt.c has ONE receive thread per process, shared by every client.
 * When a client's queue is full that thread waits for room (back-pressure),
 * so anything else waiting on it must be able to make the queue drain, or
 * the process deadlocks.  The rules, checked by sb_cb_message_arrived:
 *   - a thread of this client waits on the broker (subscribe, connect, ...):
 *     do not wait (c->blocking);
 *   - a thread that is dispatching callbacks (the consumer of some client)
 *     waits on the broker: do not wait, that consumer cannot drain;
 *   - some thread waits on the broker and this client has had no consumer
 *     for 100 ms (no loop running): do not wait.
 * Otherwise the consumer is alive and will make room: wait. */
static int blocked_threads;       /* threads waiting on paho's receive thread */
static int blocked_dispatchers;   /* ... of which are running some client's callbacks */
static __thread int tls_dispatching;

#define SB_UNATTENDED_S 0.1

int
sb_blocked_threads(void)
{
    return __atomic_load_n(&blocked_threads, __ATOMIC_ACQUIRE);
}

void
sb_dispatching_enter(void)
{
    tls_dispatching++;
}

void
sb_dispatching_leave(void)
{
    tls_dispatching--;
}

int
sb_is_dispatching(void)
{
    return tls_dispatching > 0;
}

/* Caller holds c->mu. */
void
sb_blocking_enter_locked(sb_client *c)
{
    c->blocking++;
    __atomic_add_fetch(&blocked_threads, 1, __ATOMIC_ACQ_REL);
    if (tls_dispatching)
        __atomic_add_fetch(&blocked_dispatchers, 1, __ATOMIC_ACQ_REL);
    pthread_cond_broadcast(&c->space_cv);
}

void
sb_blocking_leave_locked(sb_client *c)
{
    c->blocking--;
    __atomic_sub_fetch(&blocked_threads, 1, __ATOMIC_ACQ_REL);
    if (tls_dispatching)
        __atomic_sub_fetch(&blocked_dispatchers, 1, __ATOMIC_ACQ_REL);
}

/* Caller holds c->mu: may paho's receive thread wait for room now? */
static int
may_wait_for_room(sb_client *c)
{
    if (c->closing || c->blocking > 0)
        return 0;
    if (__atomic_load_n(&blocked_dispatchers, __ATOMIC_ACQUIRE) > 0)
        return 0;
    if (sb_blocked_threads() > 0 && !c->dispatching && !c->consumer_waiting &&
        sb_monotonic() - c->consumer_seen > SB_UNATTENDED_S)
        return 0;   /* nobody consumes this client: do not hold the shared thread */
    return 1;
}

/* messageArrived: take ownership of paho's message and queue it.
 *
 * Back-pressure: when the queue is full we wait for room, which stops paho's
 * receive thread and so stops reading the socket: the broker holds further
 * messages (nothing is dropped).  We do NOT wait while some thread is blocked
 * on the broker (subscribe, a full publish window, connect, disconnect):
 * those need this very thread to read the broker's answer, so waiting would
 * deadlock; the bound is exceeded for that moment instead. */
int
sb_cb_message_arrived(void *ctx, char *topic, int topic_len, MQTTClient_message *m)
{
    sb_client *c = (sb_client *)ctx;
    sb_event *ev = PyMem_RawCalloc(1, sizeof *ev);
    if (ev == NULL)
        return 0;   /* 0 = not consumed: paho keeps the message and retries */
    ev->kind = SB_EV_MESSAGE;
    ev->msg = m;
    ev->topic = topic;
    ev->topic_len = topic_len > 0 ? topic_len : (int)strlen(topic);
    ev->timestamp = sb_monotonic();

    pthread_mutex_lock(&c->mu);
    if (c->qlen >= c->qmax && may_wait_for_room(c))
        c->producer_waits++;
    while (c->qlen >= c->qmax && may_wait_for_room(c)) {
        /* in slices: the rules above can change without a signal to us */
        sb_timed_wait(&c->space_cv, &c->mu, sb_monotonic() + 0.02);
    }
    c->messages_in++;
    sb_queue_push_locked(c, ev);
    pthread_mutex_unlock(&c->mu);
    return 1;       /* consumed: we free message and topic with MQTTClient_free* */
}

/* The record paho delivers under message id dt, or NULL. */
static sb_out *
slot_record_locked(sb_client *c, int dt)
{
    return (dt > 0 && dt < SB_SLOTS) ? c->slots[dt].out : NULL;
}

/* deliveryComplete: PUBACK (QoS 1) or PUBCOMP (QoS 2) for message id dt. */
void
sb_cb_delivery_complete(void *ctx, MQTTClient_deliveryToken dt)
{
    sb_client *c = (sb_client *)ctx;
    sb_out *o;
    int reason;
    pthread_mutex_lock(&c->mu);
    o = slot_record_locked(c, dt);
    if (o != NULL)
        reason = o->reason;             /* recorded by sb_cb_published (MQTT 5) */
    else
        reason = (dt > 0 && dt < SB_SLOTS) ? c->slots[dt].early_reason : 0;
    sb_outbox_complete_locked(c, dt, reason >= 0x80 ? SB_PUB_FAILED : SB_PUB_DONE, reason);
    pthread_mutex_unlock(&c->mu);
}

/* MQTT 5 only: PUBACK/PUBCOMP (before deliveryComplete) and failed PUBREC
 * (after which paho ends the flow without deliveryComplete). */
void
sb_cb_published(void *ctx, int dt, int packet_type, MQTTProperties *props,
                enum MQTTReasonCodes rc)
{
    sb_client *c = (sb_client *)ctx;
    sb_out *o;
    (void)props;
    pthread_mutex_lock(&c->mu);
    o = slot_record_locked(c, dt);
    if (packet_type == 5 /* PUBREC */ && (int)rc >= 0x80)
        sb_outbox_complete_locked(c, dt, SB_PUB_FAILED, (int)rc);
    else if (o != NULL) {
        if ((int)rc > o->reason)
            o->reason = (unsigned char)rc;
    }
    else if (dt > 0 && dt < SB_SLOTS && c->sending > 0 && (int)rc > c->slots[dt].early_reason)
        c->slots[dt].early_reason = (unsigned char)rc;   /* publisher not recorded yet */
    pthread_mutex_unlock(&c->mu);
}

/* Runs on a helper thread paho starts for it, while paho's receive thread
 * waits for us (holding its mutex): be quick, never block.  Publishes in
 * flight stay in the outbox: after the reconnect paho re-sends them (resumed
 * session) or the flusher does (outbox.c). */
void
sb_cb_connection_lost(void *ctx, char *cause)
{
    sb_client *c = (sb_client *)ctx;
    sb_event *ev = PyMem_RawCalloc(1, sizeof *ev);
    (void)cause;   /* paho always passes NULL here */
    pthread_mutex_lock(&c->mu);
    c->connected = 0;
    c->sock_fd = -1;        /* paho closes it; the number may be reused */
    /* publishers waiting for window room queue their record instead;
     * subscribers waiting for a SUBACK give up (paho waits its time-out) */
    pthread_cond_broadcast(&c->win_cv);
    pthread_cond_broadcast(&c->req_cv);
    if (ev) {
        ev->kind = SB_EV_LOST;
        sb_queue_push_locked(c, ev);
    }
    /* a producer waiting for room must not outlive the connection */
    pthread_cond_broadcast(&c->space_cv);
    pthread_mutex_unlock(&c->mu);
}

/* paho's OpenSSL error hook: keep the last message for the TLSError text. */
int
sb_cb_ssl_error(const char *str, size_t len, void *ctx)
{
    sb_client *c = (sb_client *)ctx;
    if (c == NULL || str == NULL)
        return 0;
    if (len >= sizeof c->tls_error)
        len = sizeof c->tls_error - 1;
    pthread_mutex_lock(&c->mu);
    memcpy(c->tls_error, str, len);
    c->tls_error[len] = '\0';
    /* strip OpenSSL's trailing newline */
    while (len > 0 && (c->tls_error[len - 1] == '\n' || c->tls_error[len - 1] == '\r'))
        c->tls_error[--len] = '\0';
    pthread_mutex_unlock(&c->mu);
    return 0;
}
