/*
 * fuzz_store.c - libFuzzer harness for the durable outbox's recovery
 * (csrc/store.c): any bytes as the log of a store, opened, walked, used
 * through paho's persistence interface, closed and opened again.
 *
 * The input is the log after a valid header for client id "fz" (one input
 * in 16: the whole file, header included, to reach the header checks).
 * Properties checked:
 *   - open never crashes, leaks or reads out of bounds (ASan), whatever the bytes;
 *   - every restored message is well formed (QoS 1/2, a topic, lengths in range);
 *   - recovery is a fixed point: the log open rewrote opens again with no
 *     damage and the same messages and paho records;
 *   - paho's interface (keys, get, put, remove, clear) works on what was restored.
 * The store lives in a directory under /dev/shm when there is one (fdatasync
 * there costs nothing), made once per process.
 */
#define _GNU_SOURCE
#include "../csrc/store.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

static char g_dir[256];
static char g_log[300];

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    (void)argc;
    (void)argv;
    snprintf(g_dir, sizeof g_dir, "%s/sb-fuzz-store-XXXXXX", base);
    if (mkdtemp(g_dir) == NULL)
        abort();
    snprintf(g_log, sizeof g_log, "%s/outbox.log", g_dir);
    return 0;
}

/* Remove everything but the lock (damaged copies pile up otherwise). */
static void
clean_dir(void)
{
    DIR *d = opendir(g_dir);
    struct dirent *e;
    char path[600];
    if (d == NULL)
        abort();
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0 || strcmp(e->d_name, "lock") == 0)
            continue;
        snprintf(path, sizeof path, "%s/%s", g_dir, e->d_name);
        unlink(path);
    }
    closedir(d);
}

static void
write_log(const uint8_t *data, size_t size, int raw)
{
    FILE *f = fopen(g_log, "wb");
    if (f == NULL)
        abort();
    if (!raw) {
        /* the header store.c writes: magic, version 1, id length, id, CRC-32 of those */
        unsigned char h[22];
        uLong crc;
        memcpy(h, "SBOUTBOX", 8);
        h[8] = 1, h[9] = h[10] = h[11] = 0;
        h[12] = 2, h[13] = h[14] = h[15] = 0;
        memcpy(h + 16, "fz", 2);
        crc = crc32(crc32(0L, Z_NULL, 0), h, 18);
        h[18] = (unsigned char)crc, h[19] = (unsigned char)(crc >> 8);
        h[20] = (unsigned char)(crc >> 16), h[21] = (unsigned char)(crc >> 24);
        fwrite(h, 1, sizeof h, f);
    }
    fwrite(data, 1, size, f);
    fclose(f);
}

typedef struct {
    uint64_t count, bytes, last_seq;
} walk;

static int
check_message(void *arg, const sb_store_msg *m)
{
    walk *w = arg;
    if ((m->qos != 1 && m->qos != 2) || m->topic_len == 0 || m->topic == NULL || m->seq <= w->last_seq ||
        m->token < 0 || m->token > 65535)
        abort();
    /* touch every byte (ASan checks the bounds) */
    w->bytes += m->topic_len + m->len + m->props_len;
    if (m->len > 0)
        w->bytes += ((const unsigned char *)m->payload)[m->len - 1];
    if (m->props_len > 0)
        w->bytes += m->props[m->props_len - 1];
    w->bytes += (unsigned char)m->topic[m->topic_len - 1];
    w->last_seq = m->seq;
    w->count++;
    return 0;
}

static void
use_paho_interface(sb_store *s)
{
    MQTTClient_persistence p;
    void *h;
    char **keys;
    int n, i;
    char *buf;
    int len;
    char put_key[] = "s-7";
    char *parts[2] = {"ab", "cd"};
    int lens[2] = {2, 2};
    sb_store_paho_interface(s, &p);
    if (p.popen(&h, "fz", "tcp://x", p.context) != 0)
        abort();
    if (p.pkeys(h, &keys, &n) != 0)
        abort();
    for (i = 0; i < n; i++) {
        if (p.pcontainskey(h, keys[i]) != 0 || p.pget(h, keys[i], &buf, &len) != 0)
            abort();
        free(buf);
        free(keys[i]);
    }
    free(keys);
    sb_store_publishing(s, 1);
    if (p.pput(h, put_key, 2, parts, lens) != 0 || p.pget(h, put_key, &buf, &len) != 0 || len != 4 ||
        memcmp(buf, "abcd", 4) != 0)
        abort();
    free(buf);
    sb_store_publishing(s, 0);
    if (p.premove(h, put_key) != 0 || p.pcontainskey(h, put_key) == 0)
        abort();
    p.pclose(h);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sb_store_report rep, rep2;
    sb_store *s;
    int kind;
    char err[1024];
    walk w1 = {0, 0, 0}, w2 = {0, 0, 0};
    int raw = size > 0 && data[0] % 16 == 15;

    clean_dir();
    write_log(raw ? data + 1 : data, raw ? size - 1 : size, raw);
    s = sb_store_open(g_dir, "fz", SB_STORE_SYNC_WRITE, 1u << 30, &rep, &kind, err, sizeof err);
    if (s == NULL) {
        /* refused with a reason: only a bad header may do that */
        if (!raw || (kind != SB_STORE_E_FORMAT && kind != SB_STORE_E_CLIENT) || err[0] == '\0')
            abort();
        return 0;
    }
    if (sb_store_each_message(s, check_message, &w1) != 0 || w1.count != rep.messages)
        abort();
    sb_store_close(s);

    /* what open rewrote is clean and holds the same */
    s = sb_store_open(g_dir, "fz", SB_STORE_SYNC_WRITE, 1u << 30, &rep2, &kind, err, sizeof err);
    if (s == NULL || rep2.damaged_bytes != 0 || rep2.messages != rep.messages ||
        rep2.paho_records != rep.paho_records)
        abort();
    if (sb_store_each_message(s, check_message, &w2) != 0 || w2.count != w1.count || w2.bytes != w1.bytes)
        abort();
    use_paho_interface(s);
    if (sb_store_accept(s, w2.last_seq + 1, 1, 0, "t", 1, "p", 1, NULL, 0) != SB_STORE_OK ||
        sb_store_commit(s, err, sizeof err) != SB_STORE_OK)
        abort();
    sb_store_close(s);
    return 0;
}
