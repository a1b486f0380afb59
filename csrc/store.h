/*
 * store.h - the durable outbox: an append-only log in a directory.
 *
 * Plain C (no Python, no paho library calls): store.c is linked into the
 * extension and, alone, into the recovery fuzzer (fuzz/fuzz_store.c).
 *
 * What the log holds, as records appended in order:
 *   ACCEPT  a message publish() accepted (seq, QoS, retain, topic, payload,
 *           packed MQTT 5 properties);
 *   DONE    a message settled without paho (refused), by seq;
 *   PUT / DEL / DROP / CLEAR  paho.mqtt.c's own persistence records (its
 *           MQTTClient_persistence interface is implemented here): a PUBLISH
 *           in flight ("s-<id>"), a PUBREL ("sc-<id>"), an inbound QoS 2
 *           PUBLISH ("r-<id>"), v5 variants with "5".  A PUT of a publish
 *           made while a thread announced sb_store_publishing(seq) carries
 *           that seq (the link); paho deleting a linked "s-" record means
 *           the broker completed that message, so the ACCEPT is settled in
 *           the same record -- no second write per message.
 * Replaying the records (the same function at run time and at open) gives
 * the live set: messages not settled, paho's records not deleted.
 *
 * Each record: magic, body length, CRC-32 of the body, body.  Open scans
 * the log, skips damaged spans (a torn tail after a crash, corruption
 * inside) to the next good record, reports what it skipped, keeps a copy
 * of a damaged file, and rewrites the live records into a fresh log.
 * The log is compacted the same way when it grows well past its live size.
 *
 * Locking: one mutex per store; paho calls the interface from its threads
 * and from publishers, never with our client mutex held by the same thread
 * out of order (order: paho's mutex, then the client's mu, then the store's).
 */
#ifndef SB_STORE_H
#define SB_STORE_H

#include <stddef.h>
#include <stdint.h>

#include <MQTTClientPersistence.h>

typedef struct sb_store sb_store;

enum sb_store_sync {
    SB_STORE_SYNC_WRITE = 0,   /* written to the OS before publish returns */
    SB_STORE_SYNC_FSYNC = 1,   /* fdatasync'ed before publish returns (group commit) */
};

enum sb_store_error {
    SB_STORE_OK = 0,
    SB_STORE_E_IO = 1,         /* an OS call failed (errno kept in the text) */
    SB_STORE_E_LOCKED = 2,     /* another live client holds the directory */
    SB_STORE_E_CLIENT = 3,     /* the store belongs to another client id */
    SB_STORE_E_FORMAT = 4,     /* not a store of ours, or a newer format */
    SB_STORE_E_FULL = 5,       /* max_bytes of live records reached */
    SB_STORE_E_NOMEM = 6,
};

/* What open found. */
typedef struct {
    uint64_t records;          /* good records read */
    uint64_t messages;         /* accepted messages not yet delivered */
    uint64_t paho_records;     /* paho's in-flight records */
    uint64_t damaged_bytes;    /* bytes skipped (torn tail, corruption) */
    uint64_t damaged_spans;
    int torn_tail;             /* the log ended inside a record */
    char damaged_copy[4096];   /* where the damaged file was kept, "" if not */
} sb_store_report;

/* One restored message (valid during sb_store_each_message's callback). */
typedef struct {
    uint64_t seq;
    int qos, retain;
    int token;                 /* paho's message id holding it in flight, or 0 */
    const char *topic;
    uint32_t topic_len;
    const void *payload;
    uint32_t len;
    const unsigned char *props;   /* packed (sb_props_pack), props_len bytes */
    uint32_t props_len;
} sb_store_msg;

/* Open or create the store in dir for client_id.  NULL on failure, with the
 * kind in *kind and a sentence (what, why, what to do) in err. */
sb_store *sb_store_open(const char *dir, const char *client_id, int sync, uint64_t max_bytes,
                        sb_store_report *report, int *kind, char *err, size_t errlen);
/* Write what is buffered, release the lock, free.  NULL is fine. */
void sb_store_close(sb_store *s);
/* After fork: free without writing or unlocking (the parent owns the files). */
void sb_store_forget(sb_store *s);

/* The restored messages, in publish order; once, right after open.
 * fn returns 0 to go on; its non-zero ends the walk and is returned. */
typedef int (*sb_store_msg_fn)(void *ctx, const sb_store_msg *m);
int sb_store_each_message(sb_store *s, sb_store_msg_fn fn, void *ctx);

/* Accept a message (buffered until the next write).  SB_STORE_E_FULL when
 * it does not fit in max_bytes, SB_STORE_E_IO after an earlier write error. */
int sb_store_accept(sb_store *s, uint64_t seq, int qos, int retain, const char *topic,
                    uint32_t topic_len, const void *payload, uint32_t len,
                    const unsigned char *props, uint32_t props_len);
/* A message settled without paho's record (refused): buffered. */
void sb_store_done(sb_store *s, uint64_t seq);
/* Make everything appended so far durable as the sync mode says: written
 * to the OS, or fdatasync'ed (threads committing together share one
 * fdatasync).  0, or SB_STORE_E_IO with the text in err. */
int sb_store_commit(sb_store *s, char *err, size_t errlen);

/* This thread is about to hand message seq to paho (0: done with it): the
 * "s-" record paho writes meanwhile is linked to it. */
void sb_store_publishing(sb_store *s, uint64_t seq);
/* Before creating a paho handle for this MQTT version: paho's records of the
 * other version are dropped (paho cannot restore them; their messages stay
 * accepted and are sent again). */
void sb_store_keep_version(sb_store *s, int mqtt5);
/* The highest message seq the log names (accepted, settled or linked): a
 * restarted client numbers new messages after it, never reusing one. */
uint64_t sb_store_max_seq(sb_store *s);
/* Fill paho's persistence interface for this store. */
void sb_store_paho_interface(sb_store *s, MQTTClient_persistence *p);

typedef struct {
    uint64_t file_bytes, live_bytes, max_bytes, messages, compactions, writes, syncs;
} sb_store_stats;
void sb_store_get_stats(sb_store *s, sb_store_stats *st);

#endif
