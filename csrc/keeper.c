/*
 * keeper.c - make paho.mqtt.c's connect and close fast.
 *
 * paho.mqtt.c 1.3.12 (MQTTClient, multi-threaded mode) makes a loopback
 * connect take ~210 ms and the last close ~100 ms, nearly all of it sleeps:
 *   - the first connect of a process (and the first after every client was
 *     closed) starts paho's receive thread and sleeps 100 ms for it
 *     (MQTTClient.c, MQTTClient_connectURIVersion);
 *   - a new socket's TCP connect completion is noticed only when the receive
 *     thread's poll() returns, which with nothing to read is its 100 ms
 *     timeout (Socket.c, Socket_getReadySocket);
 *   - closing the last connected client stops the receive thread and sleeps
 *     100 ms until it has gone (MQTTClient.c, MQTTClient_stop).
 *
 * The remedy, from outside paho:
 *   1. the keeper: once per process, a dummy MQTT server thread on
 *      127.0.0.1 (it only answers CONNECT and PINGREQ) and one extra paho
 *      handle, with callbacks set, connected to it with keepalive 0 and never
 *      disconnected.  paho's receive thread then starts once (its 100 ms are
 *      paid by the first connect of the process) and never stops: no start-up
 *      sleep for later connects and no stop sleep on close;
 *   2. the waker: while some thread is inside MQTTClient_connect, a thread
 *      writes a PINGRESP to the keeper's connection from the server side
 *      every 1 ms, so paho's poll() returns, the next poll includes the new
 *      socket, and its connect completion is seen within ~1 ms.
 *
 * Failure is harmless: without a keeper connects are just slow, as before.
 *
 * Rules: no Python API here (this runs on plain threads and without the
 * GIL); every paho call sits in a *_nogil function and is called without the
 * GIL.  Our threads are detached and block every signal: interpreter exit
 * never waits for them, and signals go to Python's threads.  paho registers
 * no atexit handler on Linux, so at exit its receive thread, like ours, just
 * ends with the process.
 *
 * Locks: k_life serialises creating and destroying the keeper and may be
 * held across paho calls; k_io guards the descriptors and the waker state,
 * and is never held across a paho call nor a blocking wait (paho's threads
 * take it in sb_k_lost, so it must always be short).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE   /* accept4, memmem (setup.py passes it too) */
#endif
#include "keeper.h"

#include <MQTTClient.h>
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define SB_K_CONNECT_TIMEOUT_S 3   /* the keeper's own connect (normally ~150 ms) */
#define SB_K_ACCEPT_S 5.0          /* the server waits this long for the keeper */
#define SB_K_HELLO_S 2.0           /* ... and for its CONNECT after accepting */
#define SB_K_WRITABLE_MS 1000      /* the server's replies wait for buffer space */
#define SB_K_WAKE_NS 1000000L      /* waker period: 1 ms */
#define SB_K_BACKOFF_MIN_S 5.0     /* after a failed ensure, no retry for ... */
#define SB_K_BACKOFF_MAX_S 300.0   /* ... doubling up to this */
#define SB_K_NONCE_LEN 32

static const char sb_k_pingresp[2] = {(char)0xd0, 0x00};
static const char sb_k_connack[4] = {0x20, 0x02, 0x00, 0x00};

/* One generation of the dummy server: created by ensure(), then owned and
 * freed by its thread.  Others reach it only through k_srv, under k_io. */
typedef struct sb_kserver {
    int lfd;                 /* listening socket, until the keeper is accepted */
    unsigned short port;     /* its port (host order) */
    unsigned gen;            /* generation, also the keeper's callback context */
    atomic_int stop;         /* ensure()/park() gave up on this generation */
    char nonce[SB_K_NONCE_LEN + 1];   /* the keeper's client id: proves a CONNECT is ours */
} sb_kserver;

static pthread_once_t k_once = PTHREAD_ONCE_INIT;
static atomic_int k_init_ok;          /* set once, under k_once */
static pthread_mutex_t k_life = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t k_io = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t k_cv;           /* the waker's; CLOCK_MONOTONIC, made in sb_k_init */

