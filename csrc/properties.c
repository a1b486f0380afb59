/*
 * properties.c - MQTT 5 properties between paho's MQTTProperties and Python.
 *
 * The Python side (sermas_bus.properties.Properties) speaks a list of
 * (identifier, value) pairs: int for numeric properties, str for strings,
 * bytes for binary data and a (name, value) tuple of str for user properties.
 * Called with the GIL held; paho's MQTTProperties_add copies the data.
 */
#include "sb.h"

#include <MQTTProperties.h>
#include <string.h>

/* Fill out from a sequence of pairs.  On error: exception set, out freed. */
int
sb_props_from_pairs(PyObject *pairs, MQTTProperties *out)
{
    PyObject *seq = NULL;
    Py_ssize_t i, n;
    MQTTProperties empty = MQTTProperties_initializer;

    *out = empty;
    if (pairs == NULL || pairs == Py_None)
        return 0;
    seq = PySequence_Fast(pairs, "properties must be a sequence of (identifier, value) pairs");
    if (seq == NULL)
        return -1;
    n = PySequence_Fast_GET_SIZE(seq);
    for (i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        PyObject *value;
        MQTTProperty p;
        long ident;
        int type;
        Py_ssize_t len;
        const char *data;

        memset(&p, 0, sizeof p);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
            PyErr_SetString(PyExc_TypeError, "each property must be an (identifier, value) tuple");
            goto error;
        }
        ident = PyLong_AsLong(PyTuple_GET_ITEM(item, 0));
        if (ident == -1 && PyErr_Occurred())
            goto error;
        value = PyTuple_GET_ITEM(item, 1);
        type = MQTTProperty_getType((enum MQTTPropertyCodes)ident);
        if (type < 0) {
            PyErr_Format(PyExc_ValueError, "unknown MQTT 5 property identifier %ld", ident);
            goto error;
        }
        p.identifier = (enum MQTTPropertyCodes)ident;
        switch (type) {
        case MQTTPROPERTY_TYPE_BYTE:
        case MQTTPROPERTY_TYPE_TWO_BYTE_INTEGER:
        case MQTTPROPERTY_TYPE_FOUR_BYTE_INTEGER:
        case MQTTPROPERTY_TYPE_VARIABLE_BYTE_INTEGER: {
            long long v = PyLong_AsLongLong(value);
            long long max = type == MQTTPROPERTY_TYPE_BYTE ? 0xFF
                          : type == MQTTPROPERTY_TYPE_TWO_BYTE_INTEGER ? 0xFFFF
                          : type == MQTTPROPERTY_TYPE_FOUR_BYTE_INTEGER ? 0xFFFFFFFFLL
                          : 268435455LL;
            if (v == -1 && PyErr_Occurred())
                goto error;
            if (v < 0 || v > max) {
                PyErr_Format(PyExc_ValueError, "MQTT 5 property %s: %lld is outside 0..%lld",
                             MQTTPropertyName(p.identifier), v, max);
                goto error;
            }
            if (type == MQTTPROPERTY_TYPE_BYTE)
                p.value.byte = (unsigned char)v;
            else if (type == MQTTPROPERTY_TYPE_TWO_BYTE_INTEGER)
                p.value.integer2 = (unsigned short)v;
            else
                p.value.integer4 = (unsigned int)v;
            break;
        }
        case MQTTPROPERTY_TYPE_BINARY_DATA:
        case MQTTPROPERTY_TYPE_UTF_8_ENCODED_STRING:
            if (PyUnicode_Check(value)) {
                data = PyUnicode_AsUTF8AndSize(value, &len);
                if (data == NULL)
                    goto error;
            }
            else if (PyBytes_Check(value)) {
                data = PyBytes_AS_STRING(value);
                len = PyBytes_GET_SIZE(value);
            }
            else {
                PyErr_Format(PyExc_TypeError, "MQTT 5 property %s must be str or bytes, not %.100s",
                             MQTTPropertyName(p.identifier), Py_TYPE(value)->tp_name);
                goto error;
            }
            if (len > 65535) {
                PyErr_Format(PyExc_ValueError, "MQTT 5 property %s is longer than 65535 bytes",
                             MQTTPropertyName(p.identifier));
                goto error;
            }
            p.value.data.data = (char *)data;
            p.value.data.len = (int)len;
            break;
        case MQTTPROPERTY_TYPE_UTF_8_STRING_PAIR: {
            Py_ssize_t klen, vlen;
            const char *k, *v;
            if (!PyTuple_Check(value) || PyTuple_GET_SIZE(value) != 2 ||
                !PyUnicode_Check(PyTuple_GET_ITEM(value, 0)) ||
                !PyUnicode_Check(PyTuple_GET_ITEM(value, 1))) {
                PyErr_SetString(PyExc_TypeError, "MQTT 5 UserProperty must be a (str, str) tuple");
                goto error;
            }
            k = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(value, 0), &klen);
            v = k ? PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(value, 1), &vlen) : NULL;
            if (v == NULL)
                goto error;
            if (klen > 65535 || vlen > 65535) {
                PyErr_SetString(PyExc_ValueError, "MQTT 5 UserProperty name/value longer than 65535 bytes");
                goto error;
            }
            p.value.data.data = (char *)k;
            p.value.data.len = (int)klen;
            p.value.value.data = (char *)v;
            p.value.value.len = (int)vlen;
            break;
        }
        default:
            PyErr_Format(PyExc_ValueError, "unsupported MQTT 5 property type for %ld", ident);
            goto error;
        }
        if (MQTTProperties_add(out, &p) != 0) {
            PyErr_Format(PyExc_ValueError, "MQTT 5 property %s could not be added (too many or not repeatable)",
                         MQTTPropertyName(p.identifier));
            goto error;
        }
    }
    Py_DECREF(seq);
    return 0;

