/*
 * queue.c - the inbound event queue between paho's receive thread (producer)
 * and the thread that runs the Python loop (consumer).
 *
 * The queue is a singly linked list guarded by sb_client.mu.  Producers never
 * allocate Python objects and never take the GIL.  An eventfd mirrors
 * "queue non-empty" so that an event loop (asyncio, select) can wait on it.
 */
#include "sb.h"

#include <errno.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

double
sb_monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Wait on cv until signalled or until the CLOCK_MONOTONIC deadline passes
 * (deadline < 0: wait without limit).  Returns ETIMEDOUT on time-out. */
int
sb_timed_wait(pthread_cond_t *cv, pthread_mutex_t *mu, double deadline)
{
    struct timespec ts;
    if (deadline < 0)
        return pthread_cond_wait(cv, mu);
    ts.tv_sec = (time_t)deadline;
    ts.tv_nsec = (long)((deadline - (double)ts.tv_sec) * 1e9);
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec += 1;
        ts.tv_nsec -= 1000000000L;
    }
    return pthread_cond_timedwait(cv, mu, &ts);
}

static int
init_cond(pthread_cond_t *cv)
{
    pthread_condattr_t attr;
    int rc = pthread_condattr_init(&attr);
    if (rc != 0)
        return rc;
    /* monotonic: wall-clock jumps must not stretch or cut waits */
    rc = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    if (rc == 0)
        rc = pthread_cond_init(cv, &attr);
    pthread_condattr_destroy(&attr);
    return rc;
}

int
sb_queue_init(sb_client *c)
{
    int rc;
    if ((rc = pthread_mutex_init(&c->mu, NULL)) != 0)
        return rc;
    if ((rc = init_cond(&c->ev_cv)) != 0)
        return rc;
    if ((rc = init_cond(&c->space_cv)) != 0)
        return rc;
    if ((rc = init_cond(&c->pub_cv)) != 0)
        return rc;
    if ((rc = init_cond(&c->win_cv)) != 0)
        return rc;
    if ((rc = init_cond(&c->ob_cv)) != 0)
        return rc;
    if ((rc = init_cond(&c->req_cv)) != 0)
        return rc;
    c->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (c->efd < 0)
        return errno;
    return 0;
}

/* Append an event; caller holds mu.  Never blocks. */
void
sb_queue_push_locked(sb_client *c, sb_event *ev)
{
    ev->next = NULL;
    if (c->tail)
        c->tail->next = ev;
    else
        c->head = ev;
    c->tail = ev;
    if (ev->kind == SB_EV_MESSAGE)
        c->qlen++;
    if (!c->efd_armed && c->efd >= 0) {
        uint64_t one = 1;
        /* a full eventfd counter (EAGAIN) is still readable: nothing to do */
        if (write(c->efd, &one, sizeof one) == sizeof one || errno == EAGAIN)
            c->efd_armed = 1;
    }
    if (c->consumer_waiting)
        pthread_cond_signal(&c->ev_cv);
}

/* Detach up to max events (max <= 0: all); caller holds mu.  Wakes a
 * producer waiting for room, and disarms the eventfd once the queue is empty. */
sb_event *
sb_queue_take_locked(sb_client *c, Py_ssize_t max, Py_ssize_t *n_messages)
{
    sb_event *first = c->head, *last = NULL, *ev = c->head;
    Py_ssize_t n = 0, msgs = 0;

    while (ev && (max <= 0 || n < max)) {
        int ends_batch = ev->kind == SB_EV_USER;
        if (ev->kind == SB_EV_MESSAGE)
            msgs++;
        last = ev;
        ev = ev->next;
        n++;
        /* a posted event (callback change, connect, ...) ends the batch, so
         * messages queued after it are dispatched with what it changed */
        if (ends_batch)
            break;
    }
    if (last == NULL) {
        *n_messages = 0;
        return NULL;
    }
    c->head = ev;
    if (ev == NULL)
        c->tail = NULL;
    last->next = NULL;
    c->qlen -= msgs;
    *n_messages = msgs;
    if (msgs)
        pthread_cond_broadcast(&c->space_cv);
    if (c->head == NULL && c->efd_armed) {
        uint64_t v;
        /* drain the counter; EAGAIN means it was already empty */
        if (read(c->efd, &v, sizeof v) == sizeof v || errno == EAGAIN)
            c->efd_armed = 0;
    }
    return first;
}

/* Put events the consumer could not deliver back at the front, in order. */
void
sb_queue_requeue_front_locked(sb_client *c, sb_event *first, Py_ssize_t n_messages)
{
    sb_event *last = first;
    if (first == NULL)
        return;
    while (last->next)
        last = last->next;
    last->next = c->head;
    if (c->head == NULL)
        c->tail = last;
    c->head = first;
    c->qlen += n_messages;
    if (!c->efd_armed && c->efd >= 0) {
        uint64_t one = 1;
        if (write(c->efd, &one, sizeof one) == sizeof one || errno == EAGAIN)
            c->efd_armed = 1;
    }
}

/* Free one event and what it owns.  SB_EV_USER holds a Python reference, so
 * the caller must hold the GIL; paho memory goes back through paho's own
 * allocator (MQTTClient_free), never libc free(). */
void
sb_event_free(sb_event *ev)
{
    if (ev->msg)
        MQTTClient_freeMessage(&ev->msg);
    if (ev->topic)
        MQTTClient_free(ev->topic);
    Py_XDECREF(ev->obj);
    PyMem_RawFree(ev);
}

/* Drop everything still queued (close/dealloc).  Caller holds the GIL and
 * paho can no longer call us (the handle is destroyed). */
void
sb_queue_clear(sb_client *c)
{
    sb_event *ev, *next;
    Py_ssize_t n;
    /* take_locked ends a batch at each posted object: take until empty */
    for (;;) {
        pthread_mutex_lock(&c->mu);
        ev = sb_queue_take_locked(c, 0, &n);
        c->messages_dropped_on_close += (uint64_t)n;
        pthread_mutex_unlock(&c->mu);
        if (ev == NULL)
            break;
        for (; ev; ev = next) {
            next = ev->next;
            sb_event_free(ev);
        }
    }
}
