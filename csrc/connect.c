/*
 * connect.c - Connection.connect(): one MQTT connect attempt on paho's handle.
 *
 * The attempt has three stages, each its own function:
 *   1. with the GIL: turn the Python arguments into raw copies and paho's
 *      option structs (connect_request_parse and its helpers);
 *   2. without the GIL: (re)create the handle if needed, run paho's
 *      synchronous connect, take over what paho still holds of a resumed
 *      session (connect_run_nogil);
 *   3. with the GIL again: map the outcome to a result dict or an exception
 *      (connect_result).
 * Policy (fall-back, retries, fail-over order, restoring subscriptions)
 * belongs to the Python engine; this file does one attempt, fast.
 *
 * GIL discipline: paho's connect blocks on the network and calls our
 * callbacks under its own mutex, so every MQTTClient_* call here runs with
 * the GIL released; everything it reads was copied to raw memory first.
 */
#include "sb.h"
#include "keeper.h"

#include <string.h>

/* Raw copies of everything paho reads during the attempt. */
typedef struct {
    char **uris;
    Py_ssize_t n_uris;
    char *username;
    char *password;
    Py_ssize_t password_len;
    char *will_topic;
    char *will_payload;
    Py_ssize_t will_payload_len;
    char *tls_strings[6];     /* cafile, capath, certfile, keyfile, keypass, ciphers */
    MQTTClient_nameValue *headers;
    Py_ssize_t n_headers;
    unsigned char *alpn;      /* ALPN wire format (length-prefixed names) */
    Py_ssize_t alpn_len;
} connect_args;

/* One attempt's request: the copies and paho's option structs pointing at
 * them.  Lives on conn_connect's stack; never moved once filled. */
typedef struct {
    connect_args a;
    MQTTClient_connectOptions opts;
    MQTTClient_SSLOptions ssl;
    MQTTClient_willOptions will;
    MQTTProperties props, will_props;
    int version, max_inflight;
    char uri_list[600];       /* "uri1, uri2" for error messages */
} connect_request;

/* What the attempt gave, filled without the GIL. */
typedef struct {
    MQTTResponse resp;        /* MQTT 5: reason code and CONNACK properties */
    int create_rc;            /* creating the handle (or "closed meanwhile") */
    int rc;                   /* paho's connect rc / CONNACK code */
    int reason;               /* CONNACK reason, -1 if none came */
    int server_rm;            /* the broker's Receive Maximum */
    int session_present, returned_version, closed_meanwhile;
    char returned_uri[512];
} connect_outcome;

static void
connect_args_free(connect_args *a)
{
    int i;
    Py_ssize_t j;
    sb_free_str_array(a->uris, a->n_uris);
    PyMem_RawFree(a->username);
    PyMem_RawFree(a->password);
    PyMem_RawFree(a->will_topic);
    PyMem_RawFree(a->will_payload);
    for (i = 0; i < 6; i++)
        PyMem_RawFree(a->tls_strings[i]);
    PyMem_RawFree(a->alpn);
    if (a->headers) {
        for (j = 0; j < a->n_headers; j++) {
            PyMem_RawFree((void *)a->headers[j].name);
            PyMem_RawFree((void *)a->headers[j].value);
        }
        PyMem_RawFree(a->headers);
    }
}

static void
connect_request_free(connect_request *r)
{
    MQTTProperties_free(&r->props);
    MQTTProperties_free(&r->will_props);
    connect_args_free(&r->a);
}

/* ---- stage 1: arguments -> raw copies and paho's options (GIL held) ----- */

/* Optional str or None from a dict -> raw copy (NULL if absent). */
static int
dict_str(PyObject *d, const char *key, char **out)
{
    PyObject *v;
    *out = NULL;
    if (d == NULL || d == Py_None)
        return 0;
    v = PyDict_GetItemString(d, key);   /* borrowed */
    if (v == NULL || v == Py_None)
        return 0;
    *out = sb_raw_utf8(v, key);
    return *out == NULL ? -1 : 0;
}

static int
dict_flag(PyObject *d, const char *key, int dflt)
{
    PyObject *v;
    if (d == NULL || d == Py_None)
        return dflt;
    v = PyDict_GetItemString(d, key);
    if (v == NULL)
        return dflt;
    return PyObject_IsTrue(v);
}

