/* Connect latency of bare paho.mqtt.c (MQTTClient, multi-threaded mode, as
 * sermas_bus uses it): N cycles of create + setCallbacks + connect5, then
 * disconnect + destroy.  Built and run by bench/bench_connect.py.
 *
 *   c_connect URI N      prints: RESULT {"connect_ms": [...], "close_ms": [...]}
 */
#include <MQTTClient.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static int on_message(void *ctx, char *topic, int len, MQTTClient_message *m)
{
    MQTTClient_freeMessage(&m);
    MQTTClient_free(topic);
    return 1;
}

int main(int argc, char **argv)
{
    const char *uri;
    int n, i;
    double *conn, *clos;
    if (argc < 3) {
        fprintf(stderr, "usage: %s URI N\n", argv[0]);
        return 2;
    }
    uri = argv[1];
    n = atoi(argv[2]);
    conn = calloc((size_t)n, sizeof *conn);
    clos = calloc((size_t)n, sizeof *clos);
    if (n < 1 || !conn || !clos)
        return 2;
    for (i = 0; i < n; i++) {
        MQTTClient h;
        MQTTClient_createOptions co = MQTTClient_createOptions_initializer;
        MQTTClient_connectOptions o = MQTTClient_connectOptions_initializer5;
        MQTTProperties props = MQTTProperties_initializer;
        MQTTResponse r;
        char id[64];
        int rc;
        double t;
        snprintf(id, sizeof id, "bench-c-%d-%d", (int)getpid(), i);
        co.MQTTVersion = MQTTVERSION_5;
        o.cleanstart = 1;
        o.keepAliveInterval = 60;
        o.connectTimeout = 10;
        t = now_ms();
        if ((rc = MQTTClient_createWithOptions(&h, uri, id, MQTTCLIENT_PERSISTENCE_NONE, NULL, &co)) != 0 ||
            (rc = MQTTClient_setCallbacks(h, NULL, NULL, on_message, NULL)) != 0) {
            fprintf(stderr, "create/setCallbacks failed: %d\n", rc);
            return 1;
        }
        r = MQTTClient_connect5(h, &o, &props, NULL);
        conn[i] = now_ms() - t;
        if ((int)r.reasonCode != 0) {
            fprintf(stderr, "connect5 failed: %d\n", (int)r.reasonCode);
            return 1;
        }
        MQTTResponse_free(r);
        t = now_ms();
        if ((rc = MQTTClient_disconnect(h, 0)) != 0)
            fprintf(stderr, "disconnect: %d\n", rc);
        MQTTClient_destroy(&h);
        clos[i] = now_ms() - t;
    }
    printf("RESULT {\"connect_ms\": [");
    for (i = 0; i < n; i++)
        printf("%s%.3f", i ? ", " : "", conn[i]);
    printf("], \"close_ms\": [");
    for (i = 0; i < n; i++)
        printf("%s%.3f", i ? ", " : "", clos[i]);
    printf("]}\n");
    free(conn);
    free(clos);
    return 0;
}
