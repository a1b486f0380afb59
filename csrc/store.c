/*
 * store.c - the durable outbox: an append-only log with group commit, and
 * paho.mqtt.c's persistence interface over it.  See store.h for the model.
 *
 * No Python here and no paho library call: this file builds alone into the
 * recovery fuzzer.  Every function takes the store's mutex itself, except
 * the *_locked ones, whose callers hold it.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE   /* pread, fdatasync, flock, gmtime_r when built alone (the fuzzer) */
#endif
#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#define FILE_MAGIC "SBOUTBOX"
#define FILE_VERSION 1u
#define REC_MAGIC 0x53425231u          /* "SBR1" */
#define REC_HEADER 12u                  /* magic, body length, CRC-32 of the body */
#define REC_MAX_BODY (512u << 20)       /* larger than any MQTT packet */
#define KEY_MAX 23
#define COMPACT_MIN (16u << 20)         /* never compact a log smaller than this */
#define COMPACT_FROM_PAHO_MAX (1u << 20) /* paho's threads compact only this much live data */

enum { REC_ACCEPT = 'A', REC_DONE = 'D', REC_PUT = 'P', REC_DEL = 'R', REC_DROP = 'X',
       REC_CLEAR = 'C' };

/* ---- the live set: an open-addressing table by key ------------------------ */

/* "#<seq>" for an accepted message, paho's own key for its records. */
typedef struct {
    char key[KEY_MAX + 1];
    unsigned char state;        /* 0 empty, 1 used, 2 deleted */
    uint64_t link;              /* paho record: the message it carries, 0 if none */
    uint64_t seq;               /* accepted message: its seq */
    uint64_t off;               /* the record's first byte in the log */
    uint32_t len;               /* the record's size, header included */
    int token;                  /* each_message: paho's message id holding it */
} entry;

struct sb_store {
    pthread_mutex_t mu;
    pthread_cond_t sync_cv;
    int fd, lock_fd;
    char *dir, *path, *client_id;
    int sync;
    uint64_t max_bytes;
    entry *tab;
    size_t cap, used, tombs;
    uint64_t live_bytes, messages;
    uint64_t max_seq;           /* the highest message seq any record named */
    uint64_t end;               /* the log's logical size: written + buffered */
    uint64_t written;           /* bytes handed to the OS */
    uint64_t synced;            /* bytes fdatasync'ed */
    uint64_t epoch;             /* bumped by each compaction (offsets start over) */
    uint64_t compact_at;
    int syncing;
    unsigned char *buf;
    size_t buf_len, buf_cap;
    int io_error;
    char io_text[512];
    unsigned char *image;       /* the fresh log after open, for each_message */
    size_t image_len;
    uint64_t compactions, writes, syncs;
};

static uint64_t
hash_key(const char *k)
{
    uint64_t h = 1469598103934665603ull;
    while (*k)
        h = (h ^ (unsigned char)*k++) * 1099511628211ull;
    return h;
}

static entry *
find(sb_store *s, const char *key)
{
    size_t i, mask = s->cap - 1;
    if (s->cap == 0)
        return NULL;
    for (i = hash_key(key) & mask;; i = (i + 1) & mask) {
        entry *e = &s->tab[i];
        if (e->state == 0)
            return NULL;
        if (e->state == 1 && strcmp(e->key, key) == 0)
            return e;
    }
}

static int
rehash(sb_store *s, size_t cap)
{
    entry *old = s->tab, *tab = calloc(cap, sizeof *tab);
    size_t i, n = s->cap;
    if (tab == NULL)
        return -1;
    s->tab = tab;
    s->cap = cap;
    s->tombs = 0;
    for (i = 0; i < n; i++)
        if (old[i].state == 1) {
            size_t j = hash_key(old[i].key) & (cap - 1);
            while (tab[j].state != 0)
                j = (j + 1) & (cap - 1);
            tab[j] = old[i];
        }
    free(old);
    return 0;
}

/* The entry for key, created empty if new; NULL when out of memory. */
static entry *
insert(sb_store *s, const char *key)
{
    entry *e = find(s, key);
    size_t i, mask;
    if (e != NULL)
        return e;
    if ((s->used + s->tombs + 1) * 2 > s->cap &&
        rehash(s, s->cap == 0 ? 64 : (s->used + 1) * 4 > s->cap ? s->cap * 2 : s->cap) < 0)
        return NULL;
    mask = s->cap - 1;
    for (i = hash_key(key) & mask; s->tab[i].state == 1; i = (i + 1) & mask)
        ;
    e = &s->tab[i];
    if (e->state == 2)
        s->tombs--;
    memset(e, 0, sizeof *e);
    snprintf(e->key, sizeof e->key, "%s", key);
    e->state = 1;
    s->used++;
    return e;
}

static void
erase(sb_store *s, entry *e)
{
    s->live_bytes -= e->len;
    if (e->key[0] == '#')
        s->messages--;
    e->state = 2;
    s->used--;
    s->tombs++;
}

static void
message_key(char *key, uint64_t seq)
{
    snprintf(key, KEY_MAX + 1, "#%llu", (unsigned long long)seq);
}

/* paho's record of a PUBLISH it sent: "s-<id>" or "s5-<id>" (not "sc-"). */
static int
is_sent_key(const char *k)
{
    return k[0] == 's' && (k[1] == '-' || (k[1] == '5' && k[2] == '-'));
}