/* bytes -> raw copy; -1 with an exception. */
static int
raw_bytes(PyObject *b, char **out, Py_ssize_t *len)
{
    char *p;
    PyBytes_AsStringAndSize(b, &p, len);
    if ((*out = sb_raw_strdup(p, *len)) == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static int
is_secure_uri(const char *u)
{
    return strncmp(u, "ssl://", 6) == 0 || strncmp(u, "wss://", 6) == 0 || strncmp(u, "mqtts://", 8) == 0;
}

/* uris: a non-empty list of str -> a.uris, and the list for messages. */
static int
parse_uris(PyObject *uris, connect_request *r)
{
    Py_ssize_t i;
    r->a.n_uris = PyList_GET_SIZE(uris);
    if (r->a.n_uris < 1) {
        PyErr_SetString(PyExc_ValueError, "connect needs at least one broker URI");
        return -1;
    }
    r->a.uris = PyMem_RawCalloc((size_t)r->a.n_uris, sizeof(char *));
    if (r->a.uris == NULL) {
        r->a.n_uris = 0;
        PyErr_NoMemory();
        return -1;
    }
    for (i = 0; i < r->a.n_uris; i++) {
        if ((r->a.uris[i] = sb_raw_utf8(PyList_GET_ITEM(uris, i), "broker URI")) == NULL)
            return -1;
        if (i > 0)
            strncat(r->uri_list, ", ", sizeof r->uri_list - strlen(r->uri_list) - 1);
        strncat(r->uri_list, r->a.uris[i], sizeof r->uri_list - strlen(r->uri_list) - 1);
    }
    r->opts.serverURIs = r->a.uris;
    r->opts.serverURIcount = (int)r->a.n_uris;
    return 0;
}

static int
parse_credentials(PyObject *username, PyObject *password, connect_request *r)
{
    if (username != Py_None && (r->a.username = sb_raw_utf8(username, "username")) == NULL)
        return -1;
    r->opts.username = r->a.username;
    if (password == Py_None)
        return 0;
    if (!PyBytes_Check(password)) {
        PyErr_SetString(PyExc_TypeError, "password must be bytes or None");
        return -1;
    }
    if (raw_bytes(password, &r->a.password, &r->a.password_len) < 0)
        return -1;
    r->opts.binarypwd.data = r->a.password;
    r->opts.binarypwd.len = (int)r->a.password_len;
    return 0;
}

/* will: None or (topic: str, payload: bytes, qos: int, retain: bool). */
static int
parse_will(PyObject *will, connect_request *r)
{
    PyObject *wt, *wp;
    int wq, wr;
    if (will == Py_None)
        return 0;
    if (!PyArg_ParseTuple(will, "O!O!ip:will", &PyUnicode_Type, &wt, &PyBytes_Type, &wp, &wq, &wr))
        return -1;
    if ((r->a.will_topic = sb_raw_utf8(wt, "will topic")) == NULL)
        return -1;
    if (raw_bytes(wp, &r->a.will_payload, &r->a.will_payload_len) < 0)
        return -1;
    r->will.topicName = r->a.will_topic;
    r->will.payload.data = r->a.will_payload;
    r->will.payload.len = (int)r->a.will_payload_len;
    r->will.qos = wq;
    r->will.retained = wr;
    r->opts.will = &r->will;
    return 0;
}

/* tls["alpn"]: bytes in ALPN wire format, or absent/None -> raw copy. */
static int
parse_alpn(PyObject *tls, connect_request *r)
{
    PyObject *v = PyDict_GetItemString(tls, "alpn");   /* borrowed */
    if (v == NULL || v == Py_None)
        return 0;
    if (!PyBytes_Check(v)) {
        PyErr_SetString(PyExc_TypeError, "tls['alpn'] must be bytes (ALPN wire format)");
        return -1;
    }
    if (raw_bytes(v, (char **)&r->a.alpn, &r->a.alpn_len) < 0)
        return -1;
    r->ssl.protos = r->a.alpn;
    r->ssl.protos_len = (unsigned int)r->a.alpn_len;
    return 0;
}

/* tls: None or a dict of paho's SSL options.  A secure scheme without one
 * verifies against the system store. */
static int
parse_tls(sb_client *self, PyObject *tls, connect_request *r)
{
    connect_args *a = &r->a;
    Py_ssize_t i;
    int secure = 0;

    for (i = 0; i < a->n_uris; i++)
        secure |= is_secure_uri(a->uris[i]);
    if (tls == Py_None && !secure)
        return 0;
    if (tls != Py_None && !PyDict_Check(tls)) {
        PyErr_SetString(PyExc_TypeError, "tls must be a dict or None");
        return -1;
    }
    r->ssl.enableServerCertAuth = 1;
    r->ssl.verify = 1;
    r->ssl.ssl_error_cb = sb_cb_ssl_error;
    r->ssl.ssl_error_context = self;
    r->opts.ssl = &r->ssl;
    if (tls == Py_None)
        return 0;
    if (dict_str(tls, "ca_certs", &a->tls_strings[0]) < 0 || dict_str(tls, "ca_path", &a->tls_strings[1]) < 0 ||
        dict_str(tls, "certfile", &a->tls_strings[2]) < 0 || dict_str(tls, "keyfile", &a->tls_strings[3]) < 0 ||
        dict_str(tls, "keyfile_password", &a->tls_strings[4]) < 0 ||
        dict_str(tls, "ciphers", &a->tls_strings[5]) < 0)
        return -1;
    r->ssl.trustStore = a->tls_strings[0];
    r->ssl.CApath = a->tls_strings[1];
    r->ssl.keyStore = a->tls_strings[2];
    r->ssl.privateKey = a->tls_strings[3] ? a->tls_strings[3] : a->tls_strings[2];
    r->ssl.privateKeyPassword = a->tls_strings[4];
    r->ssl.enabledCipherSuites = a->tls_strings[5];
    r->ssl.enableServerCertAuth = dict_flag(tls, "verify", 1);
    r->ssl.verify = dict_flag(tls, "check_hostname", 1);
    r->ssl.sslVersion = MQTT_SSL_VERSION_DEFAULT;
    return parse_alpn(tls, r);
}

/* http_headers: None or a sequence of (name, value) str pairs (websockets). */
static int
parse_headers(PyObject *headers, connect_request *r)
{
    connect_args *a = &r->a;
    PyObject *seq;
    Py_ssize_t i;
    int ok = -1;

    if (headers == Py_None)
        return 0;
    seq = PySequence_Fast(headers, "http_headers must be a sequence of (name, value)");
    if (seq == NULL)
        return -1;
    a->headers = PyMem_RawCalloc((size_t)PySequence_Fast_GET_SIZE(seq) + 1, sizeof(MQTTClient_nameValue));
    if (a->headers == NULL) {
        PyErr_NoMemory();
        goto out;
    }
    a->n_headers = PySequence_Fast_GET_SIZE(seq);
    for (i = 0; i < a->n_headers; i++) {
        PyObject *kv = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyTuple_Check(kv) || PyTuple_GET_SIZE(kv) != 2) {
            PyErr_SetString(PyExc_TypeError, "http_headers items must be (name, value) tuples");
            goto out;
        }
        if ((a->headers[i].name = sb_raw_utf8(PyTuple_GET_ITEM(kv, 0), "header name")) == NULL ||
            (a->headers[i].value = sb_raw_utf8(PyTuple_GET_ITEM(kv, 1), "header value")) == NULL)
            goto out;
    }
    r->opts.httpHeaders = a->headers;
    ok = 0;
out:
    Py_DECREF(seq);
    return ok;
}

/* CONNECT and will properties: MQTT 5 only; on 3.1.1 they must be empty. */
static int
parse_properties(sb_state *st, PyObject *props, PyObject *will_props, connect_request *r)
{
    if (r->version >= MQTTVERSION_5)
        return sb_props_from_pairs(props, &r->props) < 0 || sb_props_from_pairs(will_props, &r->will_props) < 0
                   ? -1 : 0;
    if ((props != Py_None && PyObject_IsTrue(props)) || (will_props != Py_None && PyObject_IsTrue(will_props))) {
        PyErr_SetString(st->ProtocolError, "MQTT 5 properties cannot be sent over MQTT 3.1.1; use protocol=MQTTv5");
        return -1;
    }
    return 0;
}

/* The protocol-level options: version, session, keep-alive, time-out, window. */
static void
set_session_options(connect_request *r, int keepalive, int clean, double timeout)
{
    MQTTClient_connectOptions *o = &r->opts;
    o->keepAliveInterval = keepalive;
    o->MQTTVersion = r->version;
    o->cleanstart = r->version >= MQTTVERSION_5 ? clean : 0;
    o->cleansession = r->version >= MQTTVERSION_5 ? 0 : clean;
    o->connectTimeout = timeout < 1 ? 1 : (int)(timeout + 0.999);
    o->retryInterval = 0;
    if (r->max_inflight < 1 || r->max_inflight > 65535)
        r->max_inflight = 65535;
    o->maxInflightMessages = r->max_inflight;
    o->reliable = 0;   /* we keep our own window; paho's "reliable" means 1 in flight */
}

/* Fill *r from connect()'s arguments; -1 with an exception. */
static int
connect_request_parse(sb_client *self, sb_state *st, PyObject *args, PyObject *kw, connect_request *r)
{
    static char *kwlist[] = {"uris", "mqtt_version", "keepalive", "clean", "username", "password",
                             "will", "will_props", "props", "tls", "http_headers", "timeout",
                             "max_inflight", NULL};
    PyObject *uris, *username = Py_None, *password = Py_None, *will = Py_None, *will_props = Py_None;
    PyObject *props = Py_None, *tls = Py_None, *headers = Py_None;
    int keepalive = 60, clean = 1;
    double timeout = 30.0;

    r->version = MQTTVERSION_5;
    r->max_inflight = 20;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!|iipOOOOOOOdi:connect", kwlist, &PyList_Type, &uris,
                                     &r->version, &keepalive, &clean, &username, &password, &will,
                                     &will_props, &props, &tls, &headers, &timeout, &r->max_inflight))
        return -1;
    if (r->version != MQTTVERSION_3_1 && r->version != MQTTVERSION_3_1_1 && r->version != MQTTVERSION_5) {
        PyErr_Format(PyExc_ValueError, "mqtt_version must be 3, 4 or 5, not %d", r->version);
        return -1;
    }
    if (parse_uris(uris, r) < 0 || parse_credentials(username, password, r) < 0 || parse_will(will, r) < 0 ||
        parse_tls(self, tls, r) < 0 || parse_headers(headers, r) < 0 ||
        parse_properties(st, props, will_props, r) < 0)
        return -1;
    set_session_options(r, keepalive, clean, timeout);
    return 0;
}

