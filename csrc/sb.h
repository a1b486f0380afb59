/*
 * sb.h - shared declarations of the sermas_bus._core extension.
 *
 * Layout (one concern per file):
 *   module.c      module init, module state, exception types, constants
 *   client.c      the Connection type: Python-facing methods (do_* functions)
 *   callbacks.c   everything that runs on paho.mqtt.c's own threads (never Python)
 *   queue.c       the bounded inbound event queue shared by both sides
 *   message.c     the MQTTMessage type handed to user callbacks
 *   info.c        the PublishInfo type publish() returns
 *   properties.c  MQTT 5 properties <-> Python (identifier, value) pairs
 *   errors.c      paho return codes and CONNACK reasons -> exceptions
 *   sockopt.c     TCP_NODELAY on paho's socket (paho has no option for it)
 *   outbox.c      publishes until acknowledged: records, queue, flusher thread
 *   outbox_store.c the outbox made durable: open_store, restore, packed properties
 *   store.c       the durable log and paho's persistence interface (plain C, store.h)
 *   keeper.c      keeps paho's receive thread alive and wakes it during connects
 *   json.c        JSON encoder/decoder for event payloads (GIL held throughout)
 *   segmap.c      hash map from one topic level to a trie node (pure C)
 *   topics.c      TopicTable: SERMAS topic templates, render and route;
 *                 sb_topics_init registers it and FilterTrie in module state
 *   filtertrie.c  FilterTrie: MQTT subscription filters -> Python values
 *
 * Threading rules (see docs/threading.md):
 *   - every MQTTClient_* call is made with the GIL released;
 *   - paho's threads only ever take sb_client.mu, never the GIL;
 *   - sb_client.mu is never held while calling into paho (paho calls our
 *     callbacks while holding its own global mutex: holding ours while
 *     calling paho would invert the lock order).
 */
#ifndef SB_H
#define SB_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <MQTTClient.h>

#include "compat.h"
#include "store.h"

/* ---- module state ------------------------------------------------------ */

#define SB_JSON_MAX_DEPTH 1000   /* nested containers, both directions */
#define SB_JSON_KEY_CACHE 512    /* decoder's object-key cache slots (power of 2) */

/* json.c's part of the module state */
typedef struct {
    PyObject *str;                   /* an ASCII str key, hashed */
    uint64_t hash;                   /* json.c's hash of its bytes (picks the slot) */
} sb_json_key;

typedef struct {
    PyObject *DecodeError;           /* JSONDecodeError(SermasBusError, ValueError) */
    PyObject *datetime_type, *date_type, *timedelta_type, *utc, *enum_type;
    PyObject *dc_field_marker;       /* dataclasses._FIELD, on the first dataclass */
    PyObject *dc_cache;              /* type -> (__dataclass_fields__, field names) */
    PyObject *str_value_, *str_dc_fields, *str_field_type, *str_name;
    PyObject *str_utcoffset, *str_isoformat;
    sb_json_key keys[SB_JSON_KEY_CACHE];  /* decoder's key cache; used with the GIL held */
} sb_json_state;

typedef struct {
    PyTypeObject *ConnectionType;
    PyTypeObject *MessageType;
    PyTypeObject *InfoType;          /* PublishInfo */
    PyTypeObject *InfoSubtype;       /* MQTTMessageInfo, registered by Python */
    PyObject *rc_lookup;             /* {int: MQTTErrorCode member}, registered by Python */
    PyTypeObject *TopicTableType;
    PyTypeObject *FilterTrieType;
    PyObject *Error;                 /* SermasBusError */
    PyObject *ConnectError;          /* connection could not be established */
    PyObject *NotAuthorizedError;    /* CONNACK: bad credentials / not authorised */
    PyObject *TLSError;              /* TLS handshake or certificate failure */
    PyObject *ProtocolVersionError;  /* broker refused the MQTT protocol version */
    PyObject *ConnectionLostError;   /* operation cut short by a lost connection */
    PyObject *NotConnectedError;     /* operation needs a connection */
    PyObject *TimeoutError;          /* an operation did not finish in time */
    PyObject *ProtocolError;         /* option not expressible in the protocol in use */
    PyObject *PublishError;          /* broker refused a publish (MQTT 5 reason) */
    PyObject *SubscribeError;        /* subscribe/unsubscribe failed */
    PyObject *ForkError;             /* client used in a forked child */
    PyObject *ClosedError;           /* client already closed */
    PyObject *PersistenceError;      /* the outbox store failed (also OSError) */
    PyObject *PersistenceLockedError;/* the directory is another live client's */
    PyObject *PersistenceFullError;  /* the store reached its max_bytes */
    PyObject *properties_factory;    /* callable(packet_type, pairs) set by Python */
    sb_json_state json;
} sb_state;