static atomic_int k_ready;            /* keeper connected: ensure()'s fast path */
static atomic_int k_exists;           /* a keeper handle exists (paho's thread held running) */
static atomic_int k_forked;           /* we are a forked child: everything is a no-op */
static atomic_uint k_gen;             /* last generation started */

/* under k_life */
static MQTTClient k_handle;
static double k_retry_at;
static double k_backoff;

/* under k_io */
static sb_kserver *k_srv;             /* the current generation's server, or NULL */
static int k_fd = -1;                 /* its verified keeper connection, or -1 */
static unsigned k_lost_gen;           /* paho reported this generation's connection lost */
static unsigned k_wakers;             /* open wake_begin brackets */
static int k_waker_started;
static uint64_t k_fence_sent;         /* last fence number written to the keeper */

/* under k_fence_mu: the last fence paho's receive thread delivered */
static pthread_mutex_t k_fence_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t k_fence_cv;     /* CLOCK_MONOTONIC, made in sb_k_init */
static uint64_t k_fence_seen;

static double
sb_k_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void
sb_k_init(void)
{
    pthread_condattr_t ca;
    if (pthread_condattr_init(&ca) != 0)
        return;
    /* monotonic: the waker's 1 ms sleeps must not jump with the wall clock */
    if (pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) == 0 && pthread_cond_init(&k_cv, &ca) == 0) {
        if (pthread_cond_init(&k_fence_cv, &ca) != 0)
            pthread_cond_destroy(&k_cv);
        /* a forked child must drop the keeper before anything else runs */
        else if (pthread_atfork(NULL, NULL, sb_keeper_after_fork_child) == 0)
            atomic_store(&k_init_ok, 1);
        else {
            pthread_cond_destroy(&k_fence_cv);
            pthread_cond_destroy(&k_cv);
        }
    }
    pthread_condattr_destroy(&ca);
}

static int
sb_k_ready_init(void)
{
    return pthread_once(&k_once, sb_k_init) == 0 && atomic_load(&k_init_ok);
}

/* Start a detached thread with every signal blocked: nobody joins it (so exit
 * never waits for it) and Python's signal handling stays on Python's threads. */
static int
sb_k_spawn(void *(*fn)(void *), void *arg)
{
    pthread_t t;
    pthread_attr_t attr;
    sigset_t all, old;
    int rc;

    if (pthread_attr_init(&attr) != 0)
        return -1;
    rc = pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (rc == 0)
        rc = pthread_attr_setstacksize(&attr, 256 * 1024);   /* they need little */
    if (rc == 0) {
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        rc = pthread_create(&t, &attr, fn, arg);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    }
    pthread_attr_destroy(&attr);
    return rc == 0 ? 0 : -1;
}

/* 32 hex digits nobody else can guess: the keeper's client id, which the
 * server demands in the CONNECT before it answers. */
static void
sb_k_nonce(char out[SB_K_NONCE_LEN + 1])
{
    unsigned char r[SB_K_NONCE_LEN / 2];
    size_t i;
    if (getrandom(r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r) {
        /* no entropy yet (early boot): weaker, but the peer check in
         * sb_k_peer_is_ours still keeps other processes out */
        uint64_t x = (uint64_t)getpid() * 0x9e3779b97f4a7c15ull ^ (uint64_t)(sb_k_now() * 1e9) ^
                     (uint64_t)(uintptr_t)out;
        for (i = 0; i < sizeof r; i++) {
            x ^= x >> 31;
            x *= 0xbf58476d1ce4e5b9ull;
            r[i] = (unsigned char)(x >> 56);
        }
    }
    for (i = 0; i < sizeof r; i++)
        snprintf(out + 2 * i, 3, "%02x", r[i]);
}

/* Is the accepted connection's other end a socket of this very process?  The
 * server must serve only the keeper: any local user could connect to a
 * loopback port.  1 yes, 0 no, -1 cannot tell (no /proc: the CONNECT's nonce
 * then decides alone). */
static int
sb_k_peer_is_ours(const struct sockaddr_in *peer, unsigned short lport)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    int found = 0;
    if (d == NULL)
        return -1;
    while (!found && (e = readdir(d)) != NULL) {
        struct sockaddr_in me, other;
        socklen_t ml = sizeof me, ol = sizeof other;
        struct stat sb;
        int fd = atoi(e->d_name);
        if (e->d_name[0] < '0' || e->d_name[0] > '9' || fstat(fd, &sb) != 0 || !S_ISSOCK(sb.st_mode))
            continue;
        if (getsockname(fd, (struct sockaddr *)&me, &ml) != 0 || me.sin_family != AF_INET ||
            getpeername(fd, (struct sockaddr *)&other, &ol) != 0 || other.sin_family != AF_INET)
            continue;
        found = me.sin_port == peer->sin_port && me.sin_addr.s_addr == peer->sin_addr.s_addr &&
                ntohs(other.sin_port) == lport;
    }
    closedir(d);
    return found;
}