static int
is_v5_key(const char *k)
{
    const char *dash = strchr(k, '-');
    return dash != NULL && dash > k && dash[-1] == '5';
}

/* ---- little-endian fields ------------------------------------------------- */

static void
put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

static uint32_t
get32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void
put64(unsigned char *p, uint64_t v)
{
    put32(p, (uint32_t)v);
    put32(p + 4, (uint32_t)(v >> 32));
}

static uint64_t
get64(const unsigned char *p)
{
    return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

static uint32_t
crc_of(const unsigned char *p, size_t n)
{
    uLong c = crc32(0L, Z_NULL, 0);
    while (n > 0) {
        uInt chunk = n > (1u << 30) ? (1u << 30) : (uInt)n;
        c = crc32(c, p, chunk);
        p += chunk;
        n -= chunk;
    }
    return (uint32_t)c;
}

/* ---- records ---------------------------------------------------------------- */

/* A record's body, checked and split. */
typedef struct {
    int type;
    uint64_t seq;               /* ACCEPT, DONE */
    uint64_t link;              /* PUT */
    int qos, retain;            /* ACCEPT */
    const unsigned char *topic, *payload, *props, *value;
    uint32_t topic_len, len, props_len, value_len;
    char key[KEY_MAX + 1];      /* PUT, DEL, DROP */
} record;

static int
parse_key(const unsigned char *p, size_t n, record *r)
{
    size_t k;
    if (n < 1 || p[0] == 0 || p[0] > KEY_MAX || n < 1u + p[0])
        return -1;
    for (k = 0; k < p[0]; k++)
        if (p[1 + k] < 0x21 || p[1 + k] > 0x7e)
            return -1;
    memcpy(r->key, p + 1, p[0]);
    r->key[p[0]] = '\0';
    return 1 + p[0];
}

/* 0 if body is a well-formed record, -1 if not. */
static int
parse_body(const unsigned char *b, size_t n, record *r)
{
    int k;
    memset(r, 0, sizeof *r);
    if (n < 1)
        return -1;
    r->type = b[0];
    switch (b[0]) {
    case REC_ACCEPT: {
        uint64_t need;
        if (n < 23)
            return -1;
        r->seq = get64(b + 1);
        r->qos = b[9];
        r->retain = b[10];
        r->topic_len = get32(b + 11);
        r->len = get32(b + 15);
        r->props_len = get32(b + 19);
        need = 23ull + r->topic_len + r->len + r->props_len;
        if (need != n || r->seq == 0 || r->qos < 1 || r->qos > 2 || r->retain > 1 || r->topic_len == 0)
            return -1;
        r->topic = b + 23;
        r->payload = r->topic + r->topic_len;
        r->props = r->payload + r->len;
        return 0;
    }
    case REC_DONE:
        if (n != 9)
            return -1;
        r->seq = get64(b + 1);
        return r->seq == 0 ? -1 : 0;
    case REC_PUT:
        if (n < 10)
            return -1;
        r->link = get64(b + 1);
        if ((k = parse_key(b + 9, n - 9, r)) < 0 || r->key[0] == '#')
            return -1;
        r->value = b + 9 + k;
        r->value_len = (uint32_t)(n - 9 - (size_t)k);
        return 0;
    case REC_DEL:
    case REC_DROP:
        k = parse_key(b + 1, n - 1, r);
        return k < 0 || (size_t)k + 1 != n || r->key[0] == '#' ? -1 : 0;
    case REC_CLEAR:
        return n == 1 ? 0 : -1;
    default:
        return -1;
    }
}

/* Apply one record at log offset off (size len) to the live set.  The same
 * at open (replay) and at run time.  0, or -1 out of memory. */
static int
apply(sb_store *s, const record *r, uint64_t off, uint32_t len)
{
    char key[KEY_MAX + 1];
    entry *e;
    size_t i;

    if (r->seq > s->max_seq)
        s->max_seq = r->seq;
    if (r->link > s->max_seq)
        s->max_seq = r->link;
    switch (r->type) {
    case REC_ACCEPT:
        message_key(key, r->seq);
        if ((e = find(s, key)) != NULL)
            erase(s, e);     /* a seq is accepted once; a repeat replaces */
        if ((e = insert(s, key)) == NULL)
            return -1;
        e->seq = r->seq;
        s->messages++;
        break;
    case REC_DONE:
        message_key(key, r->seq);
        if ((e = find(s, key)) != NULL)
            erase(s, e);
        return 0;
    case REC_PUT: {
        uint64_t link = r->link;
        if ((e = find(s, r->key)) != NULL) {
            if (link == 0)
                link = e->link;     /* paho re-writing its record keeps the message's link */
            s->live_bytes -= e->len;
        }
        else if ((e = insert(s, r->key)) == NULL)
            return -1;
        e->link = link;
        break;
    }
    case REC_DEL:
        if ((e = find(s, r->key)) == NULL)
            return 0;
        if (e->link != 0 && is_sent_key(r->key)) {
            /* paho forgets a PUBLISH it sent only once the broker completed
             * it (PUBACK, PUBCOMP, a refusing PUBREC): settled */
            entry *m;
            message_key(key, e->link);
            if ((m = find(s, key)) != NULL)
                erase(s, m);
        }
        erase(s, e);
        return 0;
    case REC_DROP:
        if ((e = find(s, r->key)) != NULL)
            erase(s, e);
        return 0;
    case REC_CLEAR:
        for (i = 0; i < s->cap; i++)
            if (s->tab[i].state == 1 && s->tab[i].key[0] != '#')
                erase(s, &s->tab[i]);
        return 0;
    default:
        return 0;
    }
    e->off = off;
    e->len = len;
    s->live_bytes += len;
    return 0;
}

static int
buf_reserve(sb_store *s, size_t more)
{
    size_t cap;
    unsigned char *nb;
    if (s->buf_len + more <= s->buf_cap)
        return 0;
    cap = s->buf_cap ? s->buf_cap : 4096;
    while (cap < s->buf_len + more)
        cap *= 2;
    if ((nb = realloc(s->buf, cap)) == NULL)
        return -1;
    s->buf = nb;
    s->buf_cap = cap;
    return 0;
}

/* Append a record made of n parts to the buffer and apply it.  0, or -1 out
 * of memory (nothing appended). */
static int
append_locked(sb_store *s, const void *const *parts, const size_t *lens, int n)
{
    size_t body = 0, pos;
    uint64_t off = s->end;
    unsigned char *h;
    uLong crc = crc32(0L, Z_NULL, 0);
    record r;
    int i;

    for (i = 0; i < n; i++)
        body += lens[i];
    if (body > REC_MAX_BODY || buf_reserve(s, REC_HEADER + body) < 0)
        return -1;
    h = s->buf + s->buf_len;
    pos = REC_HEADER;
    for (i = 0; i < n; i++) {
        if (lens[i] > 0)
            memcpy(h + pos, parts[i], lens[i]);
        pos += lens[i];
    }
    crc = crc_of(h + REC_HEADER, body);
    put32(h, REC_MAGIC);
    put32(h + 4, (uint32_t)body);
    put32(h + 8, (uint32_t)crc);
    if (parse_body(h + REC_HEADER, body, &r) < 0 || apply(s, &r, off, (uint32_t)(REC_HEADER + body)) < 0)
        return -1;   /* (parse cannot fail on what we built; apply can run out of memory) */
    s->buf_len += REC_HEADER + body;
    s->end += REC_HEADER + body;
    return 0;
}

static void
set_io_error_locked(sb_store *s, const char *what, int err)
{
    if (s->io_error)
        return;
    s->io_error = err ? err : EIO;
    snprintf(s->io_text, sizeof s->io_text,
             "the outbox store could not %s %s: %s; messages accepted from now on are not durable "
             "(free disk space or fix the directory, then open the client again)",
             what, s->path, strerror(s->io_error));
}

static int
write_all(int fd, const unsigned char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Hand the buffer to the OS.  0, or -1 (io_error set). */
static int
write_buffer_locked(sb_store *s)
{
    if (s->io_error) {
        s->buf_len = 0;          /* nothing reaches the file any more: do not pile it up */
        return -1;
    }
    if (s->buf_len == 0)
        return 0;
    if (write_all(s->fd, s->buf, s->buf_len) < 0) {
        set_io_error_locked(s, "write to", errno);
        return -1;
    }
    s->written += s->buf_len;
    s->buf_len = 0;
    s->writes++;
    return 0;
}

/* ---- compaction: the live records into a fresh log ------------------------ */

static size_t
header_size(const sb_store *s)
{
    return 8 + 4 + 4 + strlen(s->client_id) + 4;
}

static void
write_header(const sb_store *s, unsigned char *p)
{
    size_t idlen = strlen(s->client_id);
    memcpy(p, FILE_MAGIC, 8);
    put32(p + 8, FILE_VERSION);
    put32(p + 12, (uint32_t)idlen);
    memcpy(p + 16, s->client_id, idlen);
    put32(p + 16 + idlen, crc_of(p, 16 + idlen));
}

static int
by_offset(const void *a, const void *b)
{
    uint64_t x = (*(entry *const *)a)->off, y = (*(entry *const *)b)->off;
    return x < y ? -1 : x > y;
}

static int
fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), rc;
    if (fd < 0)
        return -1;
    rc = fsync(fd);
    close(fd);
    return rc;
}