/* ---- stage 2: the attempt (GIL released) ------------------------------ */

/* A new handle is needed for the first connect, another MQTT version or
 * another first URI (paho binds both at creation). */
static int
handle_is_reusable(const sb_client *self, const connect_request *r)
{
    return self->handle != NULL && self->mqtt_version == r->version && self->first_uri != NULL &&
           strcmp(self->first_uri, r->a.uris[0]) == 0;
}

/* Destroy the old handle once nobody uses it and create a new one with our
 * callbacks.  Returns paho's rc; on failure there is no handle. */
static int
recreate_handle_nogil(sb_client *self, const connect_request *r)
{
    MQTTClient_createOptions co = MQTTClient_createOptions_initializer;
    sb_store *store;
    int rc;

    pthread_mutex_lock(&self->mu);
    self->recreating = 1;          /* new calls keep off the old handle */
    /* paho reads the store while creating the handle: close() must wait */
    store = self->closing ? NULL : self->store;
    if (store != NULL)
        self->store_users++;
    pthread_mutex_unlock(&self->mu);
    sb_handle_drain_nogil(self);
    sb_destroy_handle_nogil(self);
    co.MQTTVersion = r->version;
    if (store != NULL) {
        /* paho keeps its in-flight and inbound QoS 2 state in our store and
         * restores it here; it cannot restore another version's records */
        sb_store_keep_version(store, r->version >= MQTTVERSION_5);
        sb_store_paho_interface(store, &self->store_iface);
        rc = MQTTClient_createWithOptions(&self->handle, r->a.uris[0], self->client_id,
                                          MQTTCLIENT_PERSISTENCE_USER, &self->store_iface, &co);
    }
    else
        rc = MQTTClient_createWithOptions(&self->handle, r->a.uris[0], self->client_id,
                                          MQTTCLIENT_PERSISTENCE_NONE, NULL, &co);
    if (rc == MQTTCLIENT_SUCCESS)
        rc = MQTTClient_setCallbacks(self->handle, self, sb_cb_connection_lost, sb_cb_message_arrived,
                                     sb_cb_delivery_complete);
    if (rc == MQTTCLIENT_SUCCESS && r->version >= MQTTVERSION_5)
        rc = MQTTClient_setPublished(self->handle, self, sb_cb_published);
    if (rc != MQTTCLIENT_SUCCESS)
        sb_destroy_handle_nogil(self);
    pthread_mutex_lock(&self->mu);
    self->recreating = 0;
    if (store != NULL && --self->store_users == 0)
        pthread_cond_broadcast(&self->pub_cv);
    pthread_mutex_unlock(&self->mu);
    return rc;
}