/* Read exactly n bytes: TCP may deliver a packet in pieces.  deadline < 0:
 * wait for ever (a shutdown() from ensure()/park() ends the wait). */
static int
sb_k_read_full(int fd, unsigned char *buf, size_t n, double deadline)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r;
        if (deadline >= 0) {
            struct pollfd p = {fd, POLLIN, 0};
            int ms = (int)((deadline - sb_k_now()) * 1000.0);
            if (ms <= 0)
                return -1;
            r = poll(&p, 1, ms);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0)
                return -1;
        }
        r = read(fd, buf + got, n - got);
        if (r > 0)
            got += (size_t)r;
        else if (r < 0 && errno == EINTR)
            continue;
        else
            return -1;   /* EOF or error */
    }
    return 0;
}

/* One MQTT packet: its first byte in *first, the start of its body (at most
 * cap bytes; the rest is read and dropped) in body, its body length in *len. */
static int
sb_k_read_packet(int fd, unsigned char *first, unsigned char *body, size_t cap, size_t *len, double deadline)
{
    unsigned char b, junk[256];
    size_t n = 0, mul = 1, kept;
    int i;
    if (sb_k_read_full(fd, first, 1, deadline) != 0)
        return -1;
    for (i = 0;; i++) {
        if (i == 4)
            return -1;   /* a remaining length has at most 4 bytes */
        if (sb_k_read_full(fd, &b, 1, deadline) != 0)
            return -1;
        n += (size_t)(b & 127) * mul;
        mul *= 128;
        if (!(b & 128))
            break;
    }
    *len = n;
    kept = n < cap ? n : cap;
    if (sb_k_read_full(fd, body, kept, deadline) != 0)
        return -1;
    for (n -= kept; n > 0;) {
        size_t c = n < sizeof junk ? n : sizeof junk;
        if (sb_k_read_full(fd, junk, c, deadline) != 0)
            return -1;
        n -= c;
    }
    return 0;
}

/* Write a whole small packet.  Only the server thread closes fd, so it may
 * wait for room without k_io; the send itself holds k_io so that it never
 * interleaves with the waker's PINGRESPs on the same stream. */
static int
sb_k_reply(int fd, const char *p, size_t n)
{
    struct pollfd w = {fd, POLLOUT, 0};
    ssize_t r;
    int pr;
    do
        pr = poll(&w, 1, SB_K_WRITABLE_MS);
    while (pr < 0 && errno == EINTR);
    if (pr <= 0 || !(w.revents & POLLOUT))
        return -1;
    pthread_mutex_lock(&k_io);
    r = send(fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL);
    pthread_mutex_unlock(&k_io);
    return r == (ssize_t)n ? 0 : -1;   /* a partial write would garble the stream: give up */
}

/* A fresh connection: is it the keeper?  Wake paho first (the keeper's own
 * connect has no waker: paho notices its TCP connect completion only when
 * its poll() returns), then demand a CONNECT carrying our nonce. */
