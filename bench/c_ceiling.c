/*
 * c_ceiling.c - the "C ceiling" for bench/run.py.
 *
 * Eclipse paho.mqtt.c, synchronous MQTTClient API in callbacks mode (the
 * library's background thread reads the socket and calls us), MQTT 5,
 * persistence NONE, clean start.  Payloads are the same SERMAS dialogue event
 * the Python workloads send, re-encoded per message with cJSON.
 *
 * Build (bench/run.py does this for you):
 *   cc -O2 bench/c_ceiling.c -lpaho-mqtt3c -lcjson -lpthread -o bench/bin/c_ceiling
 *
 * Modes (every mode prints "RESULT {json}" on stdout when done, and
 * timestamps are CLOCK_MONOTONIC seconds, the clock Python's time.monotonic()
 * reads, so the driver can compare them across processes):
 *
 *   c_ceiling payload
 *       print the encoded event for seq 0 (the driver checks that it is
 *       byte-identical to what the Python workload encodes)
 *   c_ceiling pub --uri U --topic T -n N [--qos 0|1] [--window W]
 *       encode + publish N events.  QoS1 uses an application window of W
 *       unacknowledged messages and maxInflightMessages = W.
 *   c_ceiling sub --uri U --topic T -n N [--qos Q] [--decode] [--idle S]
 *       subscribe, print "READY", count (and optionally cJSON-parse) messages
 *       until N arrived or nothing arrived for S seconds.
 *   c_ceiling rtt --uri U --topic T -n N [--warmup W]
 *       one client subscribed to T publishes to T (QoS0) and waits for its
 *       own message: N samples after W warm-up round trips.
 *   c_ceiling count | flood ...
 *       measurement helpers on raw sockets, not paho (see their section).
 *
 * Why the application window matters: MQTTClient_publish blocks when the
 * library's in-flight table is full, and in callbacks mode the blocking path
 * is MQTTClient_yield(), which just sleeps 100 ms.  Keeping our own window
 * <= maxInflightMessages (and the broker's Receive Maximum, which the library
 * clamps maxInflightMessages to) means publish never takes that path.
 * QoS0 has no such guard: when the socket send buffer is full (the broker
 * is behind), publish also waits in MQTTClient_yield(), i.e. >= 100 ms.
 * `pub` counts publishes that took > 50 ms as "slow_publishes".
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <unistd.h>

#include <MQTTClient.h>
#include <cjson/cJSON.h>

/* ------------------------------------------------------------------ utils */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what, int rc)
{
    fprintf(stderr, "c_ceiling: %s failed: rc=%d (%s)\n", what, rc, MQTTClient_strerror(rc));
    exit(2);
}

static void abstime_in(struct timespec *ts, double seconds)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    long long ns = ts->tv_nsec + (long long)(seconds * 1e9);
    ts->tv_sec += ns / 1000000000LL;
    ts->tv_nsec = ns % 1000000000LL;
}

/* ------------------------------------------------------------------ event */

/* Must mirror make_event() in bench/workload.py key for key: the driver
 * compares the encodings of seq 0 byte for byte. */
static cJSON *make_event(cJSON **seq_item)
{
    cJSON *ev = cJSON_CreateObject();
    cJSON_AddStringToObject(ev, "appId", "sermas");
    cJSON_AddStringToObject(ev, "sessionId", "s-3f2b8c1e");
    cJSON_AddStringToObject(ev, "messageId", "m-c1a9");
    *seq_item = cJSON_AddNumberToObject(ev, "chunkId", 0);
    cJSON_AddStringToObject(ev, "actor", "agent");
    cJSON_AddStringToObject(ev, "text", "Hello! How can I help?");
    cJSON_AddStringToObject(ev, "language", "en-GB");
    cJSON_AddNumberToObject(ev, "ts", 1714557600123.0);
    cJSON_AddStringToObject(ev, "requestId", "r-5d41402a");
    cJSON *llm = cJSON_AddObjectToObject(ev, "llm");
    cJSON_AddStringToObject(llm, "model", "gpt-4o");
    cJSON_AddNumberToObject(llm, "temperature", 0.7);
    cJSON_AddBoolToObject(ev, "ttsEnabled", 1);
    cJSON_AddStringToObject(ev, "emotion", "neutral");
    return ev;
}