/* paho's synchronous connect, with the keeper waking paho's receive thread
 * so it sees the new socket at once.  Fills rc, reason and server_rm. */
static void
paho_connect_nogil(sb_client *self, connect_request *r, connect_outcome *out)
{
    sb_keeper_wake_begin_nogil();
    if (r->version >= MQTTVERSION_5) {
        out->resp = MQTTClient_connect5(self->handle, &r->opts, &r->props, &r->will_props);
        /* any non-zero CONNACK code refuses: v5 success is only 0, and a
         * 3.1.1-only broker answers a v5 CONNECT with its code 1 */
        out->rc = (int)out->resp.reasonCode;
        out->reason = out->rc > 0 ? out->rc : -1;
        if (out->rc == 0 && out->resp.properties &&
            MQTTProperties_hasProperty(out->resp.properties, MQTTPROPERTY_CODE_RECEIVE_MAXIMUM))
            out->server_rm = MQTTProperties_getNumericValue(out->resp.properties,
                                                            MQTTPROPERTY_CODE_RECEIVE_MAXIMUM);
    }
    else {
        out->rc = MQTTClient_connect(self->handle, &r->opts);
        out->reason = out->rc > 0 ? out->rc : -1;
    }
    sb_keeper_wake_end_nogil();
}

/* Connected: note the session, find paho's socket, size our window and hand
 * the outbox what paho will not re-send of a resumed session. */