static int
sb_k_hello(sb_kserver *s, int fd)
{
    unsigned char first, body[512];
    size_t len = 0;
    int one = 1;
    /* tiny writes must go out at once, not wait for the peer's delayed ACK */
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0)
        return -1;
    if (sb_k_reply(fd, sb_k_pingresp, sizeof sb_k_pingresp) != 0)
        return -1;
    if (sb_k_read_packet(fd, &first, body, sizeof body, &len, sb_k_now() + SB_K_HELLO_S) != 0)
        return -1;
    if ((first >> 4) != 1 || memmem(body, len < sizeof body ? len : sizeof body, s->nonce, SB_K_NONCE_LEN) == NULL)
        return -1;
    return sb_k_reply(fd, sb_k_connack, sizeof sb_k_connack);
}

/* Accept until the keeper shows up; close everything else.  Gives up after
 * SB_K_ACCEPT_S or when told to stop.  Closes the listening socket. */
static int
sb_k_accept(sb_kserver *s)
{
    double deadline = sb_k_now() + SB_K_ACCEPT_S;
    int fd = -1;
    while (fd < 0 && !atomic_load(&s->stop) && sb_k_now() < deadline) {
        struct pollfd p = {s->lfd, POLLIN, 0};
        struct sockaddr_in peer;
        socklen_t pl = sizeof peer;
        int r = poll(&p, 1, 100);   /* 100 ms slices: notice `stop` */
        if (r < 0 && errno != EINTR)
            break;
        if (r <= 0)
            continue;
        fd = accept4(s->lfd, (struct sockaddr *)&peer, &pl, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == ECONNABORTED)
                continue;
            break;   /* e.g. EINVAL after shutdown() by sb_k_release_server */
        }
        if (pl != sizeof peer || peer.sin_family != AF_INET || sb_k_peer_is_ours(&peer, s->port) == 0 ||
            sb_k_hello(s, fd) != 0) {
            close(fd);
            fd = -1;
        }
    }
    /* under k_io: sb_k_release_server may shutdown() s->lfd meanwhile */
    pthread_mutex_lock(&k_io);
    close(s->lfd);
    s->lfd = -1;
    if (fd >= 0 && (atomic_load(&s->stop) || k_srv != s)) {
        close(fd);   /* accepted too late: this generation was given up */
        fd = -1;
    }
    if (fd >= 0) {
        k_fd = fd;
        pthread_cond_broadcast(&k_cv);   /* a waker may wait for a connection to kick */
    }
    pthread_mutex_unlock(&k_io);
    return fd;
}

/* The dummy server: answer the keeper until its connection ends. */
static void *
sb_k_serve(void *arg)
{
    sb_kserver *s = arg;
    int fd = sb_k_accept(s);
    if (fd >= 0) {
        for (;;) {
            unsigned char first, body[64];
            size_t len;
            if (sb_k_read_packet(fd, &first, body, sizeof body, &len, -1) != 0)
                break;   /* EOF, error, or shutdown() by sb_k_release_server */
            if ((first >> 4) == 12) {          /* PINGREQ (keepalive is 0: not expected) */
                if (sb_k_reply(fd, sb_k_pingresp, sizeof sb_k_pingresp) != 0)
                    break;
            }
            else if ((first >> 4) == 14)       /* DISCONNECT: the keeper was dropped */
                break;
            /* anything else: the keeper neither publishes nor subscribes; ignore */
        }
    }
    pthread_mutex_lock(&k_io);
    if (k_srv == s) {
        /* the keeper connection is gone: the next ensure() makes a new one */
        k_srv = NULL;
        k_fd = -1;
        atomic_store(&k_ready, 0);
    }
    /* closed under k_io: the waker writes to k_fd under k_io, so it can never
     * write to this number after it was closed and reused */
    if (fd >= 0)
        close(fd);
    pthread_mutex_unlock(&k_io);
    free(s);
    return NULL;
}

/* Detach the current server generation and make its thread finish:
 * shutdown() ends its blocking read even when a forked child still holds a
 * duplicate of the descriptor (which close() would not). */
static void
sb_k_release_server(void)
{
    pthread_mutex_lock(&k_io);
    atomic_store(&k_ready, 0);
    if (k_srv != NULL) {
        atomic_store(&k_srv->stop, 1);
        if (k_srv->lfd >= 0)
            (void)shutdown(k_srv->lfd, SHUT_RDWR);   /* wakes accept(); it also polls `stop` */
        k_srv = NULL;
    }
    if (k_fd >= 0) {
        (void)shutdown(k_fd, SHUT_RDWR);   /* its thread sees EOF and closes it */
        k_fd = -1;
    }
    pthread_mutex_unlock(&k_io);
}