/* Write the live records (read from src, the old log's bytes, or from the
 * file when src is NULL) into a new log that replaces the old one atomically
 * (temporary file, fdatasync, open, rename, directory fsync).  The buffer
 * must be empty.  Nothing in memory changes until the new log is in place:
 * on failure the old log stays in use, every offset still right.  Keeps
 * the new log's bytes in s->image when keep_image.  0, or -1 with err. */
static int
compact_locked(sb_store *s, const unsigned char *src, int keep_image, char *err, size_t errlen)
{
    entry **live = NULL;
    uint64_t *new_off = NULL;
    unsigned char *img = NULL;
    char tmp[4200];
    size_t n = 0, i, size = header_size(s), pos;
    int fd = -1, nfd = -1;

    tmp[0] = '\0';
    if (s->used > 0 && ((live = malloc(s->used * sizeof *live)) == NULL ||
                        (new_off = malloc(s->used * sizeof *new_off)) == NULL))
        goto nomem;
    for (i = 0; i < s->cap; i++)
        if (s->tab[i].state == 1) {
            live[n++] = &s->tab[i];
            size += s->tab[i].len;
        }
    if (n > 1)
        qsort(live, n, sizeof *live, by_offset);
    if ((img = malloc(size)) == NULL)
        goto nomem;
    write_header(s, img);
    pos = header_size(s);
    for (i = 0; i < n; i++) {
        entry *e = live[i];
        unsigned char *r = img + pos;
        if (src != NULL)
            memcpy(r, src + e->off, e->len);
        else if (pread(s->fd, r, e->len, (off_t)e->off) != (ssize_t)e->len) {
            snprintf(err, errlen, "could not read %s to compact it: %s", s->path,
                     strerror(errno ? errno : EIO));
            goto fail;
        }
        if (r[REC_HEADER] == REC_PUT && get64(r + REC_HEADER + 1) != e->link) {
            /* the link this record inherited from an earlier PUT of its key */
            put64(r + REC_HEADER + 1, e->link);
            put32(r + 8, crc_of(r + REC_HEADER, e->len - REC_HEADER));
        }
        new_off[i] = pos;
        pos += e->len;
    }
    snprintf(tmp, sizeof tmp, "%s.tmp", s->path);
    fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || write_all(fd, img, size) < 0 || fdatasync(fd) < 0 ||
        (nfd = open(tmp, O_RDWR | O_APPEND | O_CLOEXEC)) < 0) {
        snprintf(err, errlen, "could not write %s: %s", tmp, strerror(errno));
        goto fail;
    }
    close(fd);
    fd = -1;
    if (rename(tmp, s->path) < 0) {
        snprintf(err, errlen, "could not replace %s: %s", s->path, strerror(errno));
        goto fail;
    }
    tmp[0] = '\0';           /* renamed: nothing to remove any more */
    (void)fsync_dir(s->dir); /* the rename's own durability; the data is synced either way */
    /* the new log is in place: now the books follow it */
    for (i = 0; i < n; i++)
        live[i]->off = new_off[i];
    if (s->fd >= 0)
        close(s->fd);
    s->fd = nfd;
    s->end = s->written = s->synced = size;
    s->epoch++;               /* committers of the old log: it is all synced */
    s->compact_at = 4 * (uint64_t)size > COMPACT_MIN ? 4 * (uint64_t)size : COMPACT_MIN;
    s->compactions++;
    free(live);
    free(new_off);
    if (keep_image) {
        free(s->image);
        s->image = img;
        s->image_len = size;
    }
    else
        free(img);
    pthread_cond_broadcast(&s->sync_cv);
    return 0;