static void
take_over_session_nogil(sb_client *self, const connect_request *r, connect_outcome *out,
                        const unsigned char *fds_before, int nbits)
{
    MQTTClient_deliveryToken *tokens = NULL;
    int ntok = 0;

    out->session_present = r->opts.returned.sessionPresent;
    out->returned_version = r->opts.returned.MQTTVersion;
    if (r->opts.returned.serverURI)
        snprintf(out->returned_uri, sizeof out->returned_uri, "%s", r->opts.returned.serverURI);
    self->sock_fd = sb_find_broker_socket(fds_before, nbits, out->returned_uri, self->nodelay);
    /* which of our QoS>0 publishes does paho still hold (resumed session)?
     * A failure only means none: the outbox then re-sends them all */
    if (MQTTClient_getPendingDeliveryTokens(self->handle, &tokens) == MQTTCLIENT_SUCCESS && tokens)
        while (tokens[ntok] != -1)
            ntok++;
    pthread_mutex_lock(&self->mu);
    /* the version of this handle, before anything may send on it: the
     * flusher starts on the queued records as soon as connected is set,
     * while note_handle() only runs once connect() has the GIL back */
    self->mqtt_version = r->version;
    self->connected = 1;
    self->window = (unsigned)(r->max_inflight < out->server_rm ? r->max_inflight : out->server_rm);
    sb_outbox_after_connect_locked(self, tokens, ntok);
    pthread_cond_broadcast(&self->pub_cv);
    pthread_cond_broadcast(&self->win_cv);
    pthread_mutex_unlock(&self->mu);
    if (tokens)
        MQTTClient_free(tokens);
}

/* The whole attempt.  The handle is held (acquired) while paho connects, and
 * `connecting` tells close() not to disconnect under paho's connect. */
static void
connect_run_nogil(sb_client *self, connect_request *r, int need_create, connect_outcome *out)
{
    int acquired, nbits = 0;
    unsigned char *before;

    /* keep paho's receive thread alive (no 100 ms start/stop sleeps); before
     * the handle is (re)created, so destroying the old one cannot stop it */
    (void)sb_keeper_ensure_nogil();   /* -1 is harmless: connects are just slow */
    if (need_create)
        out->create_rc = recreate_handle_nogil(self, r);
    pthread_mutex_lock(&self->mu);
    /* a subscribe still waiting in paho for the old connection's SUBACK
     * disconnects the handle when it times out: let it end first */
    sb_requests_drain_locked(self);
    acquired = out->create_rc == MQTTCLIENT_SUCCESS && sb_handle_acquire_locked(self);
    if (acquired)
        self->connecting++;
    pthread_mutex_unlock(&self->mu);
    if (!acquired) {
        if (out->create_rc == MQTTCLIENT_SUCCESS)
            out->create_rc = MQTTCLIENT_DISCONNECTED;   /* closed meanwhile */
        return;
    }
    before = sb_socket_fds_snapshot(&nbits);
    paho_connect_nogil(self, r, out);
    if (out->rc == 0)
        take_over_session_nogil(self, r, out, before, nbits);
    PyMem_RawFree(before);
    pthread_mutex_lock(&self->mu);
    self->connecting--;
    out->closed_meanwhile = self->closing;
    sb_handle_release_locked(self);
    pthread_mutex_unlock(&self->mu);
}