sb_state *sb_get_state_by_type(PyTypeObject *tp);

/* ---- inbound events -------------------------------------------------- */

enum sb_event_kind {
    SB_EV_MESSAGE = 1,    /* a PUBLISH from the broker */
    SB_EV_PUBLISHED,      /* an outgoing publish completed (for on_publish) */
    SB_EV_LOST,           /* the connection was lost */
    SB_EV_USER            /* an object posted by Python (wake-ups, local events) */
};

typedef struct sb_event {
    struct sb_event *next;
    int kind;
    /* SB_EV_MESSAGE: paho owns nothing once we return 1; we own these */
    MQTTClient_message *msg;
    char *topic;
    int topic_len;
    double timestamp;        /* CLOCK_MONOTONIC seconds at arrival */
    /* SB_EV_PUBLISHED: our mid and the broker's reason code */
    int mid;
    int reason;
    /* SB_EV_USER: a strong reference, created and consumed with the GIL held */
    PyObject *obj;
} sb_event;

/* ---- the outbox: every publish the client must still deliver ------------- */

/* A record's state.  The first four are also what wait_published() reports
 * (QUEUED and PENDING both read as "pending" from Python). */
enum sb_slot_state { SB_PUB_FREE = 0, SB_PUB_PENDING, SB_PUB_DONE, SB_PUB_FAILED, SB_PUB_LOST,
                     SB_PUB_QUEUED };

/* One accepted publish (QoS>0 always; QoS 0 only while queued), with its own
 * copy of topic and payload so that it can be sent again after a reconnect.
 * Owned by the outbox while QUEUED or PENDING, and by each PublishInfo that
 * refers to it; freed when the last owner lets go.  Guarded by the client's
 * mu; never touches Python (paho's threads complete records). */
typedef struct sb_out {
    struct sb_out *next;        /* queue link while QUEUED */
    uint64_t seq;               /* publish order */
    int mid;                    /* our message id, what the user sees */
    int token;                  /* paho's message id while PENDING, else 0 */
    int refs;
    unsigned char qos, retain, state, reason;
    int has_props;
    MQTTProperties props;       /* MQTT 5 properties (paho-allocated copy) */
    int topic_len, len;
    char *topic, *payload;      /* inside this allocation */
} sb_out;

/* One slot per paho message id (1..65535): the record paho is delivering
 * under that id.  A completion that beats the publisher to its slot (paho
 * can read the PUBACK before MQTTClient_publish returns) is noted in early. */
typedef struct {
    sb_out *out;
    unsigned char early, early_reason;
} sb_slot;

#define SB_SLOTS 65536

/* ---- the Connection object ---------------------------------------------- */

typedef struct {
    PyObject_HEAD
    MQTTClient handle;          /* NULL until the first connect; owned */
    pid_t owner_pid;            /* the process that created the handle */
    int mqtt_version;           /* version the handle was created for */
    char *client_id;            /* PyMem_Raw copy, for re-creating the handle */
    char *first_uri;
    int nodelay;                /* set TCP_NODELAY on the broker socket at connect */
    int sock_fd;                /* paho's broker socket, -1 if unknown (a hint only) */
    unsigned pubs_since_poll;   /* publishes since the last writability check */

    /* Everything below is shared with paho's threads and guarded by mu. */
    pthread_mutex_t mu;
    pthread_cond_t ev_cv;       /* consumer waits for events */
    pthread_cond_t space_cv;    /* paho's receive thread waits for queue room */
    pthread_cond_t pub_cv;      /* wait_published() waiters */
    pthread_cond_t win_cv;      /* publishers waiting for window room */
    int window_waiters;
    int pub_waiters;
    sb_event *head, *tail;
    Py_ssize_t qlen;            /* SB_EV_MESSAGE events queued */
    Py_ssize_t qmax;            /* bound on qlen (back-pressure beyond it) */
    int blocking;               /* threads blocked on the broker: never make paho wait */
    int closing;
    int outbox_closed;          /* close() gave every record up (LOST): waiters may return */
    int recreating;             /* connect() is replacing the handle */
    int handle_users;           /* threads inside a paho call with the handle */
    int connecting;             /* threads inside paho's connect */
    int connected;
    int consumer_waiting;
    volatile unsigned interrupts; /* bumped by interrupt(): pump() returns early */
    int spin_us;                /* consumer polls this long before sleeping */
    int dispatching;            /* >0 while pump() runs callbacks */
    double consumer_seen;       /* last time a consumer waited in or left pump() */
    int efd;                    /* eventfd: readable while the queue is non-empty */
    int efd_armed;
    unsigned inflight, window;
    uint64_t pub_seq;
    int next_mid;
    int want_published;         /* queue SB_EV_PUBLISHED events (on_publish set) */
    sb_slot *slots;
    /* the outbox (outbox.c) */
    sb_out *q_head, *q_tail;    /* QUEUED records, in publish order */
    Py_ssize_t ob_count;        /* records QUEUED or PENDING */
    Py_ssize_t ob_max;          /* bound on ob_count; 0: none (paho's max_queued_messages) */
    int queue_qos0;             /* queue QoS 0 publishes while disconnected too */
    int sending;                /* threads inside a paho publish call */
    int flush_busy;             /* the flusher holds a record it is sending */
    int flusher_started;
    pthread_t flusher;
    pthread_cond_t ob_cv;       /* the flusher waits for work */
    /* the durable store (outbox_store.c, store.c), NULL without persistence */
    sb_store *store;
    MQTTClient_persistence store_iface;   /* paho's view of it */
    int store_users;            /* publishers between accept and commit */
    /* subscribe/unsubscribe requests (request.c) */
    int requests;               /* request threads inside paho */
    pthread_cond_t req_cv;      /* an answer came, or the connection went */
    char tls_error[512];        /* last TLS error text from paho's ssl_error_cb */
    uint64_t messages_in, messages_dropped_on_close;
    uint64_t producer_waits;
    PyObject *weakreflist;
} sb_client;