/* --------------------------------------------------------------- options */

typedef struct {
    const char *mode, *uri, *topic;
    long n, warmup;
    int qos, window, decode;
    double idle;
} opts_t;

static void usage(void)
{
    fprintf(stderr,
            "usage: c_ceiling payload\n"
            "       c_ceiling pub --uri U --topic T -n N [--qos 0|1] [--window W]\n"
            "       c_ceiling sub --uri U --topic T -n N [--qos Q] [--decode] [--idle S]\n"
            "       c_ceiling rtt --uri U --topic T -n N [--warmup W]\n"
            "       c_ceiling count --uri tcp://H:P --topic T -n N [--idle S]   (raw-socket helper)\n"
            "       c_ceiling flood --uri tcp://H:P --topic T -n N             (raw-socket helper)\n");
    exit(64);
}

static opts_t parse(int argc, char **argv)
{
    opts_t o = {0};
    o.window = 1000;
    o.idle = 5.0;
    o.warmup = 500;
    if (argc < 2)
        usage();
    o.mode = argv[1];
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char *v = (i + 1 < argc) ? argv[i + 1] : NULL;
        if (!strcmp(a, "--decode")) { o.decode = 1; continue; }
        if (!v) usage();
        if (!strcmp(a, "--uri")) o.uri = v;
        else if (!strcmp(a, "--topic")) o.topic = v;
        else if (!strcmp(a, "-n")) o.n = atol(v);
        else if (!strcmp(a, "--qos")) o.qos = atoi(v);
        else if (!strcmp(a, "--window")) o.window = atoi(v);
        else if (!strcmp(a, "--idle")) o.idle = atof(v);
        else if (!strcmp(a, "--warmup")) o.warmup = atol(v);
        else usage();
        i++;
    }
    if (strcmp(o.mode, "payload") && (!o.uri || !o.topic || o.n <= 0))
        usage();
    return o;
}

/* ---------------------------------------------------------------- client */

/* Shared state between the main thread and paho's callback thread. */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv;
static long outstanding;          /* pub: QoS1 messages not yet acked */
static long received;             /* sub/rtt: messages arrived */
static long target = -1;          /* sub: stop when received reaches this */
static double t_first, t_last;    /* sub: first/last arrival */
static int decode_payload;
static long decode_errors;
static volatile int lost;

static void on_lost(void *ctx, char *cause)
{
    (void)ctx;
    fprintf(stderr, "c_ceiling: connection lost: %s\n", cause ? cause : "?");
    pthread_mutex_lock(&mu);
    lost = 1;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
}

static int on_message(void *ctx, char *topic, int topic_len, MQTTClient_message *m)
{
    (void)ctx; (void)topic_len;
    double t = now_s();
    if (decode_payload) {
        cJSON *doc = cJSON_ParseWithLength((const char *)m->payload, (size_t)m->payloadlen);
        if (!doc || !cJSON_GetObjectItemCaseSensitive(doc, "chunkId"))
            decode_errors++;
        cJSON_Delete(doc);
    }
    pthread_mutex_lock(&mu);
    if (received++ == 0)
        t_first = t;
    t_last = t;
    if (received == target || target < 0)
        pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    MQTTClient_freeMessage(&m);
    MQTTClient_free(topic);
    return 1;
}

static void on_delivered(void *ctx, MQTTClient_deliveryToken tok)
{
    (void)ctx; (void)tok;
    pthread_mutex_lock(&mu);
    outstanding--;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
}