error:
    Py_XDECREF(seq);
    MQTTProperties_free(out);
    return -1;
}

/* paho's properties -> new list of pairs (GIL held). */
PyObject *
sb_props_to_pairs(const MQTTProperties *props)
{
    PyObject *list = PyList_New(0);
    int i;
    if (list == NULL || props == NULL)
        return list;
    for (i = 0; i < props->count; i++) {
        const MQTTProperty *p = &props->array[i];
        PyObject *value = NULL, *pair;
        switch (MQTTProperty_getType(p->identifier)) {
        case MQTTPROPERTY_TYPE_BYTE:
            value = PyLong_FromLong(p->value.byte);
            break;
        case MQTTPROPERTY_TYPE_TWO_BYTE_INTEGER:
            value = PyLong_FromLong(p->value.integer2);
            break;
        case MQTTPROPERTY_TYPE_FOUR_BYTE_INTEGER:
        case MQTTPROPERTY_TYPE_VARIABLE_BYTE_INTEGER:
            value = PyLong_FromUnsignedLong(p->value.integer4);
            break;
        case MQTTPROPERTY_TYPE_BINARY_DATA:
            value = PyBytes_FromStringAndSize(p->value.data.data, p->value.data.len);
            break;
        case MQTTPROPERTY_TYPE_UTF_8_ENCODED_STRING:
            value = PyUnicode_DecodeUTF8(p->value.data.data, p->value.data.len, "replace");
            break;
        case MQTTPROPERTY_TYPE_UTF_8_STRING_PAIR: {
            /* as the string properties: bytes that are not UTF-8 (a peer's
             * bug) become U+FFFD rather than fail the delivery */
            PyObject *k = PyUnicode_DecodeUTF8(p->value.data.data, p->value.data.len, "replace");
            PyObject *v = k ? PyUnicode_DecodeUTF8(p->value.value.data, p->value.value.len, "replace") : NULL;
            value = v ? PyTuple_Pack(2, k, v) : NULL;
            Py_XDECREF(k);
            Py_XDECREF(v);
            break;
        }
        default:
            continue;   /* unknown type: skip rather than fail a delivery */
        }
        if (value == NULL)
            goto error;
        pair = Py_BuildValue("(iN)", (int)p->identifier, value);
        if (pair == NULL)
            goto error;
        if (PyList_Append(list, pair) < 0) {
            Py_DECREF(pair);
            goto error;
        }
        Py_DECREF(pair);
    }
    return list;
error:
    Py_DECREF(list);
    return NULL;
}

/* paho's properties -> sermas_bus.properties.Properties via the factory the
 * Python layer registered; a plain list of pairs if none is registered. */
PyObject *
sb_props_to_object(sb_state *st, int packet_type, const MQTTProperties *props)
{
    PyObject *pairs = sb_props_to_pairs(props), *res;
    if (pairs == NULL || st->properties_factory == NULL)
        return pairs;
    res = PyObject_CallFunction(st->properties_factory, "iO", packet_type, pairs);
    Py_DECREF(pairs);
    return res;
}