nomem:
    snprintf(err, errlen, "out of memory compacting %s", s->path);
fail:
    if (fd >= 0)
        close(fd);
    if (nfd >= 0)
        close(nfd);
    if (tmp[0] != '\0')
        unlink(tmp);
    free(live);
    free(new_off);
    free(img);
    return -1;
}

/* Compact when the log grew well past what is live (caller wrote the
 * buffer).  from_paho: called on paho's threads, under its mutex: only when
 * the live set is small (a subscriber's inbound QoS 2 records), so paho's
 * keep-alive never waits on copying a large outbox; publishers compact
 * the rest from their commit. */
static void
maybe_compact_locked(sb_store *s, int from_paho)
{
    char err[600];
    if (s->syncing || s->io_error || s->buf_len > 0 || s->end < s->compact_at ||
        (from_paho && s->live_bytes > COMPACT_FROM_PAHO_MAX))
        return;
    if (compact_locked(s, NULL, 0, err, sizeof err) < 0)
        s->compact_at = s->end * 2;   /* try again later; the old log is intact */
}

/* ---- open: lock, scan, recover, rewrite ------------------------------------- */

static int
mkdirs(const char *dir)
{
    char p[4096];
    size_t i, n = strlen(dir);
    if (n == 0 || n >= sizeof p)
        return errno = ENAMETOOLONG, -1;
    memcpy(p, dir, n + 1);
    for (i = 1; i <= n; i++)
        if (p[i] == '/' || p[i] == '\0') {
            char c = p[i];
            p[i] = '\0';
            if (mkdir(p, 0700) < 0 && errno != EEXIST)
                return -1;
            p[i] = c;
        }
    return 0;
}

static int
take_lock(sb_store *s, int *kind, char *err, size_t errlen)
{
    char path[4200], pid[32];
    ssize_t n;
    snprintf(path, sizeof path, "%s/lock", s->dir);
    s->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (s->lock_fd < 0) {
        *kind = SB_STORE_E_IO;
        snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    if (flock(s->lock_fd, LOCK_EX | LOCK_NB) < 0) {
        int e = errno;
        n = pread(s->lock_fd, pid, sizeof pid - 1, 0);
        pid[n > 0 ? n : 0] = '\0';
        pid[strcspn(pid, "\n")] = '\0';
        *kind = e == EWOULDBLOCK ? SB_STORE_E_LOCKED : SB_STORE_E_IO;
        if (e == EWOULDBLOCK)
            snprintf(err, errlen,
                     "the persistence directory %s is in use by another live client (process %s): "
                     "one directory per client; close that client or give this one its own directory",
                     s->dir, pid[0] ? pid : "unknown");
        else
            snprintf(err, errlen, "cannot lock %s: %s", path, strerror(e));
        return -1;
    }
    n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(s->lock_fd, 0) < 0 || pwrite(s->lock_fd, pid, (size_t)n, 0) != n) {
        /* the pid is only for the message above; the lock holds regardless */
    }
    return 0;
}