static MQTTClient connect_client(const opts_t *o, const char *role)
{
    MQTTClient c;
    char id[64];
    snprintf(id, sizeof id, "c-ceiling-%s-%ld", role, (long)getpid());
    MQTTClient_createOptions co = MQTTClient_createOptions_initializer;
    co.MQTTVersion = MQTTVERSION_5;
    int rc = MQTTClient_createWithOptions(&c, o->uri, id, MQTTCLIENT_PERSISTENCE_NONE, NULL, &co);
    if (rc != MQTTCLIENT_SUCCESS)
        die("MQTTClient_createWithOptions", rc);
    rc = MQTTClient_setCallbacks(c, NULL, on_lost, on_message, on_delivered);
    if (rc != MQTTCLIENT_SUCCESS)
        die("MQTTClient_setCallbacks", rc);

    int ws = !strncmp(o->uri, "ws://", 5);
    MQTTClient_connectOptions cx = MQTTClient_connectOptions_initializer5;
    MQTTClient_connectOptions cx_ws = MQTTClient_connectOptions_initializer5_ws;
    if (ws)
        cx = cx_ws;
    cx.keepAliveInterval = 60;
    cx.cleanstart = 1;
    cx.connectTimeout = 10;
    /* Library in-flight table = our window.  The broker's CONNACK Receive
     * Maximum clamps it further (mosquitto: max_inflight_messages). */
    cx.maxInflightMessages = o->window > 0 ? o->window : 65535;
    MQTTProperties props = MQTTProperties_initializer;
    MQTTResponse r = MQTTClient_connect5(c, &cx, &props, NULL);
    if (r.reasonCode != MQTTCLIENT_SUCCESS)
        die("MQTTClient_connect5", r.reasonCode);
    MQTTResponse_free(r);
    return c;
}

static void subscribe(MQTTClient c, const char *topic, int qos)
{
    MQTTSubscribe_options so = MQTTSubscribe_options_initializer;
    MQTTResponse r = MQTTClient_subscribe5(c, topic, qos, &so, NULL);
    if ((int)r.reasonCode != qos)   /* granted QoS */
        die("MQTTClient_subscribe5", r.reasonCode);
    MQTTResponse_free(r);
}

static int publish(MQTTClient c, const char *topic, int len, const void *payload, int qos)
{
    MQTTResponse r = MQTTClient_publish5(c, topic, len, payload, qos, 0, NULL, NULL);
    int rc = r.reasonCode;
    MQTTResponse_free(r);
    return rc;
}

static void finish(MQTTClient c)
{
    MQTTClient_disconnect5(c, 10000, MQTTREASONCODE_NORMAL_DISCONNECTION, NULL);
    MQTTClient_destroy(&c);
}

/* ------------------------------------------------------------------ modes */

static int mode_payload(void)
{
    cJSON *seq;
    cJSON *ev = make_event(&seq);
    char *s = cJSON_PrintUnformatted(ev);
    fputs(s, stdout);
    fputc('\n', stdout);
    cJSON_free(s);
    cJSON_Delete(ev);
    return 0;
}

static int mode_pub(const opts_t *o)
{
    MQTTClient c = connect_client(o, "pub");
    cJSON *seq;
    cJSON *ev = make_event(&seq);
    long bytes = 0, slow = 0;
    double slow_s = 0;
    int rc;

    double t0 = now_s();
    for (long i = 0; i < o->n; i++) {
        if (o->qos > 0) {
            pthread_mutex_lock(&mu);
            while (outstanding >= o->window && !lost)
                pthread_cond_wait(&cv, &mu);
            outstanding++;
            pthread_mutex_unlock(&mu);
        }
        cJSON_SetNumberValue(seq, (double)i);
        char *s = cJSON_PrintUnformatted(ev);
        int len = (int)strlen(s);
        double tp = now_s();
        rc = publish(c, o->topic, len, s, o->qos);
        double dt = now_s() - tp;
        if (dt > 0.05) {   /* paho's 100 ms sleep in MQTTClient_yield() */
            slow++;
            slow_s += dt;
        }
        cJSON_free(s);
        if (rc != MQTTCLIENT_SUCCESS)
            die("MQTTClient_publish", rc);
        bytes += len;
    }
    double t_returned = now_s();
    if (o->qos > 0) {
        pthread_mutex_lock(&mu);
        while (outstanding > 0 && !lost)
            pthread_cond_wait(&cv, &mu);
        pthread_mutex_unlock(&mu);
    }
    double t_end = now_s();
    finish(c);
    cJSON_Delete(ev);
    printf("RESULT {\"n\": %ld, \"bytes\": %ld, \"t_start\": %.9f, \"t_returned\": %.9f, "
           "\"t_end\": %.9f, \"slow_publishes\": %ld, \"slow_s\": %.6f, \"lost\": %d}\n",
           o->n, bytes, t0, t_returned, t_end, slow, slow_s, lost);
    return lost ? 1 : 0;
}