/* queue.c */
int sb_queue_init(sb_client *c);
void sb_queue_push_locked(sb_client *c, sb_event *ev);
sb_event *sb_queue_take_locked(sb_client *c, Py_ssize_t max, Py_ssize_t *n_messages);
void sb_queue_requeue_front_locked(sb_client *c, sb_event *first, Py_ssize_t n_messages);
void sb_event_free(sb_event *ev);          /* needs the GIL for SB_EV_USER */
void sb_queue_clear(sb_client *c);         /* needs the GIL */
double sb_monotonic(void);
int sb_timed_wait(pthread_cond_t *cv, pthread_mutex_t *mu, double deadline);

/* callbacks.c: registered with paho; never touch Python */
int sb_cb_message_arrived(void *ctx, char *topic, int topic_len, MQTTClient_message *m);
void sb_cb_delivery_complete(void *ctx, MQTTClient_deliveryToken dt);
void sb_cb_connection_lost(void *ctx, char *cause);
void sb_cb_published(void *ctx, int dt, int packet_type, MQTTProperties *props,
                     enum MQTTReasonCodes rc);
int sb_cb_ssl_error(const char *str, size_t len, void *ctx);

int sb_blocked_threads(void);
void sb_dispatching_enter(void);                /* this thread runs callbacks */
void sb_dispatching_leave(void);
int sb_is_dispatching(void);
void sb_blocking_enter_locked(sb_client *c);   /* a thread waits on paho's receive thread */
void sb_blocking_leave_locked(sb_client *c);

/* outbox.c: records, the queue, the flusher thread, completion (no Python) */
sb_out *sb_out_new(const char *topic, Py_ssize_t topic_len, const void *payload, Py_ssize_t len,
                   int qos, int retain, const MQTTProperties *props);
void sb_out_release_locked(sb_out *o);
void sb_outbox_enqueue_locked(sb_client *c, sb_out *o);
void sb_outbox_sent_locked(sb_client *c, sb_out *o, int token);
void sb_outbox_complete_locked(sb_client *c, int token, int state, int reason);
void sb_outbox_after_connect_locked(sb_client *c, const int *held_tokens, int n_held);
void sb_outbox_close_locked(sb_client *c);
void sb_outbox_stop_flusher_nogil(sb_client *c);
int sb_outbox_idle_locked(const sb_client *c);
void sb_push_published_locked(sb_client *c, int mid, int reason);
int sb_paho_publish_nogil(sb_client *c, const char *topic, int len, const void *payload, int qos,
                          int retain, MQTTProperties *props, uint64_t seq, int *token);
void sb_outbox_settled_without_paho_locked(sb_client *c, sb_out *o);

/* outbox_store.c: the durable outbox */
PyObject *sb_conn_open_store(sb_client *self, PyObject *args, PyObject *kw);
void sb_outbox_store_close_nogil(sb_client *self);
void sb_outbox_store_forget(sb_client *self);
int sb_props_pack(const MQTTProperties *props, unsigned char **out, uint32_t *len);
int sb_props_unpack(const unsigned char *b, uint32_t len, MQTTProperties *props);

/* message.c */
extern PyType_Spec sb_message_spec;
PyObject *sb_message_from_event(sb_state *st, sb_event *ev);