/* ---- stage 3: outcome -> Python (GIL held) ---------------------------- */

/* Remember which handle we have now: version and first URI. */
static void
note_handle(sb_client *self, const connect_request *r)
{
    PyMem_RawFree(self->first_uri);
    self->first_uri = NULL;
    if (self->handle != NULL) {
        self->mqtt_version = r->version;
        self->first_uri = sb_raw_strdup(r->a.uris[0], (Py_ssize_t)strlen(r->a.uris[0]));
    }
}

static PyObject *
connect_result(sb_client *self, sb_state *st, const connect_request *r, const connect_outcome *out)
{
    PyObject *connack_props, *result;

    if (out->closed_meanwhile) {
        /* not a broker failure: no fall-back, no retry */
        PyErr_SetString(st->ClosedError, "the client was closed while connecting");
        return NULL;
    }
    if (out->create_rc != MQTTCLIENT_SUCCESS)
        return sb_raise_rc(st, "creating the MQTT client", out->create_rc);
    if (out->rc != 0) {
        char tls_error[sizeof self->tls_error];
        pthread_mutex_lock(&self->mu);
        memcpy(tls_error, self->tls_error, sizeof tls_error);
        pthread_mutex_unlock(&self->mu);
        return sb_raise_connect_failure(st, r->uri_list, r->version, out->rc, out->reason, tls_error);
    }
    if (out->resp.properties)
        connack_props = sb_props_to_object(st, 2 /* CONNACK */, out->resp.properties);
    else
        connack_props = Py_NewRef(Py_None);
    if (connack_props == NULL)
        return NULL;
    result = Py_BuildValue("{s:s,s:i,s:O,s:O,s:i,s:I}", "server_uri", out->returned_uri, "mqtt_version",
                           out->returned_version ? out->returned_version : r->version, "session_present",
                           out->session_present ? Py_True : Py_False, "properties", connack_props,
                           "receive_maximum", out->server_rm, "window", self->window);
    Py_DECREF(connack_props);
    return result;
}

PyObject *
sb_conn_connect(sb_client *self, PyObject *args, PyObject *kw)
{
    sb_state *st = sb_state_of(self);
    connect_request r = {
        .opts = MQTTClient_connectOptions_initializer,
        .ssl = MQTTClient_SSLOptions_initializer,
        .will = MQTTClient_willOptions_initializer,
        .props = MQTTProperties_initializer,
        .will_props = MQTTProperties_initializer,
    };
    connect_outcome out = {.resp = MQTTResponse_initializer, .create_rc = MQTTCLIENT_SUCCESS,
                           .server_rm = 65535, .reason = -1};
    int need_create;
    PyObject *result = NULL;

    if (st == NULL || sb_check_usable(self, st) < 0)
        return NULL;
    if (connect_request_parse(self, st, args, kw, &r) < 0)
        goto done;
    need_create = !handle_is_reusable(self, &r);
    pthread_mutex_lock(&self->mu);
    self->tls_error[0] = '\0';
    sb_blocking_enter_locked(self);
    pthread_mutex_unlock(&self->mu);

    /* connect blocks on the network for up to its time-out, and paho calls
     * our callbacks under its mutex meanwhile: release the GIL */
    Py_BEGIN_ALLOW_THREADS
    connect_run_nogil(self, &r, need_create, &out);
    Py_END_ALLOW_THREADS

    pthread_mutex_lock(&self->mu);
    sb_blocking_leave_locked(self);
    pthread_mutex_unlock(&self->mu);
    if (need_create)
        note_handle(self, &r);
    result = connect_result(self, st, &r, &out);
done:
    MQTTResponse_free(out.resp);
    connect_request_free(&r);
    return result;
}