static int mode_sub(const opts_t *o)
{
    decode_payload = o->decode;
    target = o->n;
    MQTTClient c = connect_client(o, "sub");
    subscribe(c, o->topic, o->qos);
    printf("READY\n");
    fflush(stdout);

    /* Wait until all N arrived, or nothing new arrived for o->idle seconds. */
    pthread_mutex_lock(&mu);
    long seen = -1;
    while (received < o->n && !lost) {
        if (received == seen)
            break;               /* idle timeout with no progress */
        seen = received;
        struct timespec ts;
        abstime_in(&ts, o->idle);
        while (received < o->n && !lost &&
               pthread_cond_timedwait(&cv, &mu, &ts) != ETIMEDOUT)
            ;
    }
    long got = received;
    double tf = t_first, tl = t_last;
    pthread_mutex_unlock(&mu);

    finish(c);
    printf("RESULT {\"n\": %ld, \"count\": %ld, \"t_first\": %.9f, \"t_last\": %.9f, "
           "\"decode_errors\": %ld, \"lost\": %d}\n",
           o->n, got, tf, tl, decode_errors, lost);
    return 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* nearest-rank percentile, same definition as bench/workload.py */
static double pct(const double *sorted, long n, double q)
{
    long k = (long)(q * n + 0.999999999);
    if (k < 1) k = 1;
    if (k > n) k = n;
    return sorted[k - 1];
}

static int mode_rtt(const opts_t *o)
{
    MQTTClient c = connect_client(o, "rtt");
    target = -1;   /* signal on every arrival */
    subscribe(c, o->topic, 0);
    cJSON *seq;
    cJSON *ev = make_event(&seq);
    char *payload = cJSON_PrintUnformatted(ev);
    int len = (int)strlen(payload);
    double *us = malloc(sizeof(double) * (size_t)o->n);
    long timeouts = 0, got = 0;

    for (long i = 0; i < o->warmup + o->n; i++) {
        pthread_mutex_lock(&mu);
        long before = received;
        pthread_mutex_unlock(&mu);

        double t0 = now_s();
        int rc = publish(c, o->topic, len, payload, 0);
        if (rc != MQTTCLIENT_SUCCESS)
            die("MQTTClient_publish", rc);
        pthread_mutex_lock(&mu);
        struct timespec ts;
        abstime_in(&ts, 5.0);
        int to = 0;
        while (received == before && !lost && !to)
            to = pthread_cond_timedwait(&cv, &mu, &ts) == ETIMEDOUT;
        pthread_mutex_unlock(&mu);
        double t1 = now_s();
        if (to || lost) {
            timeouts++;
            if (lost || timeouts > 10)
                break;
        }
        if (i >= o->warmup && !to)
            us[got++] = (t1 - t0) * 1e6;
    }
    finish(c);
    if (got == 0) {
        fprintf(stderr, "c_ceiling: rtt: no samples\n");
        return 1;
    }
    qsort(us, (size_t)got, sizeof(double), cmp_double);
    double sum = 0;
    for (long i = 0; i < got; i++)
        sum += us[i];
    printf("RESULT {\"n\": %ld, \"p50_us\": %.2f, \"p99_us\": %.2f, \"mean_us\": %.2f, "
           "\"min_us\": %.2f, \"max_us\": %.2f, \"timeouts\": %ld, \"lost\": %d}\n",
           got, pct(us, got, 0.50), pct(us, got, 0.99), sum / got,
           us[0], us[got - 1], timeouts, lost);
    free(us);
    cJSON_free(payload);
    cJSON_Delete(ev);
    return (timeouts || lost) ? 1 : 0;
}


/* ------------------------------------------- raw-socket measurement helpers
 *
 * Not part of the ceiling: the instruments around the clients under test.
 * `count` (the arrival counter of the publish tests) and `flood` (the
 * publisher of the receive tests) speak just enough MQTT 3.1.1 over a plain
 * TCP socket to stay far cheaper than any client, so on a 2-core machine
 * the broker, which shares a CPU with them, is not starved.
 */

static void raw_die(const char *what)
{
    fprintf(stderr, "c_ceiling: %s: %s\n", what, strerror(errno));
    exit(2);
}

static size_t put_varint(unsigned char *b, size_t v)
{
    size_t i = 0;
    do {
        unsigned char d = v % 128;
        v /= 128;
        b[i++] = d | (v ? 0x80 : 0);
    } while (v);
    return i;
}

static size_t put_str(unsigned char *b, const char *s, size_t len)
{
    b[0] = (unsigned char)(len >> 8);
    b[1] = (unsigned char)len;
    memcpy(b + 2, s, len);
    return len + 2;
}

static void write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len) {
        ssize_t w = write(fd, p, len);
        if (w < 0) {
            if (errno == EINTR) continue;
            raw_die("write");
        }
        p += w;
        len -= (size_t)w;
    }
}