/* info.c */
extern PyType_Spec sb_info_spec;
PyObject *sb_info_new(sb_state *st, int rc, int mid, sb_out *out, PyObject *conn, PyObject *topic);
int sb_info_record(sb_state *st, PyObject *info, PyObject *conn, sb_out **out);

/* properties.c */
int sb_props_from_pairs(PyObject *pairs, MQTTProperties *out);
PyObject *sb_props_to_pairs(const MQTTProperties *props);
PyObject *sb_props_to_object(sb_state *st, int packet_type, const MQTTProperties *props);

/* errors.c */
PyObject *sb_raise_rc(sb_state *st, const char *what, int rc);
PyObject *sb_raise_connect_failure(sb_state *st, const char *uris, int mqtt_version,
                                   int rc, int reason, const char *tls_error);
const char *sb_reason_text(int reason);

/* sockopt.c: paho's broker socket: TCP_NODELAY, writability (no GIL needed) */
unsigned char *sb_socket_fds_snapshot(int *nbits);
int sb_find_broker_socket(const unsigned char *before, int nbits, const char *server_uri, int nodelay);
void sb_wait_writable(int fd, int timeout_ms);

/* client.c: the Connection type, and what connect.c shares with it */
extern PyType_Spec sb_connection_spec;
char *sb_raw_strdup(const char *s, Py_ssize_t len);     /* PyMem_Raw copy, NUL-terminated */
char *sb_raw_utf8(PyObject *o, const char *what);       /* str -> raw UTF-8 copy, or exception */
void sb_free_str_array(char **a, Py_ssize_t n);
sb_state *sb_state_of(sb_client *self);
int sb_check_usable(sb_client *self, sb_state *st);     /* -1 with ForkError/ClosedError */
/* paho's handle lifetime: users bracket paho calls with acquire/release;
 * a destroyer sets closing or recreating, then drains */
int sb_handle_acquire_locked(sb_client *self);
void sb_handle_release_locked(sb_client *self);
void sb_handle_drain_nogil(sb_client *self);
void sb_destroy_handle_nogil(sb_client *self);

/* connect.c: one connect attempt (Connection.connect) */
PyObject *sb_conn_connect(sb_client *self, PyObject *args, PyObject *kw);

/* request.c: subscribe/unsubscribe, given up when the connection goes */
PyObject *sb_conn_subscribe(sb_client *self, PyObject *args);
PyObject *sb_conn_unsubscribe(sb_client *self, PyObject *args);
void sb_requests_drain_locked(sb_client *c);   /* connect waits for old requests */

/* json.c: adds json_dumps/json_loads and JSONDecodeError to the module */
int sb_json_exec(PyObject *mod, sb_state *st);
int sb_json_traverse(sb_state *st, visitproc visit, void *arg);
void sb_json_clear(sb_state *st);
/* ---- topic tries (no paho, GIL held by every caller) --------------------- */

/* segmap.c: one trie node's children, keyed by a topic level's bytes.
 * A slot is free when val == NULL; values are never NULL. */
typedef struct {
    uint64_t hash;
    char *key;              /* owned copy (PyMem_Raw) */
    size_t len;
    void *val;
} sb_segslot;

typedef struct {
    sb_segslot *slots;      /* NULL while empty */
    size_t mask;            /* capacity - 1 */
    size_t count;
} sb_segmap;

uint64_t sb_seghash(const char *k, size_t len);
void *sb_segmap_get(const sb_segmap *m, const char *k, size_t len);
int sb_segmap_reserve(sb_segmap *m, size_t extra);
int sb_segmap_put(sb_segmap *m, const char *k, size_t len, void *val);
void *sb_segmap_del(sb_segmap *m, const char *k, size_t len);
int sb_segmap_next(const sb_segmap *m, size_t *pos, const char **k, size_t *len, void **val);
void sb_segmap_free(sb_segmap *m);

/* topics.c: create TopicTable and FilterTrie, add them to the module and
 * keep them in state (called from module exec). */
int sb_topics_init(PyObject *mod, sb_state *st);

/* filtertrie.c */
extern PyType_Spec sb_filtertrie_spec;

/* A topic or filter argument (str or bytes) as UTF-8 bytes, borrowed from
 * the object (valid while it lives).  -1 with TypeError otherwise. */
int sb_topic_bytes(PyObject *o, const char *what, const char **s, Py_ssize_t *len);

/* The first control character (U+0001-U+001F, U+007F-U+009F) in UTF-8 text,
 * or -1.  MQTT says topics SHOULD NOT hold them; mosquitto drops a client
 * that sends one, so we refuse them with a clear error instead. */
long sb_topic_control_char(const char *s, Py_ssize_t len);

#endif /* SB_H */