/* The keeper's callbacks: trivial, they run on paho's threads.  The only
 * messages are the fences our server writes (sb_keeper_fence_nogil). */
static int
sb_k_arrived(void *ctx, char *topic, int len, MQTTClient_message *m)
{
    uint64_t fence;
    if (m->payloadlen == (int)sizeof fence) {
        memcpy(&fence, m->payload, sizeof fence);
        pthread_mutex_lock(&k_fence_mu);
        if (fence > k_fence_seen)
            k_fence_seen = fence;
        pthread_cond_broadcast(&k_fence_cv);
        pthread_mutex_unlock(&k_fence_mu);
    }
    MQTTClient_freeMessage(&m);
    MQTTClient_free(topic);
    return 1;
}

static void
sb_k_lost(void *ctx, char *cause)
{
    unsigned gen = (unsigned)(uintptr_t)ctx;
    pthread_mutex_lock(&k_io);
    k_lost_gen = gen;
    if (gen == atomic_load(&k_gen))
        atomic_store(&k_ready, 0);   /* the next ensure() re-creates the keeper */
    pthread_mutex_unlock(&k_io);
}

/* Disconnect then destroy: a destroyed handle that is still connected would
 * leave its socket in paho's poll set. */
static void
sb_k_drop_handle_nogil(MQTTClient *h)
{
    if (*h == NULL)
        return;
    if (MQTTClient_disconnect(*h, 0) != MQTTCLIENT_SUCCESS) {
        /* MQTTCLIENT_DISCONNECTED: the connection had already gone; any
         * other failure leaves nothing to undo: destroy frees it regardless */
    }
    MQTTClient_destroy(h);
    atomic_store(&k_exists, 0);
}

/* Drop the keeper (under k_life): mark it unusable first, so no connect
 * counts on it, then say goodbye to the server, then stop the server. */
static void
sb_k_stop_nogil(void)
{
    MQTTClient h = k_handle;
    k_handle = NULL;
    atomic_store(&k_ready, 0);
    sb_k_drop_handle_nogil(&h);
    sb_k_release_server();
}

/* Start a server generation and connect a keeper handle to it (under k_life). */
static int
sb_k_start_nogil(void)
{
    sb_kserver *s = calloc(1, sizeof *s);
    struct sockaddr_in a;
    socklen_t al = sizeof a;
    MQTTClient h = NULL;
    MQTTClient_connectOptions o = MQTTClient_connectOptions_initializer;
    char uri[48], client_id[SB_K_NONCE_LEN + 8];
    unsigned gen;
    int rc;

    if (s == NULL)
        return -1;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);   /* never any other address */
    a.sin_port = 0;
    s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s->lfd < 0 || bind(s->lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(s->lfd, 8) != 0 ||
        getsockname(s->lfd, (struct sockaddr *)&a, &al) != 0) {
        if (s->lfd >= 0)
            close(s->lfd);
        free(s);
        return -1;
    }
    s->port = ntohs(a.sin_port);
    gen = s->gen = atomic_fetch_add(&k_gen, 1) + 1;
    sb_k_nonce(s->nonce);
    snprintf(uri, sizeof uri, "tcp://127.0.0.1:%u", (unsigned)s->port);
    snprintf(client_id, sizeof client_id, "sbk-%s", s->nonce);

    pthread_mutex_lock(&k_io);
    k_srv = s;
    pthread_mutex_unlock(&k_io);
    if (sb_k_spawn(sb_k_serve, s) != 0) {
        pthread_mutex_lock(&k_io);
        k_srv = NULL;
        pthread_mutex_unlock(&k_io);
        close(s->lfd);
        free(s);
        return -1;
    }
    /* from here on the server thread owns s: reach it only via k_srv */

    rc = MQTTClient_create(&h, uri, client_id, MQTTCLIENT_PERSISTENCE_NONE, NULL);
    if (rc == MQTTCLIENT_SUCCESS) {
        atomic_store(&k_exists, 1);
        /* callbacks set = multi-threaded mode: this connect starts paho's
         * receive thread, and the keeper's connection keeps it running */
        rc = MQTTClient_setCallbacks(h, (void *)(uintptr_t)gen, sb_k_lost, sb_k_arrived, NULL);
    }
    else
        h = NULL;
    if (rc == MQTTCLIENT_SUCCESS) {
        o.keepAliveInterval = 0;   /* no PINGREQs: idle means idle */
        o.cleansession = 1;
        o.reliable = 0;
        o.retryInterval = 0;
        o.connectTimeout = SB_K_CONNECT_TIMEOUT_S;
        o.MQTTVersion = MQTTVERSION_3_1_1;
        rc = MQTTClient_connect(h, &o);
    }
    if (rc == MQTTCLIENT_SUCCESS) {
        /* ready only if the server still holds this very connection and paho
         * has not lost it meanwhile */
        pthread_mutex_lock(&k_io);
        if (k_srv != NULL && k_srv->gen == gen && k_fd >= 0 && k_lost_gen != gen)
            atomic_store(&k_ready, 1);
        else
            rc = MQTTCLIENT_FAILURE;
        pthread_mutex_unlock(&k_io);
    }
    if (rc != MQTTCLIENT_SUCCESS) {
        sb_k_drop_handle_nogil(&h);
        sb_k_release_server();
        return -1;
    }
    k_handle = h;
    return 0;
}