static void read_exact(int fd, unsigned char *buf, size_t len)
{
    while (len) {
        ssize_t r = read(fd, buf, len);
        if (r <= 0) {
            if (r < 0 && errno == EINTR) continue;
            raw_die("read (broker closed?)");
        }
        buf += r;
        len -= (size_t)r;
    }
}

/* "tcp://host:port" -> connected socket with an MQTT 3.1.1 session. */
static int raw_connect(const char *uri, const char *client_id)
{
    char host[64];
    int port;
    if (sscanf(uri, "tcp://%63[^:]:%d", host, &port) != 2) {
        fprintf(stderr, "c_ceiling: raw helpers need a tcp://host:port URI, got %s\n", uri);
        exit(64);
    }
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) raw_die("socket");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        fprintf(stderr, "c_ceiling: bad IPv4 host %s\n", host);
        exit(64);
    }
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) raw_die("connect");

    unsigned char pkt[256], body[200];
    size_t n = 0;
    n += put_str(body + n, "MQTT", 4);
    body[n++] = 4;      /* protocol level 3.1.1 */
    body[n++] = 0x02;   /* clean session */
    body[n++] = 0;      /* keepalive 0: off, runs are short */
    body[n++] = 0;
    n += put_str(body + n, client_id, strlen(client_id));
    size_t h = 0;
    pkt[h++] = 0x10;
    h += put_varint(pkt + h, n);
    memcpy(pkt + h, body, n);
    write_all(fd, pkt, h + n);
    unsigned char ack[4];
    read_exact(fd, ack, 4);
    if (ack[0] != 0x20 || ack[3] != 0) {
        fprintf(stderr, "c_ceiling: CONNACK refused (%02x %02x)\n", ack[0], ack[3]);
        exit(2);
    }
    return fd;
}