/* Read the whole file (NULL, *len 0 if it does not exist). */
static int
read_file(const char *path, unsigned char **out, size_t *len)
{
    struct stat st;
    unsigned char *p;
    size_t got = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    *out = NULL;
    *len = 0;
    if (fd < 0)
        return errno == ENOENT ? 0 : -1;
    if (fstat(fd, &st) < 0 || (p = malloc((size_t)st.st_size + 1)) == NULL) {
        close(fd);
        return -1;
    }
    while (got < (size_t)st.st_size) {
        ssize_t r = read(fd, p + got, (size_t)st.st_size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    *out = p;
    *len = got;
    return 0;
}

/* Is there a good record at pos?  Its total size, or 0. */
static size_t
good_record_at(const unsigned char *p, size_t n, size_t pos, record *r)
{
    uint32_t len;
    if (n - pos < REC_HEADER || get32(p + pos) != REC_MAGIC)
        return 0;
    len = get32(p + pos + 4);
    if (len == 0 || len > REC_MAX_BODY || len > n - pos - REC_HEADER)
        return 0;
    if (crc_of(p + pos + REC_HEADER, len) != get32(p + pos + 8) ||
        parse_body(p + pos + REC_HEADER, len, r) < 0)
        return 0;
    return REC_HEADER + len;
}

/* Replay the records after the header; damaged spans are skipped to the
 * next good record and counted.  0, or -1 out of memory. */
static int
replay(sb_store *s, const unsigned char *p, size_t n, size_t pos, sb_store_report *rep)
{
    record r;
    while (pos < n) {
        size_t size = good_record_at(p, n, pos, &r), next;
        if (size > 0) {
            if (apply(s, &r, pos, (uint32_t)size) < 0)
                return -1;
            rep->records++;
            pos += size;
            continue;
        }
        /* damaged: look for the next good record */
        for (next = pos + 1; next < n; next++)
            if (p[next] == (REC_MAGIC & 0xff) && good_record_at(p, n, next, &r) > 0)
                break;
        rep->damaged_bytes += next - pos;
        rep->damaged_spans++;
        if (next >= n)
            rep->torn_tail = 1;
        pos = next;
    }
    return 0;
}

/* Check the header; its size, or 0 with err filled. */
static size_t
check_header(sb_store *s, const unsigned char *p, size_t n, int *kind, char *err, size_t errlen)
{
    uint32_t idlen;
    if (n < 20 || memcmp(p, FILE_MAGIC, 8) != 0) {
        *kind = SB_STORE_E_FORMAT;
        snprintf(err, errlen, "%s is not a sermas_bus outbox store: move it away or pick another directory",
                 s->path);
        return 0;
    }
    idlen = get32(p + 12);
    if (get32(p + 8) != FILE_VERSION || idlen > n - 20 ||
        get32(p + 16 + idlen) != crc_of(p, 16 + (size_t)idlen)) {
        *kind = SB_STORE_E_FORMAT;
        snprintf(err, errlen,
                 "%s has a damaged header or a newer format (version %u): open it with the "
                 "sermas_bus that wrote it, or move it away",
                 s->path, (unsigned)get32(p + 8));
        return 0;
    }
    if (idlen != strlen(s->client_id) || memcmp(p + 16, s->client_id, idlen) != 0) {
        *kind = SB_STORE_E_CLIENT;
        snprintf(err, errlen,
                 "the persistence directory %s holds the outbox of client id '%.*s', not '%s': "
                 "use that client id, or another directory",
                 s->dir, (int)(idlen > 200 ? 200 : idlen), (const char *)p + 16, s->client_id);
        return 0;
    }
    return 20 + idlen;
}

/* Keep a damaged log for inspection under a name of its own. */
static void
keep_damaged(sb_store *s, sb_store_report *rep)
{
    char *name = rep->damaged_copy;
    size_t size = sizeof rep->damaged_copy;
    time_t now = time(NULL);
    struct tm tm;
    int n;
    gmtime_r(&now, &tm);
    n = snprintf(name, size, "%s/outbox.damaged-%04d%02d%02d-%02d%02d%02d-%ld.log", s->dir,
                 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                 (long)getpid());
    /* a second name for the damaged file: the log itself stays until the
     * rewritten one replaces it (an open that fails later loses nothing) */
    if (n < 0 || (size_t)n >= size || link(s->path, name) != 0)
        name[0] = '\0';   /* not kept (the report says so); the good records are recovered */
}

static void
store_free(sb_store *s)
{
    if (s == NULL)
        return;
    if (s->fd >= 0)
        close(s->fd);
    if (s->lock_fd >= 0)
        close(s->lock_fd);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->sync_cv);
    free(s->tab);
    free(s->buf);
    free(s->image);
    free(s->dir);
    free(s->path);
    free(s->client_id);
    free(s);
}

sb_store *
sb_store_open(const char *dir, const char *client_id, int sync, uint64_t max_bytes,
              sb_store_report *rep, int *kind, char *err, size_t errlen)
{
    sb_store *s = calloc(1, sizeof *s);
    unsigned char *old = NULL;
    size_t old_len = 0, start;

    memset(rep, 0, sizeof *rep);
    *kind = SB_STORE_E_NOMEM;
    snprintf(err, errlen, "out of memory opening the outbox store");
    if (s == NULL)
        return NULL;
    s->fd = s->lock_fd = -1;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->sync_cv, NULL);
    s->sync = sync;
    s->max_bytes = max_bytes;
    s->dir = strdup(dir);
    s->client_id = strdup(client_id);
    s->path = malloc(strlen(dir) + sizeof "/outbox.log");
    if (s->dir == NULL || s->client_id == NULL || s->path == NULL)
        goto fail;
    sprintf(s->path, "%s/outbox.log", dir);
    if (mkdirs(dir) < 0) {
        *kind = SB_STORE_E_IO;
        snprintf(err, errlen, "cannot create the persistence directory %s: %s", dir, strerror(errno));
        goto fail;
    }
    if (take_lock(s, kind, err, errlen) < 0)
        goto fail;
    if (read_file(s->path, &old, &old_len) < 0) {
        *kind = SB_STORE_E_IO;
        snprintf(err, errlen, "cannot read %s: %s", s->path, strerror(errno));
        goto fail;
    }
    if (old_len > 0) {
        if ((start = check_header(s, old, old_len, kind, err, errlen)) == 0)
            goto fail;
        if (replay(s, old, old_len, start, rep) < 0) {
            *kind = SB_STORE_E_NOMEM;
            snprintf(err, errlen, "out of memory reading %s", s->path);
            goto fail;
        }
    }
    rep->messages = s->messages;
    rep->paho_records = s->used - s->messages;
    if (rep->damaged_bytes > 0)
        keep_damaged(s, rep);
    if (compact_locked(s, old, 1, err, errlen) < 0) {
        *kind = SB_STORE_E_IO;
        goto fail;
    }
    free(old);
    *kind = SB_STORE_OK;
    err[0] = '\0';
    return s;
fail:
    free(old);
    store_free(s);
    return NULL;
}