int
sb_keeper_ensure_nogil(void)
{
    int rc;
    if (atomic_load(&k_forked))
        return -1;
    if (atomic_load(&k_ready))
        return 0;   /* the common case: one atomic load */
    if (!sb_k_ready_init())
        return -1;
    pthread_mutex_lock(&k_life);
    if (atomic_load(&k_ready))
        rc = 0;   /* another thread made it meanwhile */
    else if (sb_k_now() < k_retry_at)
        rc = -1;  /* failed recently: do not make every connect pay for a retry */
    else {
        sb_k_stop_nogil();   /* a keeper whose connection dropped, if any */
        rc = sb_k_start_nogil();
        if (rc == 0)
            k_backoff = 0;
        else {
            k_backoff = k_backoff == 0 ? SB_K_BACKOFF_MIN_S : k_backoff * 2;
            if (k_backoff > SB_K_BACKOFF_MAX_S)
                k_backoff = SB_K_BACKOFF_MAX_S;
            k_retry_at = sb_k_now() + k_backoff;
        }
    }
    pthread_mutex_unlock(&k_life);
    return rc;
}

void
sb_keeper_park_nogil(void)
{
    if (atomic_load(&k_forked) || !sb_k_ready_init())
        return;
    pthread_mutex_lock(&k_life);
    /* if no other connection is open, disconnecting the keeper makes paho
     * stop its receive thread and wait (~100 ms) until it has gone */
    sb_k_stop_nogil();
    k_retry_at = 0;   /* parking is not a failure: the next ensure() may start at once */
    pthread_mutex_unlock(&k_life);
}

int
sb_keeper_active(void)
{
    return !atomic_load(&k_forked) && atomic_load(&k_exists);
}

/* Write the next fence, a QoS 0 PUBLISH "f" carrying its number, to the
 * keeper's connection from the server side.  0 and the number, or -1. */