/* count: subscribe at QoS0 and count PUBLISH packets, reading big chunks. */
static int mode_count(const opts_t *o)
{
    char id[64];
    snprintf(id, sizeof id, "c-count-%ld", (long)getpid());
    int fd = raw_connect(o->uri, id);

    unsigned char pkt[512], body[480];
    size_t tl = strlen(o->topic), n = 0;
    if (tl > 400) { fprintf(stderr, "c_ceiling: topic too long\n"); exit(64); }
    body[n++] = 0; body[n++] = 1;                 /* packet id 1 */
    n += put_str(body + n, o->topic, tl);
    body[n++] = 0;                                /* QoS 0 */
    size_t h = 0;
    pkt[h++] = 0x82;
    h += put_varint(pkt + h, n);
    memcpy(pkt + h, body, n);
    write_all(fd, pkt, h + n);
    unsigned char suback[5];
    read_exact(fd, suback, 5);
    if (suback[0] != 0x90 || suback[4] > 2) {
        fprintf(stderr, "c_ceiling: SUBACK refused\n");
        exit(2);
    }
    struct timeval tv = {(time_t)o->idle, (suseconds_t)((o->idle - (long)o->idle) * 1e6)};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    printf("READY\n");
    fflush(stdout);

    /* Streaming parser over 256 KiB reads: state is the bytes still to skip
     * in the current packet, or a partially read fixed header. */
    static unsigned char buf[1 << 18];
    unsigned char hdr[5];
    size_t hdr_len = 0, skip = 0;
    long count = 0;
    double tf = 0, tl_ = 0;
    while (count < o->n) {
        ssize_t r = read(fd, buf, sizeof buf);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;                        /* idle timeout or EOF */
        double t = now_s();
        size_t i = 0, len = (size_t)r;
        while (i < len) {
            if (skip) {
                size_t k = (len - i < skip) ? len - i : skip;
                i += k;
                skip -= k;
                continue;
            }
            hdr[hdr_len++] = buf[i++];
            if (hdr_len == 1 || (hdr[hdr_len - 1] & 0x80 && hdr_len < 5))
                continue;                          /* need more header bytes */
            size_t rem = 0, mul = 1;
            for (size_t j = 1; j < hdr_len; j++, mul *= 128)
                rem += (hdr[j] & 0x7f) * mul;
            if ((hdr[0] >> 4) == 3) {             /* PUBLISH */
                if (count++ == 0) tf = t;
                tl_ = t;
            }
            skip = rem;
            hdr_len = 0;
        }
    }
    unsigned char disc[2] = {0xe0, 0};
    write_all(fd, disc, 2);
    close(fd);
    printf("RESULT {\"n\": %ld, \"count\": %ld, \"t_first\": %.9f, \"t_last\": %.9f, \"lost\": 0}\n",
           o->n, count, tf, tl_);
    return 0;
}

/* flood: write N QoS0 PUBLISH packets of the seq-0 event in 64-packet batches. */
static int mode_flood(const opts_t *o)
{
    char id[64];
    snprintf(id, sizeof id, "c-flood-%ld", (long)getpid());
    int fd = raw_connect(o->uri, id);

    cJSON *seq;
    cJSON *ev = make_event(&seq);
    char *payload = cJSON_PrintUnformatted(ev);
    size_t pl = strlen(payload), tl = strlen(o->topic);
    unsigned char one[1024];
    size_t h = 0;
    if (pl + tl > 900) { fprintf(stderr, "c_ceiling: packet too big\n"); exit(64); }
    one[h++] = 0x30;                              /* PUBLISH, QoS0 */
    h += put_varint(one + h, 2 + tl + pl);
    h += put_str(one + h, o->topic, tl);
    memcpy(one + h, payload, pl);
    size_t plen = h + pl;

    enum { BATCH = 64 };
    unsigned char *batch = malloc(plen * BATCH);
    for (int i = 0; i < BATCH; i++)
        memcpy(batch + (size_t)i * plen, one, plen);

    double t0 = now_s();
    long sent = 0;
    while (sent < o->n) {
        long k = (o->n - sent < BATCH) ? o->n - sent : BATCH;
        write_all(fd, batch, plen * (size_t)k);
        sent += k;
    }
    double t1 = now_s();
    unsigned char disc[2] = {0xe0, 0};
    write_all(fd, disc, 2);
    shutdown(fd, SHUT_WR);
    unsigned char sink[64];
    while (read(fd, sink, sizeof sink) > 0)       /* broker closes after DISCONNECT */
        ;
    close(fd);
    free(batch);
    cJSON_free(payload);
    cJSON_Delete(ev);
    printf("RESULT {\"n\": %ld, \"bytes\": %ld, \"t_start\": %.9f, \"t_returned\": %.9f, "
           "\"t_end\": %.9f, \"lost\": 0}\n", o->n, (long)(pl * (size_t)o->n), t0, t1, now_s());
    return 0;
}

int main(int argc, char **argv)
{
    opts_t o = parse(argc, argv);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&cv, &ca);
    setvbuf(stdout, NULL, _IOLBF, 0);

    if (!strcmp(o.mode, "payload")) return mode_payload();
    if (!strcmp(o.mode, "pub")) return mode_pub(&o);
    if (!strcmp(o.mode, "sub")) return mode_sub(&o);
    if (!strcmp(o.mode, "rtt")) return mode_rtt(&o);
    if (!strcmp(o.mode, "count")) return mode_count(&o);
    if (!strcmp(o.mode, "flood")) return mode_flood(&o);
    usage();
    return 64;
}
