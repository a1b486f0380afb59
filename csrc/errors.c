/*
 * errors.c - one table from paho.mqtt.c return codes to exception types, and
 * the CONNACK reason texts.  Every message says which call failed, the code,
 * the library's text, and what to do about it.
 */
#include "sb.h"

#include <MQTTReasonCodes.h>

typedef struct {
    int rc;
    size_t state_offset;     /* which exception in sb_state */
    const char *hint;
} sb_rc_entry;

#define EXC(field) offsetof(sb_state, field)

static const sb_rc_entry rc_table[] = {
    {MQTTCLIENT_DISCONNECTED, EXC(NotConnectedError),
     "the client is not connected; call connect() first or wait for the reconnect"},
    {MQTTCLIENT_MAX_MESSAGES_INFLIGHT, EXC(Error),
     "too many messages in flight; raise max_inflight_messages_set() or wait"},
    {MQTTCLIENT_BAD_UTF8_STRING, EXC(Error), "a topic or string is not valid UTF-8"},
    {MQTTCLIENT_NULL_PARAMETER, EXC(Error), "internal error: a required argument was missing"},
    {MQTTCLIENT_BAD_QOS, EXC(Error), "QoS must be 0, 1 or 2"},
    {MQTTCLIENT_SSL_NOT_SUPPORTED, EXC(TLSError),
     "this paho.mqtt.c build has no TLS; install the Debian package libpaho-mqtt1.3 (paho-mqtt3cs)"},
    {MQTTCLIENT_BAD_MQTT_VERSION, EXC(ProtocolError), "unsupported MQTT version"},
    {MQTTCLIENT_BAD_PROTOCOL, EXC(ConnectError),
     "unsupported URL scheme; use tcp://, mqtt://, ssl://, mqtts://, ws://, wss://, http:// or https://"},
    {MQTTCLIENT_BAD_MQTT_OPTION, EXC(ProtocolError), "an option is not valid for this MQTT version"},
    {MQTTCLIENT_WRONG_MQTT_VERSION, EXC(ProtocolError), "the call does not match the MQTT version in use"},
    {MQTTCLIENT_0_LEN_WILL_TOPIC, EXC(Error), "the will topic must not be empty"},
    {MQTTCLIENT_FAILURE, EXC(Error), "the operation failed (connection down or broker did not answer)"},
};

/* Raise the exception for a paho return code; always returns NULL. */
PyObject *
sb_raise_rc(sb_state *st, const char *what, int rc)
{
    size_t i;
    const char *text = MQTTClient_strerror(rc);
    for (i = 0; i < sizeof rc_table / sizeof rc_table[0]; i++) {
        if (rc_table[i].rc == rc) {
            PyObject *exc = *(PyObject **)((char *)st + rc_table[i].state_offset);
            PyErr_Format(exc, "%s failed: error %d from paho.mqtt.c (%s): %s",
                         what, rc, text ? text : "?", rc_table[i].hint);
            return NULL;
        }
    }
    PyErr_Format(st->Error, "%s failed: error %d from paho.mqtt.c (%s)", what, rc, text ? text : "?");
    return NULL;
}

/* MQTT 3.1.1 CONNACK return codes and MQTT 5 reason codes, in words. */
const char *
sb_reason_text(int reason)
{
    const char *s;
    switch (reason) {
    case 1: return "unacceptable protocol version";
    case 2: return "client identifier rejected";
    case 3: return "server unavailable";
    case 4: return "bad user name or password";
    case 5: return "not authorised";
    default: break;
    }
    s = MQTTReasonCode_toString((enum MQTTReasonCodes)reason);
    return s ? s : "unknown reason";
}

static int
is_auth_reason(int mqtt_version, int reason)
{
    if (mqtt_version < MQTTVERSION_5)
        return reason == 4 || reason == 5;
    return reason == MQTTREASONCODE_BAD_USER_NAME_OR_PASSWORD ||
           reason == MQTTREASONCODE_NOT_AUTHORIZED ||
           reason == MQTTREASONCODE_BAD_AUTHENTICATION_METHOD ||
           reason == MQTTREASONCODE_BANNED;
}

static int
is_version_reason(int mqtt_version, int reason)
{
    /* a 3.1.1-only broker answers a v5 CONNECT with the 3.1.1 code 1 */
    return reason == 1 || reason == MQTTREASONCODE_UNSUPPORTED_PROTOCOL_VERSION;
}

/* Raise the right exception for a failed connect.  rc is paho's return
 * code, reason the CONNACK code when the broker answered (else -1). */
PyObject *
sb_raise_connect_failure(sb_state *st, const char *uris, int mqtt_version,
                         int rc, int reason, const char *tls_error)
{
    PyObject *exc_type, *args, *exc;
    const char *vname = mqtt_version >= MQTTVERSION_5 ? "5" : mqtt_version == MQTTVERSION_3_1 ? "3.1" : "3.1.1";
    PyObject *msg;

    if (reason > 0) {
        const char *text = sb_reason_text(reason);
        if (is_auth_reason(mqtt_version, reason)) {
            exc_type = st->NotAuthorizedError;
            msg = PyUnicode_FromFormat(
                "connection to %s refused by the broker: %s (CONNACK code %d); "
                "check the username (SERMAS: a valid, unexpired JWT access token) and password",
                uris, text, reason);
        }
        else if (is_version_reason(mqtt_version, reason)) {
            exc_type = st->ProtocolVersionError;
            msg = PyUnicode_FromFormat(
                "connection to %s refused: the broker does not accept MQTT %s (CONNACK code %d: %s); "
                "pass protocol=MQTTv311 or let the client fall back automatically", uris, vname, reason, text);
        }
        else {
            exc_type = st->ConnectError;
            msg = PyUnicode_FromFormat("connection to %s refused by the broker: %s (CONNACK code %d)",
                                       uris, text, reason);
        }
    }
    else if (tls_error != NULL && tls_error[0] != '\0') {
        exc_type = st->TLSError;
        msg = PyUnicode_FromFormat(
            "TLS handshake with %s failed: %s; check the CA (tls_set(ca_certs=...) or the system trust "
            "store, SSL_CERT_FILE), the host name in the certificate, or use tls_insecure_set(True) for tests",
            uris, tls_error);
    }
    else {
        const char *text = MQTTClient_strerror(rc);
        exc_type = st->ConnectError;
        msg = PyUnicode_FromFormat(
            "could not connect to %s: error %d from paho.mqtt.c (%s); is the broker running and the "
            "host, port and transport (tcp/websockets, TLS or not) right?", uris, rc, text ? text : "?");
    }
    if (msg == NULL)
        return NULL;
    args = PyTuple_Pack(1, msg);
    Py_DECREF(msg);
    if (args == NULL)
        return NULL;
    exc = PyObject_Call(exc_type, args, NULL);
    Py_DECREF(args);
    if (exc == NULL)
        return NULL;
    /* attributes callers can branch on, like pylibmc's retcode */
    {
        PyObject *rc_obj = PyLong_FromLong(rc);
        PyObject *reason_obj = reason > 0 ? PyLong_FromLong(reason) : Py_NewRef(Py_None);
        int bad = rc_obj == NULL || reason_obj == NULL ||
                  PyObject_SetAttrString(exc, "rc", rc_obj) < 0 ||
                  PyObject_SetAttrString(exc, "reason_code", reason_obj) < 0;
        Py_XDECREF(rc_obj);
        Py_XDECREF(reason_obj);
        if (bad) {
            Py_DECREF(exc);
            return NULL;
        }
    }
    PyErr_SetObject(exc_type, exc);
    Py_DECREF(exc);
    return NULL;
}