void
sb_store_close(sb_store *s)
{
    if (s == NULL)
        return;
    pthread_mutex_lock(&s->mu);
    while (s->syncing)
        pthread_cond_wait(&s->sync_cv, &s->mu);
    write_buffer_locked(s);
    pthread_mutex_unlock(&s->mu);
    if (s->lock_fd >= 0)
        flock(s->lock_fd, LOCK_UN);
    store_free(s);
}

void
sb_store_forget(sb_store *s)
{
    if (s == NULL)
        return;
    /* the parent's lock and log: close our copies of the descriptors only */
    store_free(s);
}

/* ---- the restored messages ---------------------------------------------------- */

static int
by_seq(const void *a, const void *b)
{
    uint64_t x = (*(entry *const *)a)->seq, y = (*(entry *const *)b)->seq;
    return x < y ? -1 : x > y;
}

int
sb_store_each_message(sb_store *s, sb_store_msg_fn fn, void *ctx)
{
    entry **msgs = NULL;
    size_t i, n = 0;
    int rc = 0;
    char key[KEY_MAX + 1];

    pthread_mutex_lock(&s->mu);
    if (s->image == NULL || s->messages == 0)
        goto done;
    if ((msgs = malloc(s->messages * sizeof *msgs)) == NULL) {
        rc = -1;
        goto done;
    }
    for (i = 0; i < s->cap; i++)
        if (s->tab[i].state == 1 && s->tab[i].key[0] == '#') {
            s->tab[i].token = 0;
            msgs[n++] = &s->tab[i];
        }
    /* which messages paho holds in flight: its linked "s-<id>" records */
    for (i = 0; i < s->cap; i++) {
        entry *e = &s->tab[i], *m;
        if (e->state != 1 || e->link == 0 || !is_sent_key(e->key))
            continue;
        message_key(key, e->link);
        if ((m = find(s, key)) != NULL)
            m->token = atoi(strchr(e->key, '-') + 1);
    }
    if (n > 1)
        qsort(msgs, n, sizeof *msgs, by_seq);
    for (i = 0; i < n && rc == 0; i++) {
        record r;
        sb_store_msg m;
        const unsigned char *p = s->image + msgs[i]->off;
        if (parse_body(p + REC_HEADER, msgs[i]->len - REC_HEADER, &r) < 0)
            continue;   /* cannot happen: it was checked when read */
        m.seq = r.seq;
        m.qos = r.qos;
        m.retain = r.retain;
        m.token = msgs[i]->token;
        m.topic = (const char *)r.topic;
        m.topic_len = r.topic_len;
        m.payload = r.payload;
        m.len = r.len;
        m.props = r.props;
        m.props_len = r.props_len;
        rc = fn(ctx, &m);
    }
done:
    free(msgs);
    free(s->image);
    s->image = NULL;
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* ---- what the client writes ------------------------------------------------------- */

int
sb_store_accept(sb_store *s, uint64_t seq, int qos, int retain, const char *topic,
                uint32_t topic_len, const void *payload, uint32_t len,
                const unsigned char *props, uint32_t props_len)
{
    unsigned char head[23];
    const void *parts[4];
    size_t lens[4];
    uint64_t need = REC_HEADER + 23ull + topic_len + len + props_len;
    int rc = SB_STORE_OK;

    head[0] = REC_ACCEPT;
    put64(head + 1, seq);
    head[9] = (unsigned char)qos;
    head[10] = (unsigned char)(retain != 0);
    put32(head + 11, topic_len);
    put32(head + 15, len);
    put32(head + 19, props_len);
    parts[0] = head;
    lens[0] = sizeof head;
    parts[1] = topic;
    lens[1] = topic_len;
    parts[2] = payload;
    lens[2] = len;
    parts[3] = props;
    lens[3] = props_len;
    pthread_mutex_lock(&s->mu);
    if (s->io_error)
        rc = SB_STORE_E_IO;
    else if (s->max_bytes > 0 && s->live_bytes + need > s->max_bytes)
        rc = SB_STORE_E_FULL;
    else if (append_locked(s, parts, lens, 4) < 0)
        rc = SB_STORE_E_NOMEM;
    pthread_mutex_unlock(&s->mu);
    return rc;
}

void
sb_store_done(sb_store *s, uint64_t seq)
{
    unsigned char body[9];
    const void *parts[1] = {body};
    size_t lens[1] = {sizeof body};
    body[0] = REC_DONE;
    put64(body + 1, seq);
    pthread_mutex_lock(&s->mu);
    /* out of memory: the message is sent again after a restart (a
     * duplicate, never a loss) */
    (void)append_locked(s, parts, lens, 1);
    pthread_mutex_unlock(&s->mu);
}

int
sb_store_commit(sb_store *s, char *err, size_t errlen)
{
    int rc = SB_STORE_OK;
    pthread_mutex_lock(&s->mu);
    if (write_buffer_locked(s) < 0) {
        snprintf(err, errlen, "%s", s->io_text);
        pthread_mutex_unlock(&s->mu);
        return SB_STORE_E_IO;
    }
    if (s->sync == SB_STORE_SYNC_FSYNC) {
        /* group commit: one thread syncs what all have written; the others
         * wait for it, or sync again if their bytes came after its start */
        uint64_t mine = s->written, epoch = s->epoch;
        /* a compaction meanwhile synced everything into a new log */
        while (s->epoch == epoch && s->synced < mine && !s->io_error) {
            if (s->syncing) {
                pthread_cond_wait(&s->sync_cv, &s->mu);
                continue;
            }
            {
                uint64_t upto = s->written;
                int fd = s->fd, r;
                s->syncing = 1;
                pthread_mutex_unlock(&s->mu);
                r = fdatasync(fd);
                pthread_mutex_lock(&s->mu);
                s->syncing = 0;
                s->syncs++;
                if (r < 0)
                    set_io_error_locked(s, "fdatasync", errno);
                else if (s->epoch == epoch && upto > s->synced)
                    s->synced = upto;
                pthread_cond_broadcast(&s->sync_cv);
            }
        }
        if (s->io_error) {
            snprintf(err, errlen, "%s", s->io_text);
            rc = SB_STORE_E_IO;
        }
    }
    if (rc == SB_STORE_OK)
        maybe_compact_locked(s, 0);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

static __thread sb_store *tl_store;
static __thread uint64_t tl_seq;

void
sb_store_publishing(sb_store *s, uint64_t seq)
{
    tl_store = seq ? s : NULL;
    tl_seq = seq;
}

/* One keyed record (DEL or DROP), written through.  Caller holds mu. */
static int
forget_key_locked(sb_store *s, int type, const char *key)
{
    unsigned char body[2 + KEY_MAX];
    size_t k = strlen(key);
    const void *parts[1] = {body};
    size_t lens[1] = {2 + k};
    body[0] = (unsigned char)type;
    body[1] = (unsigned char)k;
    memcpy(body + 2, key, k);
    if (append_locked(s, parts, lens, 1) < 0)
        return -1;
    return write_buffer_locked(s);
}

void
sb_store_keep_version(sb_store *s, int mqtt5)
{
    size_t i;
    pthread_mutex_lock(&s->mu);
    for (i = 0; i < s->cap; i++) {
        entry *e = &s->tab[i];
        if (e->state == 1 && e->key[0] != '#' && is_v5_key(e->key) != (mqtt5 != 0)) {
            char key[KEY_MAX + 1];
            memcpy(key, e->key, sizeof key);
            if (forget_key_locked(s, REC_DROP, key) < 0 && find(s, key) != NULL)
                erase(s, find(s, key));   /* out of memory: forget it here at least */
            i = (size_t)-1;              /* the table may have been rehashed: start over */
        }
    }
    pthread_mutex_unlock(&s->mu);
}

uint64_t
sb_store_max_seq(sb_store *s)
{
    uint64_t v;
    pthread_mutex_lock(&s->mu);
    v = s->max_seq;
    pthread_mutex_unlock(&s->mu);
    return v;
}

void
sb_store_get_stats(sb_store *s, sb_store_stats *st)
{
    pthread_mutex_lock(&s->mu);
    st->file_bytes = s->end;
    st->live_bytes = s->live_bytes;
    st->max_bytes = s->max_bytes;
    st->messages = s->messages;
    st->compactions = s->compactions;
    st->writes = s->writes;
    st->syncs = s->syncs;
    pthread_mutex_unlock(&s->mu);
}

/* ---- paho.mqtt.c's persistence interface ---------------------------------------- *
 * Called by paho with its own mutex held, on its threads or a publisher's.
 * Every change is written through to the OS before paho goes on (it sends
 * the packet after its record is stored), together with what was buffered. */

static int
p_open(void **handle, const char *client_id, const char *server_uri, void *context)
{
    (void)client_id;
    (void)server_uri;
    *handle = context;
    return 0;
}

static int
p_close(void *handle)
{
    sb_store *s = handle;
    pthread_mutex_lock(&s->mu);
    write_buffer_locked(s);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

static int
valid_paho_key(const char *key)
{
    size_t n = key ? strlen(key) : 0;
    return n > 0 && n <= KEY_MAX && key[0] != '#';
}

static int
p_put(void *handle, char *key, int bufcount, char *buffers[], int buflens[])
{
    sb_store *s = handle;
    unsigned char head[10 + KEY_MAX];
    const void *parts[1 + 64];
    size_t lens[1 + 64], k;
    int i, n = 1, rc = 0;
    if (!valid_paho_key(key) || bufcount < 0 || bufcount > 64)
        return MQTTCLIENT_PERSISTENCE_ERROR;
    k = strlen(key);
    head[0] = REC_PUT;
    put64(head + 1, tl_store == s && is_sent_key(key) ? tl_seq : 0);
    head[9] = (unsigned char)k;
    memcpy(head + 10, key, k);
    parts[0] = head;
    lens[0] = 10 + k;
    for (i = 0; i < bufcount; i++) {
        if (buflens[i] < 0)
            return MQTTCLIENT_PERSISTENCE_ERROR;
        parts[n] = buffers[i];
        lens[n++] = (size_t)buflens[i];
    }
    pthread_mutex_lock(&s->mu);
    if (append_locked(s, parts, lens, n) < 0 || write_buffer_locked(s) < 0)
        rc = MQTTCLIENT_PERSISTENCE_ERROR;
    else
        maybe_compact_locked(s, 1);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

static int
p_get(void *handle, char *key, char **buffer, int *buflen)
{
    sb_store *s = handle;
    entry *e;
    unsigned char *rec = NULL;
    record r;
    int rc = MQTTCLIENT_PERSISTENCE_ERROR;

    *buffer = NULL;
    *buflen = 0;
    if (!valid_paho_key(key))
        return rc;
    pthread_mutex_lock(&s->mu);
    if ((e = find(s, key)) == NULL || write_buffer_locked(s) < 0 || (rec = malloc(e->len)) == NULL)
        goto done;
    if (pread(s->fd, rec, e->len, (off_t)e->off) != (ssize_t)e->len ||
        parse_body(rec + REC_HEADER, e->len - REC_HEADER, &r) < 0 || r.type != REC_PUT)
        goto done;
    if ((*buffer = malloc(r.value_len ? r.value_len : 1)) == NULL)
        goto done;
    memcpy(*buffer, r.value, r.value_len);
    *buflen = (int)r.value_len;
    rc = 0;
done:
    pthread_mutex_unlock(&s->mu);
    free(rec);
    return rc;
}

static int
p_remove(void *handle, char *key)
{
    sb_store *s = handle;
    int rc = 0;
    if (!valid_paho_key(key))
        return MQTTCLIENT_PERSISTENCE_ERROR;
    pthread_mutex_lock(&s->mu);
    /* paho removes every variant of a key it may have written: only the
     * existing one costs a record */
    if (find(s, key) != NULL && forget_key_locked(s, REC_DEL, key) < 0)
        rc = MQTTCLIENT_PERSISTENCE_ERROR;
    pthread_mutex_unlock(&s->mu);
    return rc;
}

static int
p_keys(void *handle, char ***keys, int *nkeys)
{
    sb_store *s = handle;
    size_t i, n = 0;
    char **out = NULL;
    int rc = 0;
    *keys = NULL;
    *nkeys = 0;
    pthread_mutex_lock(&s->mu);
    if (s->used > s->messages && (out = malloc((s->used - s->messages) * sizeof *out)) == NULL)
        rc = MQTTCLIENT_PERSISTENCE_ERROR;
    for (i = 0; out != NULL && i < s->cap; i++)
        if (s->tab[i].state == 1 && s->tab[i].key[0] != '#') {
            if ((out[n] = strdup(s->tab[i].key)) == NULL) {
                rc = MQTTCLIENT_PERSISTENCE_ERROR;
                break;
            }
            n++;
        }
    pthread_mutex_unlock(&s->mu);
    if (rc != 0) {
        while (n > 0)
            free(out[--n]);
        free(out);
        return rc;
    }
    *keys = out;
    *nkeys = (int)n;
    return 0;
}

static int
p_clear(void *handle)
{
    sb_store *s = handle;
    unsigned char body = REC_CLEAR;
    const void *parts[1] = {&body};
    size_t lens[1] = {1};
    int rc = 0;
    pthread_mutex_lock(&s->mu);
    if (s->used > s->messages && (append_locked(s, parts, lens, 1) < 0 || write_buffer_locked(s) < 0))
        rc = MQTTCLIENT_PERSISTENCE_ERROR;
    pthread_mutex_unlock(&s->mu);
    return rc;
}

static int
p_containskey(void *handle, char *key)
{
    sb_store *s = handle;
    int found;
    if (!valid_paho_key(key))
        return MQTTCLIENT_PERSISTENCE_ERROR;
    pthread_mutex_lock(&s->mu);
    found = find(s, key) != NULL;
    pthread_mutex_unlock(&s->mu);
    return found ? 0 : MQTTCLIENT_PERSISTENCE_ERROR;
}

void
sb_store_paho_interface(sb_store *s, MQTTClient_persistence *p)
{
    p->context = s;
    p->popen = p_open;
    p->pclose = p_close;
    p->pput = p_put;
    p->pget = p_get;
    p->premove = p_remove;
    p->pkeys = p_keys;
    p->pclear = p_clear;
    p->pcontainskey = p_containskey;
}