static int
sb_k_send_fence(uint64_t *number)
{
    unsigned char p[13] = {0x30, 11, 0x00, 0x01, 'f'};
    struct pollfd w;
    int rc = -1;
    pthread_mutex_lock(&k_io);
    if (atomic_load(&k_ready) && k_fd >= 0) {
        *number = ++k_fence_sent;
        memcpy(p + 5, number, sizeof *number);
        w.fd = k_fd;
        w.events = POLLOUT;
        w.revents = 0;
        /* POLLOUT on TCP means plenty of room: 13 bytes go out whole */
        if (poll(&w, 1, 0) == 1 && (w.revents & POLLOUT)) {
            ssize_t n = send(k_fd, p, sizeof p, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (n == (ssize_t)sizeof p)
                rc = 0;
            else if (n > 0)
                (void)shutdown(k_fd, SHUT_RDWR);   /* garbled stream: drop it, ensure() re-creates */
        }
    }
    pthread_mutex_unlock(&k_io);
    return rc;
}

int
sb_keeper_fence_nogil(double timeout_s)
{
    struct timespec ts;
    uint64_t number = 0;
    double deadline = sb_k_now() + timeout_s;
    int rc = 0;
    if (atomic_load(&k_forked) || !atomic_load(&k_init_ok) || sb_k_send_fence(&number) != 0)
        return -1;
    ts.tv_sec = (time_t)deadline;
    ts.tv_nsec = (long)((deadline - (double)ts.tv_sec) * 1e9);
    pthread_mutex_lock(&k_fence_mu);
    while (k_fence_seen < number && rc == 0)
        rc = pthread_cond_timedwait(&k_fence_cv, &k_fence_mu, &ts) == ETIMEDOUT ? -1 : 0;
    if (k_fence_seen >= number)
        rc = 0;
    pthread_mutex_unlock(&k_fence_mu);
    return rc;
}

/* The waker: PINGRESPs at 1 ms while some connect is in progress, and an
 * untimed sleep on k_cv otherwise (no CPU when nobody connects). */
static void *
sb_k_wake_loop(void *arg)
{
    pthread_mutex_lock(&k_io);
    for (;;) {
        struct timespec ts;
        struct pollfd w;
        if (k_wakers == 0 || k_fd < 0) {
            pthread_cond_wait(&k_cv, &k_io);
            continue;
        }
        w.fd = k_fd;
        w.events = POLLOUT;
        w.revents = 0;
        /* POLLOUT on TCP means plenty of room, so 2 bytes go out whole.  No
         * room means paho has not read the earlier ones: it has data to wake
         * on already, skip this kick. */
        if (poll(&w, 1, 0) == 1 && (w.revents & POLLOUT) &&
            send(k_fd, sb_k_pingresp, sizeof sb_k_pingresp, MSG_DONTWAIT | MSG_NOSIGNAL) !=
                (ssize_t)sizeof sb_k_pingresp)
            (void)shutdown(k_fd, SHUT_RDWR);   /* garbled stream: drop it, ensure() re-creates */
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += SB_K_WAKE_NS;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        (void)pthread_cond_timedwait(&k_cv, &k_io, &ts);   /* timeout or signal: re-check */
    }
    return NULL;
}

void
sb_keeper_wake_begin_nogil(void)
{
    if (atomic_load(&k_forked) || !sb_k_ready_init())
        return;
    pthread_mutex_lock(&k_io);
    k_wakers++;
    /* started on first use; if that fails, connects are just slower (tried
     * again at the next begin) */
    if (!k_waker_started)
        k_waker_started = sb_k_spawn(sb_k_wake_loop, NULL) == 0;
    pthread_cond_broadcast(&k_cv);
    pthread_mutex_unlock(&k_io);
}

void
sb_keeper_wake_end_nogil(void)
{
    /* k_init_ok is set before any begin could count (pthread_once orders it) */
    if (atomic_load(&k_forked) || !atomic_load(&k_init_ok))
        return;
    pthread_mutex_lock(&k_io);
    if (k_wakers > 0)
        k_wakers--;   /* the waker goes idle at its next 1 ms tick */
    pthread_mutex_unlock(&k_io);
}

void
sb_keeper_after_fork_child(void)
{
    /* Only the forking thread exists in the child; the parent's server, waker
     * and paho threads are gone and k_io may be held by one of them, so read
     * the state without locks and never call paho.  close(), not shutdown():
     * the sockets are shared with the parent, whose keeper must go on. */
    if (atomic_exchange(&k_forked, 1))
        return;
    atomic_store(&k_ready, 0);
    atomic_store(&k_exists, 0);
    if (k_srv != NULL && k_srv->lfd >= 0)
        close(k_srv->lfd);
    if (k_fd >= 0)
        close(k_fd);
    k_srv = NULL;
    k_fd = -1;
}
