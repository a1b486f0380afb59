/*
 * json.c - JSON for SERMAS events, straight between Python objects and UTF-8.
 *
 *   json_dumps(obj) -> bytes    compact UTF-8, byte-identical to
 *       json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
 *       for everything both accept; adds datetime/date, Enum and dataclasses.
 *   json_loads(data) -> object  from UTF-8 bytes / bytearray / memoryview / str.
 *
 * Both hold the GIL from start to end: events are a few hundred bytes and
 * dropping and retaking the GIL would cost more than the work itself.
 *
 * Errors name the place, e.g. payload["llm"]["temperature"].  The path is
 * built only on failure, while the recursion unwinds: each level records the
 * key or index through which it entered the failing child.  Success pays
 * nothing for it.  Reference cycles are found the same way: a cycle drives
 * the encoder into the depth limit, and the unwound chain of containers
 * shows which container repeats.
 *
 * The decoder writes Python objects directly while it parses.  Measured on
 * the ~300-byte dialogue event of bench/bench_json.py (median of 3 runs):
 * cJSON_ParseWithLengthOpts + cJSON_Delete alone ~975 ns, the same plus a
 * conversion to Python objects ~2400 ns, this parser (objects included)
 * ~985 ns, json.loads ~3500 ns.  cJSON also keeps numbers only as doubles
 * (12345678901234567890 and 1.0 vs 1 would be lost) and needs its global
 * hooks set up before any thread uses it; so no cJSON here.
 */
#include "sb.h"

#include <datetime.h>
#ifndef PyDateTime_DATE_GET_TZINFO   /* 3.9: as CPython 3.10 defines it */
#define PyDateTime_DATE_GET_TZINFO(o) \
    (((_PyDateTime_BaseTZInfo *)(o))->hastzinfo ? ((PyDateTime_DateTime *)(o))->tzinfo : Py_None)
#endif
#include <math.h>
#include <stdio.h>
#include <string.h>

/* datetime.h declares a static C-API pointer for PyDateTime_IMPORT.  We read
 * the datetime structs through the field macros only and keep the types in
 * module state, so the pointer stays unused. */
#define SB_UNUSED_DATETIME_CAPI ((void)PyDateTimeAPI)

#define ENC_STACK_BUF 2048      /* most events fit: no heap buffer at all */
#define DEC_STACK_ITEMS 64      /* list elements collected before the heap */

/* ======================================================================
 * error paths (shared by encoder and decoder)
 * ====================================================================== */

/* One step of a path, recorded while unwinding (innermost first). */
typedef struct {
    void *container;        /* the container the step leaves from (encoder: for cycles;
                               compared, never dereferenced: it may be gone by then) */
    const char *kind;       /* "dict", "list", ... for the cycle message */
    PyObject *component;    /* '["key"]' or '[3]', or NULL for a step without one */
} sb_step;

typedef struct {
    sb_step *steps;
    Py_ssize_t n, cap;
} sb_trail;

static void
trail_free(sb_trail *t)
{
    for (Py_ssize_t i = 0; i < t->n; i++)
        Py_XDECREF(t->steps[i].component);
    PyMem_Free(t->steps);
    t->steps = NULL;
    t->n = t->cap = 0;
}

/* Record a step.  Runs on error paths, possibly with an exception pending:
 * it must not disturb that exception, and a failure here only shortens the
 * path (the original error is what matters).  Steals `component`. */
static void
trail_push(sb_trail *t, void *container, PyObject *component)
{
    if (t->n == t->cap) {
        Py_ssize_t cap = t->cap ? 2 * t->cap : 16;
        sb_step *s = PyMem_Realloc(t->steps, (size_t)cap * sizeof(sb_step));
        if (s == NULL) {
            Py_XDECREF(component);
            return;
        }
        t->steps = s;
        t->cap = cap;
    }
    t->steps[t->n].container = container;
    t->steps[t->n].kind = container == NULL ? NULL
                          : PyDict_Check((PyObject *)container) ? "dict"
                          : PyList_Check((PyObject *)container) ? "list"
                          : PyTuple_Check((PyObject *)container) ? "tuple" : "object";
    t->steps[t->n].component = component;
    t->n++;
}

static PyObject *quote_key(PyObject *key);

/* '["key"]' for a str key (JSON-quoted), '[i]' for an index.  Keeps any
 * pending exception as it is. */
static PyObject *
component_for_key(PyObject *key)
{
    PyObject *pending = PyErr_GetRaisedException(), *r;
    r = quote_key(key);
    if (r == NULL)
        PyErr_Clear();
    PyErr_SetRaisedException(pending);
    return r;
}

static PyObject *
component_for_index(Py_ssize_t i)
{
    PyObject *pending = PyErr_GetRaisedException(), *r;
    r = PyUnicode_FromFormat("[%zd]", i);
    if (r == NULL)
        PyErr_Clear();
    PyErr_SetRaisedException(pending);
    return r;
}

/* "payload" followed by the steps from the root down to step `upto`
 * (exclusive; steps are stored innermost first).  Very deep paths keep
 * their head and tail: a 1000-level path helps nobody. */
#define PATH_HEAD 12
#define PATH_TAIL 4

static PyObject *
trail_path(const sb_trail *t, Py_ssize_t upto)
{
    PyObject *parts, *item, *sep = NULL, *r = NULL;
    Py_ssize_t i, total = 0, k = 0;
    for (i = t->n - 1; i >= t->n - upto; i--)
        total += t->steps[i].component != NULL;
    parts = PyList_New(0);
    if (parts == NULL)
        return NULL;
    item = PyUnicode_FromString("payload");
    if (item == NULL || PyList_Append(parts, item) < 0)
        goto done;
    for (i = t->n - 1; i >= t->n - upto; i--) {
        PyObject *c = t->steps[i].component;
        if (c == NULL)
            continue;
        k++;
        if (total > PATH_HEAD + PATH_TAIL + 1 && k > PATH_HEAD && k <= total - PATH_TAIL) {
            if (k == PATH_HEAD + 1) {
                PyObject *gap = PyUnicode_FromFormat("...(%zd levels)...", total - PATH_HEAD - PATH_TAIL);
                int rc = gap ? PyList_Append(parts, gap) : -1;
                Py_XDECREF(gap);
                if (rc < 0)
                    goto done;
            }
            continue;
        }
        if (PyList_Append(parts, c) < 0)
            goto done;
    }
    sep = PyUnicode_New(0, 0);
    if (sep != NULL)
        r = PyUnicode_Join(sep, parts);
done:
    Py_XDECREF(item);
    Py_XDECREF(sep);
    Py_DECREF(parts);
    return r;
}

/* "decimal.Decimal", "set", "mymodule.Thing": a type named for a human. */
static PyObject *
type_name(PyTypeObject *tp)
{
    PyObject *mod = NULL, *qual = NULL, *r = NULL;
#if PY_VERSION_HEX >= 0x030B0000
    qual = PyType_GetQualName(tp);
#else
    qual = PyObject_GetAttrString((PyObject *)tp, "__qualname__");
#endif
    if (qual == NULL)
        goto fallback;
    mod = PyObject_GetAttrString((PyObject *)tp, "__module__");
    if (mod == NULL || !PyUnicode_Check(mod) || PyUnicode_CompareWithASCIIString(mod, "builtins") == 0)
        r = Py_NewRef(qual);
    else
        r = PyUnicode_FromFormat("%U.%U", mod, qual);
    Py_XDECREF(mod);
    Py_DECREF(qual);
    if (r != NULL)
        return r;
fallback:
    PyErr_Clear();
    return PyUnicode_FromString(tp->tp_name);
}

/* ======================================================================
 * encoder
 * ====================================================================== */

typedef struct {
    char *p, *end;          /* write position and end of the buffer */
    char *buf;              /* stackbuf, or heap once the output outgrows it */
    sb_json_state *js;
    int depth;
    int too_deep;           /* the failure was the depth limit (maybe a cycle) */
    PyObject *err_type;     /* our own error: TypeError / ValueError (borrowed) */
    PyObject *err_msg;      /* ... and its message without the path (owned) */
    sb_trail trail;
    char stackbuf[ENC_STACK_BUF];
} sb_enc;

static int enc_obj(sb_enc *e, PyObject *o);

static int
enc_grow(sb_enc *e, size_t need)
{
    size_t len = (size_t)(e->p - e->buf), cap = (size_t)(e->end - e->buf);
    size_t ncap = cap * 2;
    char *nb;
    if (need > (size_t)PY_SSIZE_T_MAX - len) {
        PyErr_NoMemory();
        return -1;
    }
    if (ncap < len + need)
        ncap = len + need;
    if (e->buf == e->stackbuf) {
        nb = PyMem_Malloc(ncap);
        if (nb != NULL)
            memcpy(nb, e->buf, len);
    }
    else {
        nb = PyMem_Realloc(e->buf, ncap);
    }
    if (nb == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    e->buf = nb;
    e->p = nb + len;
    e->end = nb + ncap;
    return 0;
}

static inline int
enc_reserve(sb_enc *e, size_t n)
{
    if ((size_t)(e->end - e->p) >= n)
        return 0;
    return enc_grow(e, n);
}

static inline int
enc_raw(sb_enc *e, const char *s, size_t n)
{
    if (enc_reserve(e, n) < 0)
        return -1;
    memcpy(e->p, s, n);
    e->p += n;
    return 0;
}

/* Our own error at the current place; the levels above add the path. */
static int
enc_fail(sb_enc *e, PyObject *type, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    Py_CLEAR(e->err_msg);
    e->err_msg = PyUnicode_FromFormatV(fmt, ap);
    va_end(ap);
    e->err_type = e->err_msg ? type : NULL;   /* else MemoryError is pending */
    return -1;
}

/* ---- strings ----------------------------------------------------------- */

/* What json.dumps writes for an ASCII byte: 0 = itself, 'u' = \u00XX,
 * anything else = backslash + that letter. */
static const char ESCAPE[128] = {
    'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'b', 't', 'n', 'u', 'f', 'r', 'u', 'u',
    'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u',
    0, 0, '"', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, '\\', 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
};

static const char HEX[] = "0123456789abcdef";

#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

/* Any byte of w (all bytes < 0x80) that json escapes: < 0x20, '"', '\\'.
 * Exact as an existence test (the classic "has a zero byte" trick). */
static inline uint64_t
ascii_word_special(uint64_t w)
{
    uint64_t q = w ^ (ONES * '"'), b = w ^ (ONES * '\\');
    return (((w - ONES * 0x20) & ~w) | ((q - ONES) & ~q) | ((b - ONES) & ~b)) & HIGHS;
}

static inline char *
put_escape(char *p, unsigned c)
{
    char x = ESCAPE[c];
    *p++ = '\\';
    if (x == 'u') {
        *p++ = 'u';
        *p++ = '0';
        *p++ = '0';
        *p++ = HEX[c >> 4];
        *p++ = HEX[c & 15];
    }
    else {
        *p++ = x;
    }
    return p;
}

#if PY_LITTLE_ENDIAN
/* The last r (1..7) bytes before `end` through one 8-byte load ending at
 * `end` (so 8 bytes before `end` must be readable).  Writes 8 bytes, of
 * which r count.  NULL when one of them needs an escape. */
static inline char *
put_ascii_tail(char *p, const unsigned char *end, int r)
{
    uint64_t w;
    memcpy(&w, end - 8, 8);
    w >>= 8 * (8 - r);           /* the last r bytes, zeros above them */
    if (ascii_word_special(w) & (HIGHS >> (8 * (8 - r))))
        return NULL;
    memcpy(p, &w, 8);
    return p + r;
}
#endif

/* ASCII text with json's escapes, 8 bytes at a time.  `read_before`: the
 * 8 bytes before s + n are readable even when n < 8 (true for a compact
 * str, whose characters follow its header in the same allocation).  The
 * caller reserved 6n + 8 bytes after p (a tail store writes 8). */
static inline char *
put_ascii(char *p, const unsigned char *s, Py_ssize_t n, int read_before)
{
    Py_ssize_t i = 0;
#if PY_LITTLE_ENDIAN
    if (n < 8) {
        char *q;
        if (n > 0 && read_before && (q = put_ascii_tail(p, s + n, (int)n)) != NULL)
            return q;
        goto bytewise;
    }
#endif
    while (n - i >= 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        if (!ascii_word_special(w)) {
            memcpy(p, &w, 8);
            p += 8;
            i += 8;
            continue;
        }
        for (Py_ssize_t lim = i + 8; i < lim; i++) {
            unsigned char c = s[i];
            if (ESCAPE[c])
                p = put_escape(p, c);
            else
                *p++ = (char)c;
        }
    }
#if PY_LITTLE_ENDIAN
    if (i < n) {
        char *q = put_ascii_tail(p, s + n, (int)(n - i));
        if (q != NULL)
            return q;
    }
bytewise:
#endif
    for (; i < n; i++) {
        unsigned char c = s[i];
        if (ESCAPE[c])
            p = put_escape(p, c);
        else
            *p++ = (char)c;
    }
    return p;
}

static inline char *
put_utf8(char *p, Py_UCS4 c)
{
    if (c < 0x80) {
        if (ESCAPE[c])
            return put_escape(p, c);
        *p++ = (char)c;
    }
    else if (c < 0x800) {
        *p++ = (char)(0xC0 | (c >> 6));
        *p++ = (char)(0x80 | (c & 0x3F));
    }
    else if (c < 0x10000) {
        *p++ = (char)(0xE0 | (c >> 12));
        *p++ = (char)(0x80 | ((c >> 6) & 0x3F));
        *p++ = (char)(0x80 | (c & 0x3F));
    }
    else {
        *p++ = (char)(0xF0 | (c >> 18));
        *p++ = (char)(0x80 | ((c >> 12) & 0x3F));
        *p++ = (char)(0x80 | ((c >> 6) & 0x3F));
        *p++ = (char)(0x80 | (c & 0x3F));
    }
    return p;
}

/* A JSON string literal, as json.dumps(ensure_ascii=False) writes it, in
 * UTF-8.  Lone surrogates have no UTF-8 form: refused. */
static int
enc_str(sb_enc *e, PyObject *s)
{
    Py_ssize_t n, i;
    char *p;
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(s) < 0)
        return -1;
#endif
    n = PyUnicode_GET_LENGTH(s);
    if (n > (PY_SSIZE_T_MAX - 2) / 6) {
        PyErr_NoMemory();
        return -1;
    }
    /* worst case: every character a 6-byte \u00XX; + 8: put_ascii_tail
     * stores a whole word even for a 1-character string (found by
     * fuzz_json_roundtrip: a 1-byte stack-buffer overflow at the end of the
     * encoder's inline buffer) */
    if (enc_reserve(e, 6 * (size_t)n + 2 + 8) < 0)
        return -1;
    p = e->p;
    *p++ = '"';
    if (PyUnicode_IS_ASCII(s)) {
        p = put_ascii(p, PyUnicode_1BYTE_DATA(s), n, PyUnicode_IS_COMPACT(s));
    }
    else {
        int kind = PyUnicode_KIND(s);
        const void *data = PyUnicode_DATA(s);
        if (kind == PyUnicode_1BYTE_KIND) {
            const Py_UCS1 *d = data;
            for (i = 0; i < n; i++)
                p = put_utf8(p, d[i]);
        }
        else if (kind == PyUnicode_2BYTE_KIND) {
            const Py_UCS2 *d = data;
            for (i = 0; i < n; i++) {
                Py_UCS2 c = d[i];
                if (c >= 0xD800 && c <= 0xDFFF)
                    goto surrogate;
                p = put_utf8(p, c);
            }
        }
        else {
            const Py_UCS4 *d = data;
            for (i = 0; i < n; i++) {
                Py_UCS4 c = d[i];
                if (c >= 0xD800 && c <= 0xDFFF)
                    goto surrogate;
                p = put_utf8(p, c);
            }
        }
    }
    *p++ = '"';
    e->p = p;
    return 0;
surrogate: {
        char cp[8];   /* PyUnicode_FromFormat has no %04X */
        snprintf(cp, sizeof cp, "%04X", (unsigned)PyUnicode_READ_CHAR(s, i));
        return enc_fail(e, PyExc_ValueError,
                        "str with a lone surrogate U+%s at index %zd has no UTF-8 form", cp, i);
    }
}

static PyObject *
quote_key(PyObject *key)
{
    sb_enc e;
    PyObject *r = NULL;
    e.buf = e.p = e.stackbuf;
    e.end = e.stackbuf + sizeof e.stackbuf;
    e.err_msg = NULL;
    if (enc_raw(&e, "[", 1) == 0 && enc_str(&e, key) == 0 && enc_raw(&e, "]", 1) == 0)
        r = PyUnicode_DecodeUTF8(e.buf, e.p - e.buf, "strict");
    else if (e.err_msg != NULL)
        r = PyUnicode_FromFormat("[%R]", key);    /* lone surrogate: Python's repr */
    Py_XDECREF(e.err_msg);
    if (e.buf != e.stackbuf)
        PyMem_Free(e.buf);
    return r;
}

/* ---- numbers ----------------------------------------------------------- */

static char *
put_u64(char *p, unsigned long long v)
{
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        *p++ = tmp[--n];
    return p;
}

/* Beyond 64 bits: int.__repr__, as json.dumps does (also for int
 * subclasses, whose own __repr__ is ignored). */
static int
enc_bigint(sb_enc *e, PyObject *o)
{
    PyObject *r = PyLong_Type.tp_repr(o), *exc = NULL;
    const char *s;
    Py_ssize_t n;
    int rc = -1;
    if (r == NULL) {
        /* more digits than sys.get_int_max_str_digits() allows */
        if (PyErr_ExceptionMatches(PyExc_ValueError)) {
            exc = PyErr_GetRaisedException();
            rc = enc_fail(e, PyExc_ValueError, "int too large to write: %S", exc ? exc : Py_None);
        }
        goto done;
    }
    s = PyUnicode_AsUTF8AndSize(r, &n);
    if (s != NULL)
        rc = enc_raw(e, s, (size_t)n);
done:
    Py_XDECREF(r);
    Py_XDECREF(exc);
    return rc;
}

static int
enc_int(sb_enc *e, PyObject *o)
{
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    char *p;
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (overflow)
        return enc_bigint(e, o);
    if (enc_reserve(e, 24) < 0)
        return -1;
    p = e->p;
    if (v < 0) {
        *p++ = '-';
        p = put_u64(p, 0ULL - (unsigned long long)v);
    }
    else {
        p = put_u64(p, (unsigned long long)v);
    }
    e->p = p;
    return 0;
}

static const double POW10[] = {
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
};
static const unsigned long long POW10U[] = {
    1ULL, 10ULL, 100ULL, 1000ULL, 10000ULL, 100000ULL, 1000000ULL, 10000000ULL,
    100000000ULL, 1000000000ULL, 10000000000ULL, 100000000000ULL, 1000000000000ULL,
    10000000000000ULL, 100000000000000ULL, 1000000000000000ULL, 10000000000000000ULL,
    100000000000000000ULL, 1000000000000000000ULL,
};

/* repr() of a "short" float without David Gay's dtoa: for 1e-3 <= |x| < 1e15
 * find the fewest decimals k with r / 10^k == x (r < 10^15 < 2^53 and 10^k
 * exact, so the division is correctly rounded, exactly like parsing "r e-k").
 * Decimal steps 10^-k are then > 4 ulp(x), so at most one k-digit decimal
 * rounds to x and repr's "shortest, then closest" choice is that one.
 * Returns NULL when the fast path does not apply. */
static char *
put_short_float(char *p, double x)
{
    double ax = fabs(x);
    int k;
    if (!(ax >= 1e-3 && ax < 1e15))
        return NULL;
    for (k = 0; k <= 18; k++) {
        double y = ax * POW10[k];
        unsigned long long r, ip, fp;
        if (y >= 1e15)
            return NULL;
        r = (unsigned long long)(y + 0.5);
        if ((double)r / POW10[k] != ax)
            continue;
        if (x < 0)
            *p++ = '-';
        ip = r / POW10U[k];
        fp = r % POW10U[k];
        p = put_u64(p, ip);
        *p++ = '.';
        if (k == 0) {
            *p++ = '0';
        }
        else {
            for (int i = k - 1; i >= 0; i--) {
                p[i] = (char)('0' + fp % 10);
                fp /= 10;
            }
            p += k;
        }
        return p;
    }
    return NULL;
}

static int
enc_float(sb_enc *e, PyObject *o)
{
    double x = PyFloat_AS_DOUBLE(o);
    char *s, *q;
    int rc;
    if (!isfinite(x))
        return enc_fail(e, PyExc_ValueError,
                        "float %s is not JSON (JSON has no NaN or Infinity)",
                        isnan(x) ? "nan" : (x > 0 ? "inf" : "-inf"));
    if (enc_reserve(e, 40) < 0)
        return -1;
    if (x == 0.0) {
        return enc_raw(e, signbit(x) ? "-0.0" : "0.0", signbit(x) ? 4 : 3);
    }
    q = put_short_float(e->p, x);
    if (q != NULL) {
        e->p = q;
        return 0;
    }
    /* float.__repr__ exactly, as json.dumps uses it */
    s = PyOS_double_to_string(x, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (s == NULL)
        return -1;
    rc = enc_raw(e, s, strlen(s));
    PyMem_Free(s);
    return rc;
}

/* ---- containers -------------------------------------------------------- */

/* A value whose encoding runs no Python code, so it cannot be freed under
 * us: no need to hold a reference while writing it. */
static inline int
is_plain(PyObject *v)
{
    PyTypeObject *t = Py_TYPE(v);
    return t == &PyUnicode_Type || t == &PyLong_Type || t == &PyFloat_Type ||
           v == Py_None || v == Py_True || v == Py_False;
}

static int
enter(sb_enc *e, void *container)
{
    if (++e->depth > SB_JSON_MAX_DEPTH) {
        e->too_deep = 1;
        trail_push(&e->trail, container, NULL);
        return enc_fail(e, PyExc_ValueError, "nesting deeper than %d levels", SB_JSON_MAX_DEPTH);
    }
    return 0;
}

static int
enc_key_value(sb_enc *e, PyObject *container, PyObject *k, PyObject *v, int first)
{
    int rc;
    if (!PyUnicode_Check(k)) {
        PyObject *tn = type_name(Py_TYPE(k));
        rc = enc_fail(e, PyExc_TypeError,
                      "dict key %R is %S, not str (json.dumps would turn it into a string; "
                      "sermas_bus.json refuses non-str keys)", k, tn ? tn : Py_None);
        Py_XDECREF(tn);
        return rc;
    }
    if (enc_reserve(e, 1) < 0)
        return -1;
    if (!first)
        *e->p++ = ',';
    if (enc_str(e, k) < 0) {
        if (e->err_msg != NULL)
            Py_SETREF(e->err_msg, PyUnicode_FromFormat("dict key %R: %U", k, e->err_msg));
        if (e->err_msg == NULL)
            e->err_type = NULL;
        return -1;
    }
    if (enc_reserve(e, 1) < 0)
        return -1;
    *e->p++ = ':';
    if (is_plain(v)) {
        rc = enc_obj(e, v);
        if (rc < 0)
            trail_push(&e->trail, container, component_for_key(k));
        return rc;
    }
    /* user code may run below (dataclass fields, tzinfo, ...) and mutate
     * the dict: hold the key and value for as long as we use them */
    Py_INCREF(k);
    Py_INCREF(v);
    rc = enc_obj(e, v);
    if (rc < 0)
        trail_push(&e->trail, container, component_for_key(k));
    Py_DECREF(v);
    Py_DECREF(k);
    return rc;
}

/* Members of a dict subclass (OrderedDict, ...) in the order of its items(),
 * as json.dumps takes them. */
static int
enc_dict_items(sb_enc *e, PyObject *d)
{
    PyObject *items = PyMapping_Items(d);
    Py_ssize_t i;
    int rc = -1;
    if (items == NULL)
        return -1;
    for (i = 0; i < PyList_GET_SIZE(items); i++) {
        PyObject *kv = PyList_GET_ITEM(items, i);
        if (!PyTuple_Check(kv) || PyTuple_GET_SIZE(kv) != 2) {
            enc_fail(e, PyExc_ValueError, "items() must return (key, value) pairs");
            goto done;
        }
        if (enc_key_value(e, d, PyTuple_GET_ITEM(kv, 0), PyTuple_GET_ITEM(kv, 1), i == 0) < 0)
            goto done;
    }
    rc = 0;
done:
    Py_DECREF(items);
    return rc;
}

static int
enc_dict(sb_enc *e, PyObject *d)
{
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    int first = 1;
    if (enter(e, d) < 0)
        return -1;
    if (enc_raw(e, "{", 1) < 0)
        return -1;
    if (PyDict_CheckExact(d)) {
        while (PyDict_Next(d, &pos, &k, &v)) {
            if (enc_key_value(e, d, k, v, first) < 0)
                return -1;
            first = 0;
        }
    }
    else if (enc_dict_items(e, d) < 0) {
        return -1;
    }
    if (enc_raw(e, "}", 1) < 0)
        return -1;
    e->depth--;
    return 0;
}

static int
enc_item(sb_enc *e, PyObject *container, Py_ssize_t i, PyObject *v)
{
    int rc;
    if (is_plain(v)) {
        rc = enc_obj(e, v);
    }
    else {
        Py_INCREF(v);
        rc = enc_obj(e, v);
        Py_DECREF(v);
    }
    if (rc < 0)
        trail_push(&e->trail, container, component_for_index(i));
    return rc;
}

static int
enc_list(sb_enc *e, PyObject *l)
{
    Py_ssize_t i;
    if (enter(e, l) < 0 || enc_raw(e, "[", 1) < 0)
        return -1;
    /* the size is read again every time: user code may shrink the list */
    for (i = 0; i < PyList_GET_SIZE(l); i++) {
        if (i > 0 && enc_raw(e, ",", 1) < 0)
            return -1;
        if (enc_item(e, l, i, PyList_GET_ITEM(l, i)) < 0)
            return -1;
    }
    if (enc_raw(e, "]", 1) < 0)
        return -1;
    e->depth--;
    return 0;
}

static int
enc_tuple(sb_enc *e, PyObject *t)
{
    Py_ssize_t i, n = PyTuple_GET_SIZE(t);
    if (enter(e, t) < 0 || enc_raw(e, "[", 1) < 0)
        return -1;
    for (i = 0; i < n; i++) {
        if (i > 0 && enc_raw(e, ",", 1) < 0)
            return -1;
        if (enc_item(e, t, i, PyTuple_GET_ITEM(t, i)) < 0)
            return -1;
    }
    if (enc_raw(e, "]", 1) < 0)
        return -1;
    e->depth--;
    return 0;
}

/* ---- datetime, Enum, dataclasses --------------------------------------- */

static inline char *
put2(char *p, int v)
{
    p[0] = (char)('0' + v / 10);
    p[1] = (char)('0' + v % 10);
    return p + 2;
}

static char *
put_date(char *p, PyObject *o)
{
    int y = PyDateTime_GET_YEAR(o);
    p = put2(p, y / 100);
    p = put2(p, y % 100);
    *p++ = '-';
    p = put2(p, PyDateTime_GET_MONTH(o));
    *p++ = '-';
    return put2(p, PyDateTime_GET_DAY(o));
}

static char *
put_time(char *p, PyObject *o)
{
    p = put2(p, PyDateTime_DATE_GET_HOUR(o));
    *p++ = ':';
    p = put2(p, PyDateTime_DATE_GET_MINUTE(o));
    *p++ = ':';
    return put2(p, PyDateTime_DATE_GET_SECOND(o));
}

/* datetime:
 *   UTC (utcoffset() == 0)  2024-05-01T12:00:00.123Z, milliseconds always,
 *                           microseconds truncated: JavaScript's toISOString()
 *   naive                   isoformat(): 2024-05-01T12:00:00[.ffffff]
 *   other offsets           isoformat(): 2024-05-01T14:00:00+02:00 */
static int
put_datetime(sb_enc *e, PyObject *o, int utc)
{
    int us = PyDateTime_DATE_GET_MICROSECOND(o);
    char *p;
    if (enc_reserve(e, 40) < 0)
        return -1;
    p = e->p;
    *p++ = '"';
    p = put_date(p, o);
    *p++ = 'T';
    p = put_time(p, o);
    if (utc) {
        int ms = us / 1000;
        *p++ = '.';
        *p++ = (char)('0' + ms / 100);
        p = put2(p, ms % 100);
        *p++ = 'Z';
    }
    else if (us) {
        *p++ = '.';
        p = put2(p, us / 10000);
        p = put2(p, us / 100 % 100);
        p = put2(p, us % 100);
    }
    *p++ = '"';
    e->p = p;
    return 0;
}

static int
enc_datetime(sb_enc *e, PyObject *o)
{
    sb_json_state *js = e->js;
    PyObject *tz = PyDateTime_DATE_GET_TZINFO(o), *off = NULL, *iso = NULL;
    int utc = tz == js->utc, rc = -1;
    if (!utc && tz != Py_None) {
        off = PyObject_CallMethodOneArg(tz, js->str_utcoffset, o);
        if (off == NULL)
            goto done;
        if (PyObject_TypeCheck(off, (PyTypeObject *)js->timedelta_type) &&
            PyDateTime_DELTA_GET_DAYS(off) == 0 && PyDateTime_DELTA_GET_SECONDS(off) == 0 &&
            PyDateTime_DELTA_GET_MICROSECONDS(off) == 0) {
            utc = 1;
        }
        else if (off != Py_None) {      /* None: naive after all */
            iso = PyObject_CallMethodNoArgs(o, js->str_isoformat);
            if (iso == NULL)
                goto done;
            rc = PyUnicode_Check(iso) ? enc_str(e, iso)
                                      : enc_fail(e, PyExc_TypeError, "isoformat() did not return a str");
            goto done;
        }
    }
    rc = put_datetime(e, o, utc);
done:
    Py_XDECREF(off);
    Py_XDECREF(iso);
    return rc;
}

static int
enc_date(sb_enc *e, PyObject *o)
{
    char *p;
    if (enc_reserve(e, 12) < 0)
        return -1;
    p = e->p;
    *p++ = '"';
    p = put_date(p, o);
    *p++ = '"';
    e->p = p;
    return 0;
}

/* The field names of a dataclass type, as dataclasses.fields() lists them
 * (declared order, ClassVar and InitVar pseudo-fields left out).  Cached per
 * type, checked against the type's current __dataclass_fields__; the cache
 * is bounded because it keeps the types alive. */
#define DC_CACHE_MAX 256

static PyObject *
dc_field_names(sb_json_state *js, PyTypeObject *tp, PyObject *fields)
{
    PyObject *entry, *names = NULL, *list = NULL, *key, *f, *name, *ft;
    Py_ssize_t pos = 0;
    entry = PyDict_GetItemWithError(js->dc_cache, (PyObject *)tp);
    if (entry != NULL && PyTuple_GET_ITEM(entry, 0) == fields)
        return Py_NewRef(PyTuple_GET_ITEM(entry, 1));
    if (PyErr_Occurred())
        return NULL;
    if (js->dc_field_marker == NULL) {
        /* dataclasses is imported already: the type was made by it */
        PyObject *mod = PyImport_ImportModule("dataclasses");
        PyObject *marker = mod ? PyObject_GetAttrString(mod, "_FIELD") : NULL;
        Py_XDECREF(mod);
        if (marker == NULL)
            return NULL;
        if (js->dc_field_marker == NULL)   /* the import may have let another thread in */
            js->dc_field_marker = marker;
        else
            Py_DECREF(marker);
    }
    list = PyList_New(0);
    if (list == NULL)
        return NULL;
    while (PyDict_Next(fields, &pos, &key, &f)) {
        Py_INCREF(f);
        ft = PyObject_GetAttr(f, js->str_field_type);
        if (ft == NULL) {
            Py_DECREF(f);
            goto done;
        }
        Py_DECREF(ft);   /* compared by identity only; the marker is alive */
        if (ft != js->dc_field_marker) {
            Py_DECREF(f);
            continue;
        }
        name = PyObject_GetAttr(f, js->str_name);
        Py_DECREF(f);
        if (name == NULL)
            goto done;
        if (!PyUnicode_Check(name)) {
            Py_DECREF(name);
            PyErr_SetString(PyExc_TypeError, "dataclass field name is not a str");
            goto done;
        }
        PyUnicode_InternInPlace(&name);
        if (PyList_Append(list, name) < 0) {
            Py_DECREF(name);
            goto done;
        }
        Py_DECREF(name);
    }
    names = PyList_AsTuple(list);
    if (names == NULL)
        goto done;
    if (PyDict_GET_SIZE(js->dc_cache) >= DC_CACHE_MAX)
        PyDict_Clear(js->dc_cache);
    entry = PyTuple_Pack(2, fields, names);
    if (entry == NULL || PyDict_SetItem(js->dc_cache, (PyObject *)tp, entry) < 0) {
        Py_XDECREF(entry);
        Py_CLEAR(names);
        goto done;
    }
    Py_DECREF(entry);
done:
    Py_DECREF(list);
    return names;
}

static int
enc_dataclass(sb_enc *e, PyObject *o, PyObject *fields)
{
    PyObject *names = dc_field_names(e->js, Py_TYPE(o), fields);
    Py_ssize_t i, n;
    int rc = -1;
    if (names == NULL)
        return -1;
    if (enter(e, o) < 0 || enc_raw(e, "{", 1) < 0)
        goto done;
    n = PyTuple_GET_SIZE(names);
    for (i = 0; i < n; i++) {
        PyObject *k = PyTuple_GET_ITEM(names, i);
        PyObject *v = PyObject_GetAttr(o, k);
        int r;
        if (v == NULL) {
            trail_push(&e->trail, o, component_for_key(k));
            goto done;
        }
        r = enc_key_value(e, o, k, v, i == 0);
        Py_DECREF(v);
        if (r < 0)
            goto done;
    }
    if (enc_raw(e, "}", 1) < 0)
        goto done;
    e->depth--;
    rc = 0;
done:
    Py_DECREF(names);
    return rc;
}

static int
enc_enum(sb_enc *e, PyObject *o)
{
    /* _value_ is the member's value (what .value returns, without going
     * through enum's Python-level property) */
    PyObject *v = PyObject_GetAttr(o, e->js->str_value_);
    int rc = -1;
    if (v == NULL || enter(e, o) < 0)
        goto done;
    rc = enc_obj(e, v);
    if (rc == 0)
        e->depth--;
    else
        trail_push(&e->trail, o, NULL);
done:
    Py_XDECREF(v);
    return rc;
}

/* Everything but the exact builtin types: subclasses first, in json.dumps'
 * order (str, int, float, list/tuple, dict), then our additions. */
static int
enc_other(sb_enc *e, PyObject *o)
{
    sb_json_state *js = e->js;
    PyTypeObject *tp = Py_TYPE(o);
    PyObject *fields;
    int rc;

    if (PyUnicode_Check(o))
        return enc_str(e, o);
    if (PyLong_Check(o))             /* int subclasses, IntEnum: int.__repr__ */
        return enc_int(e, o);
    if (PyFloat_Check(o))
        return enc_float(e, o);
    if (PyList_Check(o))
        return enc_list(e, o);
    if (PyTuple_Check(o))            /* namedtuples included, as json.dumps */
        return enc_tuple(e, o);
    if (PyDict_Check(o))
        return enc_dict(e, o);
    if (PyBytes_Check(o) || PyByteArray_Check(o) || PyMemoryView_Check(o)) {
        if (PyBytes_CheckExact(o))
            return enc_fail(e, PyExc_TypeError, "bytes are sent raw, not as JSON");
        return enc_fail(e, PyExc_TypeError, "bytes are sent raw, not as JSON (got %s)", tp->tp_name);
    }
    if (PyObject_TypeCheck(o, (PyTypeObject *)js->datetime_type))
        return enc_datetime(e, o);
    if (PyObject_TypeCheck(o, (PyTypeObject *)js->date_type))
        return enc_date(e, o);
    if (PyType_IsSubtype(tp, (PyTypeObject *)js->enum_type))
        return enc_enum(e, o);
    if (!PyType_Check(o)) {
        fields = PyObject_GetAttr((PyObject *)tp, js->str_dc_fields);
        if (fields != NULL) {
            rc = PyDict_Check(fields) ? enc_dataclass(e, o, fields) : 1;
            Py_DECREF(fields);
            if (rc <= 0)
                return rc;
        }
        else if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
            PyErr_Clear();
        }
        else {
            return -1;
        }
    }
    PyObject *tn = type_name(tp);
    rc = enc_fail(e, PyExc_TypeError, "cannot encode object of type %S as JSON", tn ? tn : Py_None);
    Py_XDECREF(tn);
    return rc;
}

static int
enc_obj(sb_enc *e, PyObject *o)
{
    PyTypeObject *t = Py_TYPE(o);
    if (t == &PyUnicode_Type)
        return enc_str(e, o);
    if (t == &PyDict_Type)
        return enc_dict(e, o);
    if (t == &PyLong_Type)
        return enc_int(e, o);
    if (t == &PyFloat_Type)
        return enc_float(e, o);
    if (o == Py_None)
        return enc_raw(e, "null", 4);
    if (o == Py_True)
        return enc_raw(e, "true", 4);
    if (o == Py_False)
        return enc_raw(e, "false", 5);
    if (t == &PyList_Type)
        return enc_list(e, o);
    if (t == &PyTuple_Type)
        return enc_tuple(e, o);
    return enc_other(e, o);
}

/* PEP 678's note for Pythons without BaseException.add_note (3.9, 3.10):
 * append to the exception's __notes__ list, as add_note does.  New
 * reference to None, or NULL with an exception. */
static PyObject *
append_note(PyObject *exc, PyObject *note)
{
    PyObject *notes = PyObject_GetAttrString(exc, "__notes__");
    int rc;
    if (notes == NULL) {
        PyErr_Clear();
        if ((notes = PyList_New(0)) == NULL)
            return NULL;
        if (PyObject_SetAttrString(exc, "__notes__", notes) < 0) {
            Py_DECREF(notes);
            return NULL;
        }
    }
    rc = PyList_Check(notes) ? PyList_Append(notes, note) : 0;   /* not a list: leave it alone */
    Py_DECREF(notes);
    return rc < 0 ? NULL : Py_NewRef(Py_None);
}

/* An exception raised by Python code (a property, a tzinfo, ...) or a
 * MemoryError keeps its type; the place is added as a note. */
static void
enc_note_place(sb_enc *e)
{
    PyObject *ev, *path, *note = NULL, *r = NULL;
    if (!PyErr_Occurred())
        PyErr_SetString(PyExc_SystemError, "json encoder failed without an error");
    ev = PyErr_GetRaisedException();
    path = trail_path(&e->trail, e->trail.n);
    if (path != NULL)
        note = PyUnicode_FromFormat("while encoding %U as JSON", path);
    if (note != NULL && ev != NULL)
        r = PyObject_HasAttrString(ev, "add_note") ? PyObject_CallMethod(ev, "add_note", "O", note)   /* 3.11+ */
                                                   : append_note(ev, note);
    PyErr_Clear();     /* a failure to add the note must not replace the error */
    Py_XDECREF(r);
    Py_XDECREF(note);
    Py_XDECREF(path);
    PyErr_SetRaisedException(ev);
}

/* After the depth limit: a container met twice on the way down (steps
 * root-first are steps[n-1] ... steps[0]) is a cycle, reported where it
 * closes.  Returns 1 when it raised. */
static int
enc_raise_cycle(sb_enc *e)
{
    sb_trail *t = &e->trail;
    Py_ssize_t n = t->n;
    for (Py_ssize_t j = n - 1; j >= 0; j--) {
        for (Py_ssize_t i = n - 1; i > j; i--) {
            if (t->steps[i].container == t->steps[j].container) {
                PyObject *where = trail_path(t, n - 1 - j);
                PyObject *first = trail_path(t, n - 1 - i);
                if (where != NULL && first != NULL)
                    PyErr_Format(PyExc_ValueError, "%U: circular reference: this %s is %U, which contains it",
                                 where, t->steps[j].kind, first);
                Py_XDECREF(where);
                Py_XDECREF(first);
                return 1;
            }
        }
    }
    return 0;
}

/* Raise the encoder's error, with its path. */
static void
enc_raise(sb_enc *e)
{
    PyObject *path;
    if (e->err_type == NULL) {
        enc_note_place(e);
    }
    else if (!(e->too_deep && enc_raise_cycle(e))) {
        path = trail_path(&e->trail, e->trail.n);
        if (path != NULL)
            PyErr_Format(e->err_type, "%U: %U", path, e->err_msg);
        Py_XDECREF(path);
    }
}

static PyObject *
sb_json_dumps(PyObject *mod, PyObject *obj)
{
    sb_enc e;
    PyObject *res = NULL;
    e.buf = e.p = e.stackbuf;
    e.end = e.stackbuf + sizeof e.stackbuf;
    e.js = &((sb_state *)PyModule_GetState(mod))->json;
    e.depth = 0;
    e.too_deep = 0;
    e.err_type = NULL;
    e.err_msg = NULL;
    e.trail.steps = NULL;
    e.trail.n = e.trail.cap = 0;

    if (enc_obj(&e, obj) < 0)
        enc_raise(&e);
    else
        res = PyBytes_FromStringAndSize(e.buf, e.p - e.buf);

    Py_XDECREF(e.err_msg);
    trail_free(&e.trail);
    if (e.buf != e.stackbuf)
        PyMem_Free(e.buf);
    return res;
}

/* ======================================================================
 * decoder
 * ====================================================================== */

typedef struct {
    const unsigned char *start, *p, *end;
    sb_json_state *js;
    int depth;
    const char *err;                 /* our own error: a static message ... */
    PyObject *err_obj;               /* ... or an owned one */
    const unsigned char *err_at;
    sb_trail trail;
    PyObject **stack;                /* elements of the lists being built */
    Py_ssize_t sp, scap;
    char *scratch;                   /* strings with escapes are unescaped here */
    size_t scratch_cap;
    PyObject *inline_stack[DEC_STACK_ITEMS];
} sb_dec;

static PyObject *dec_value(sb_dec *d);

static PyObject *
dec_fail(sb_dec *d, const unsigned char *at, const char *msg)
{
    d->err = msg;
    d->err_at = at;
    return NULL;
}

static inline void
skip_ws(sb_dec *d)
{
    const unsigned char *p = d->p, *end = d->end;
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
        p++;
    d->p = p;
}

/* byte classes inside a string: 0 plain ASCII, 1 '"', 2 '\\', 3 control
 * character (must be escaped), 4 non-ASCII (part of a UTF-8 sequence) */
static const unsigned char STR_CLASS[256] = {
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3,
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3,
    0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4,
    4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4,
    4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4,
    4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4,
    4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4,
    4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4,
    4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4,
    4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4,
};

/* Any byte of w that is not plain ASCII inside a string. */
static inline uint64_t
str_word_special(uint64_t w)
{
    uint64_t q = w ^ (ONES * '"'), b = w ^ (ONES * '\\');
    return ((((w - ONES * 0x20) & ~w) | ((q - ONES) & ~q) | ((b - ONES) & ~b)) & HIGHS) | (w & HIGHS);
}

static PyObject *
ascii_str(const unsigned char *s, Py_ssize_t n)
{
    PyObject *r = PyUnicode_New(n, 127);
    if (r != NULL)
        memcpy(PyUnicode_1BYTE_DATA(r), s, (size_t)n);
    return r;
}

/* UTF-8 to str, strictly (surrogates, overlongs and truncations refused),
 * or "surrogatepass" for text we built ourselves with escaped lone
 * surrogates.  `at` is where the bytes came from, for the error. */
static PyObject *
utf8_str(sb_dec *d, const char *s, Py_ssize_t n, const char *errors, const unsigned char *at)
{
    PyObject *r = PyUnicode_DecodeUTF8(s, n, errors);
    if (r == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
        Py_ssize_t start = 0;
        PyObject *ev = PyErr_GetRaisedException();
        if (ev == NULL || PyUnicodeDecodeError_GetStart(ev, &start) < 0)
            PyErr_Clear();
        Py_XDECREF(ev);
        dec_fail(d, at + start, "invalid UTF-8 in a string");
    }
    return r;
}

static int
scratch_reserve(sb_dec *d, size_t used, size_t more)
{
    size_t cap;
    char *s;
    if (d->scratch_cap - used >= more)
        return 0;
    cap = d->scratch_cap ? d->scratch_cap * 2 : 256;
    while (cap - used < more)
        cap *= 2;
    s = PyMem_Realloc(d->scratch, cap);
    if (s == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    d->scratch = s;
    d->scratch_cap = cap;
    return 0;
}

static int
hex4(const unsigned char *p, Py_UCS4 *out)
{
    Py_UCS4 v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned c = p[i], x;
        if (c >= '0' && c <= '9')
            x = c - '0';
        else if (c >= 'a' && c <= 'f')
            x = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            x = c - 'A' + 10;
        else
            return -1;
        v = (v << 4) | x;
    }
    *out = v;
    return 0;
}

/* The rest of a string with at least one backslash: s is the first byte
 * after the opening quote, p the first backslash. */
static PyObject *
dec_string_escaped(sb_dec *d, const unsigned char *s, const unsigned char *p, int nonascii)
{
    const unsigned char *end = d->end, *q = s;
    size_t n = 0;
    int lone = 0;
    for (;;) {
        if (p >= end)
            return dec_fail(d, s - 1, "unterminated string");
        unsigned cls = STR_CLASS[*p];
        if (cls == 0) {
            p++;
            continue;
        }
        if (cls == 4) {
            nonascii = 1;
            p++;
            continue;
        }
        if (cls == 3)
            return dec_fail(d, p, "control character in a string (must be escaped)");
        /* '"' or '\\': flush the raw run [q, p) */
        if (scratch_reserve(d, n, (size_t)(p - q) + 4) < 0)
            return NULL;
        memcpy(d->scratch + n, q, (size_t)(p - q));
        n += (size_t)(p - q);
        if (cls == 1)
            break;
        if (p + 1 >= end)
            return dec_fail(d, s - 1, "unterminated string");
        char *o = d->scratch + n;
        switch (p[1]) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '/': *o++ = '/'; break;
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'n': *o++ = '\n'; break;
        case 'r': *o++ = '\r'; break;
        case 't': *o++ = '\t'; break;
        case 'u': {
            Py_UCS4 c, c2;
            if (end - p < 6 || hex4(p + 2, &c) < 0)
                return dec_fail(d, p, "invalid \\u escape (needs 4 hex digits)");
            if (c >= 0xD800 && c <= 0xDBFF && end - p >= 12 && p[6] == '\\' && p[7] == 'u' &&
                hex4(p + 8, &c2) == 0 && c2 >= 0xDC00 && c2 <= 0xDFFF) {
                c = 0x10000 + ((c - 0xD800) << 10) + (c2 - 0xDC00);
                p += 6;
            }
            else if (c >= 0xD800 && c <= 0xDFFF) {
                lone = 1;    /* kept as json.loads keeps it; written CESU-style */
            }
            if (c >= 0x80)
                nonascii = 1;
            if (c < 0x80) {
                *o++ = (char)c;
            }
            else if (c < 0x800) {
                *o++ = (char)(0xC0 | (c >> 6));
                *o++ = (char)(0x80 | (c & 0x3F));
            }
            else if (c < 0x10000) {
                *o++ = (char)(0xE0 | (c >> 12));
                *o++ = (char)(0x80 | ((c >> 6) & 0x3F));
                *o++ = (char)(0x80 | (c & 0x3F));
            }
            else {
                *o++ = (char)(0xF0 | (c >> 18));
                *o++ = (char)(0x80 | ((c >> 12) & 0x3F));
                *o++ = (char)(0x80 | ((c >> 6) & 0x3F));
                *o++ = (char)(0x80 | (c & 0x3F));
            }
            p += 4;
            break;
        }
        default:
            return dec_fail(d, p, "invalid escape in a string");
        }
        n = (size_t)(o - d->scratch);
        p += 2;
        q = p;
    }
    d->p = p + 1;
    if (!nonascii)
        return ascii_str((const unsigned char *)d->scratch, (Py_ssize_t)n);
    if (lone) {
        /* "surrogatepass" would also let raw (invalid) surrogate bytes of
         * the input through: check the raw text strictly first */
        PyObject *raw = utf8_str(d, (const char *)s, p - s, NULL, s);
        if (raw == NULL)
            return NULL;
        Py_DECREF(raw);
        return utf8_str(d, d->scratch, (Py_ssize_t)n, "surrogatepass", s);
    }
    return utf8_str(d, d->scratch, (Py_ssize_t)n, NULL, s);
}

/* Scan a string body starting after the opening quote.  Returns the class
 * of the byte it stopped at (1 closing quote, 2 backslash, 3 control, 5 end
 * of input) and whether non-ASCII bytes were seen. */
static inline int
scan_string(const unsigned char **pp, const unsigned char *end, int *nonascii)
{
    const unsigned char *p = *pp;
    for (;;) {
        while (end - p >= 8) {
            uint64_t w;
            memcpy(&w, p, 8);
            if (str_word_special(w))
                break;
            p += 8;
        }
        if (p >= end) {
            *pp = p;
            return 5;
        }
        unsigned cls = STR_CLASS[*p];
        if (cls == 0) {
            p++;
        }
        else if (cls == 4) {
            *nonascii = 1;
            p++;
        }
        else {
            *pp = p;
            return (int)cls;
        }
    }
}

static PyObject *
dec_string(sb_dec *d)
{
    const unsigned char *s = d->p + 1, *p = s;
    int nonascii = 0;
    int cls = scan_string(&p, d->end, &nonascii);
    if (cls == 1) {
        d->p = p + 1;
        if (!nonascii)
            return ascii_str(s, p - s);
        return utf8_str(d, (const char *)s, p - s, NULL, s);
    }
    if (cls == 2)
        return dec_string_escaped(d, s, p, nonascii);
    if (cls == 3)
        return dec_fail(d, p, "control character in a string (must be escaped)");
    return dec_fail(d, s - 1, "unterminated string");
}

/* Object keys repeat from event to event: short ASCII keys are kept in a
 * small direct-mapped cache, so a hit costs no allocation and no hashing
 * (the cached str carries its hash).  Only used with the GIL held, and
 * nothing borrowed from it lives across an allocation. */
#define KEY_CACHE_MAXLEN 64

/* A hash of a key's bytes, word by word.  Keys under 8 bytes are read with
 * one load ending at the key's last byte when the buffer has room before
 * it (the opening quote and more), else assembled byte by byte to the same
 * value. */
static inline uint64_t
key_hash(const unsigned char *s, Py_ssize_t n, const unsigned char *start)
{
    const uint64_t K = 0x9E3779B97F4A7C15ULL;
    uint64_t a = 0, h = (uint64_t)n * K;
    if (n >= 8) {
        Py_ssize_t i;
        for (i = 0; i + 8 < n; i += 8) {
            memcpy(&a, s + i, 8);
            h = (h ^ a) * 0xff51afd7ed558ccdULL;
        }
        memcpy(&a, s + n - 8, 8);
    }
#if PY_LITTLE_ENDIAN
    else if (n > 0 && s + n - 8 >= start) {
        memcpy(&a, s + n - 8, 8);
        a >>= 8 * (8 - n);
    }
#endif
    else {
        for (Py_ssize_t i = 0; i < n; i++)
            a |= (uint64_t)s[i] << (8 * i);
    }
    h = (h ^ a) * K;
    return h ^ (h >> 32);
}

static PyObject *
dec_key(sb_dec *d)
{
    const unsigned char *s = d->p + 1, *p = s;
    int nonascii = 0;
    int cls = scan_string(&p, d->end, &nonascii);
    Py_ssize_t n = p - s;
    if (cls == 1 && !nonascii && n <= KEY_CACHE_MAXLEN) {
        uint64_t h = key_hash(s, n, d->start);
        sb_json_key *slot = &d->js->keys[h & (SB_JSON_KEY_CACHE - 1)];
        PyObject *k = slot->str;
        d->p = p + 1;
        if (k != NULL && slot->hash == h && PyUnicode_GET_LENGTH(k) == n &&
            memcmp(PyUnicode_1BYTE_DATA(k), s, (size_t)n) == 0)
            return Py_NewRef(k);
        k = ascii_str(s, n);
        if (k == NULL)
            return NULL;
        if (PyObject_Hash(k) == -1) {
            Py_DECREF(k);
            return NULL;
        }
        /* slot is re-read: nothing borrowed survives the allocation above */
        slot = &d->js->keys[h & (SB_JSON_KEY_CACHE - 1)];
        Py_XSETREF(slot->str, Py_NewRef(k));
        slot->hash = h;
        return k;
    }
    return dec_string(d);
}

static PyObject *
number_slow(sb_dec *d, const unsigned char *s, Py_ssize_t n, int is_float)
{
    char small[64], *buf = small, *endp = NULL;
    PyObject *r = NULL;
    if ((size_t)n >= sizeof small) {
        buf = PyMem_Malloc((size_t)n + 1);
        if (buf == NULL)
            return PyErr_NoMemory();
    }
    memcpy(buf, s, (size_t)n);
    buf[n] = '\0';
    if (is_float) {
        /* the same correctly rounded conversion as float(): 1e400 -> inf */
        double x = PyOS_string_to_double(buf, &endp, NULL);
        if (x == -1.0 && PyErr_Occurred())
            goto done;
        r = PyFloat_FromDouble(x);
    }
    else {
        r = PyLong_FromString(buf, &endp, 10);
        if (r == NULL && PyErr_ExceptionMatches(PyExc_ValueError)) {
            /* more digits than sys.get_int_max_str_digits() allows */
            PyObject *ev = PyErr_GetRaisedException();
            Py_XSETREF(d->err_obj, ev ? PyObject_Str(ev) : NULL);
            if (d->err_obj == NULL)
                PyErr_Clear();
            Py_XDECREF(ev);
            dec_fail(d, s, "integer too large");
        }
    }
done:
    if (buf != small)
        PyMem_Free(buf);
    return r;
}

static PyObject *
dec_number(sb_dec *d)
{
    const unsigned char *s = d->p, *p = s, *end = d->end;
    uint64_t m = 0;
    int ndigits = 0, nfrac = 0, is_float = 0, neg = 0;
    long exp10 = 0;

    if (*p == '-') {
        neg = 1;
        p++;
    }
    if (p >= end || *p < '0' || *p > '9')
        return dec_fail(d, p, "expected a digit");
    if (*p == '0') {
        p++;
        if (p < end && *p >= '0' && *p <= '9')
            return dec_fail(d, p, "leading zeros are not allowed");
    }
    else {
        while (p < end && *p >= '0' && *p <= '9') {
            if (ndigits < 19)
                m = m * 10 + (uint64_t)(*p - '0');
            ndigits++;
            p++;
        }
    }
    if (p < end && *p == '.') {
        is_float = 1;
        p++;
        if (p >= end || *p < '0' || *p > '9')
            return dec_fail(d, p, "expected a digit after the decimal point");
        while (p < end && *p >= '0' && *p <= '9') {
            if (ndigits < 19) {
                m = m * 10 + (uint64_t)(*p - '0');
                nfrac++;
            }
            if (m != 0)     /* leading zeros of 0.000123 are not significant */
                ndigits++;
            p++;
        }
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        int eneg = 0;
        long ev = 0;
        is_float = 1;
        p++;
        if (p < end && (*p == '+' || *p == '-')) {
            eneg = *p == '-';
            p++;
        }
        if (p >= end || *p < '0' || *p > '9')
            return dec_fail(d, p, "expected a digit in the exponent");
        while (p < end && *p >= '0' && *p <= '9') {
            if (ev < 100000)
                ev = ev * 10 + (*p - '0');
            p++;
        }
        exp10 = eneg ? -ev : ev;
    }
    d->p = p;
    if (!is_float) {
        if (ndigits <= 18)
            return PyLong_FromLongLong(neg ? -(long long)m : (long long)m);
        return number_slow(d, s, p - s, 0);
    }
    /* Clinger's fast path: an exact mantissa (< 2^53) times or divided by
     * an exact power of ten is one correctly rounded operation, so the same
     * double as float() gives. */
    exp10 -= nfrac;
    if (ndigits <= 19 && m <= (1ULL << 53) && exp10 >= -22 && exp10 <= 22) {
        double x = (double)m;
        x = exp10 < 0 ? x / POW10[-exp10] : x * POW10[exp10];
        return PyFloat_FromDouble(neg ? -x : x);
    }
    return number_slow(d, s, p - s, 1);
}

static int
stack_push(sb_dec *d, PyObject *v)
{
    if (d->sp == d->scap) {
        Py_ssize_t cap = d->scap * 2;
        PyObject **s;
        if (d->stack == d->inline_stack) {
            s = PyMem_Malloc((size_t)cap * sizeof(PyObject *));
            if (s != NULL)
                memcpy(s, d->stack, (size_t)d->sp * sizeof(PyObject *));
        }
        else {
            s = PyMem_Realloc(d->stack, (size_t)cap * sizeof(PyObject *));
        }
        if (s == NULL) {
            Py_DECREF(v);
            PyErr_NoMemory();
            return -1;
        }
        d->stack = s;
        d->scap = cap;
    }
    d->stack[d->sp++] = v;
    return 0;
}

static PyObject *
dec_array(sb_dec *d)
{
    Py_ssize_t base = d->sp, i, n;
    PyObject *list, *v;
    if (++d->depth > SB_JSON_MAX_DEPTH)
        return dec_fail(d, d->p, "nesting deeper than " Py_STRINGIFY(SB_JSON_MAX_DEPTH) " levels");
    d->p++;
    skip_ws(d);
    if (d->p < d->end && *d->p == ']') {
        d->p++;
        d->depth--;
        return PyList_New(0);
    }
    for (;;) {
        v = dec_value(d);
        if (v == NULL) {
            trail_push(&d->trail, NULL, component_for_index(d->sp - base));
            goto error;
        }
        if (stack_push(d, v) < 0)
            goto error;
        skip_ws(d);
        if (d->p < d->end && *d->p == ',') {
            d->p++;
            continue;
        }
        if (d->p < d->end && *d->p == ']') {
            d->p++;
            break;
        }
        dec_fail(d, d->p, d->p < d->end ? "expected ',' or ']' after a list element"
                                        : "unterminated list");
        goto error;
    }
    n = d->sp - base;
    list = PyList_New(n);
    if (list == NULL)
        goto error;
    for (i = 0; i < n; i++)
        PyList_SET_ITEM(list, i, d->stack[base + i]);
    d->sp = base;
    d->depth--;
    return list;
error:
    while (d->sp > base)
        Py_DECREF(d->stack[--d->sp]);
    return NULL;
}

static PyObject *
dec_object(sb_dec *d)
{
    PyObject *dict, *key = NULL, *v;
    if (++d->depth > SB_JSON_MAX_DEPTH)
        return dec_fail(d, d->p, "nesting deeper than " Py_STRINGIFY(SB_JSON_MAX_DEPTH) " levels");
    dict = PyDict_New();
    if (dict == NULL)
        return NULL;
    d->p++;
    skip_ws(d);
    if (d->p < d->end && *d->p == '}') {
        d->p++;
        d->depth--;
        return dict;
    }
    for (;;) {
        if (d->p >= d->end || *d->p != '"') {
            dec_fail(d, d->p, d->p < d->end ? "expected a string key" : "unterminated object");
            goto error;
        }
        key = dec_key(d);
        if (key == NULL)
            goto error;
        skip_ws(d);
        if (d->p >= d->end || *d->p != ':') {
            dec_fail(d, d->p, "expected ':' after a key");
            goto error;
        }
        d->p++;
        v = dec_value(d);
        if (v == NULL) {
            trail_push(&d->trail, NULL, component_for_key(key));
            goto error;
        }
        /* duplicate keys: the last one wins, as in json.loads */
        if (PyDict_SetItem(dict, key, v) < 0) {
            Py_DECREF(v);
            goto error;
        }
        Py_DECREF(v);
        Py_CLEAR(key);
        skip_ws(d);
        if (d->p < d->end && *d->p == ',') {
            d->p++;
            skip_ws(d);
            continue;
        }
        if (d->p < d->end && *d->p == '}') {
            d->p++;
            break;
        }
        dec_fail(d, d->p, d->p < d->end ? "expected ',' or '}' after an object member"
                                        : "unterminated object");
        goto error;
    }
    d->depth--;
    return dict;
error:
    Py_XDECREF(key);
    Py_DECREF(dict);
    return NULL;
}

static PyObject *
dec_value(sb_dec *d)
{
    const unsigned char *p;
    skip_ws(d);
    p = d->p;
    if (p >= d->end)
        return dec_fail(d, p, "expected a value, got the end of the input");
    switch (*p) {
    case '"':
        return dec_string(d);
    case '{':
        return dec_object(d);
    case '[':
        return dec_array(d);
    case 't':
        if (d->end - p >= 4 && memcmp(p, "true", 4) == 0) {
            d->p = p + 4;
            Py_RETURN_TRUE;
        }
        break;
    case 'f':
        if (d->end - p >= 5 && memcmp(p, "false", 5) == 0) {
            d->p = p + 5;
            Py_RETURN_FALSE;
        }
        break;
    case 'n':
        if (d->end - p >= 4 && memcmp(p, "null", 4) == 0) {
            d->p = p + 4;
            Py_RETURN_NONE;
        }
        break;
    case '-': case '0': case '1': case '2': case '3': case '4':
    case '5': case '6': case '7': case '8': case '9':
        return dec_number(d);
    }
    return dec_fail(d, p, "expected a value");
}

/* Raise JSONDecodeError(msg) with its pos and path attributes. */
static void
set_decode_error(sb_json_state *js, PyObject *msg, Py_ssize_t at, PyObject *path)
{
    PyObject *exc = PyObject_CallOneArg(js->DecodeError, msg);
    PyObject *pos = PyLong_FromSsize_t(at);
    if (exc != NULL && pos != NULL &&
        PyObject_SetAttrString(exc, "pos", pos) == 0 &&
        PyObject_SetAttrString(exc, "path", path) == 0)
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    Py_XDECREF(exc);
    Py_XDECREF(pos);
}

/* A str argument with a lone surrogate has no UTF-8 form to parse: turn
 * the pending UnicodeEncodeError into a JSONDecodeError at its index. */
static void
raise_str_not_utf8(sb_json_state *js)
{
    PyObject *ev, *msg = NULL, *path = NULL;
    Py_ssize_t start = 0;
    ev = PyErr_GetRaisedException();
    if (ev == NULL || PyUnicodeEncodeError_GetStart(ev, &start) < 0)
        PyErr_Clear();
    path = PyUnicode_FromString("payload");
    msg = PyUnicode_FromFormat("payload: str with a lone surrogate is not valid Unicode text (at index %zd)",
                               start);
    if (msg != NULL && path != NULL)
        set_decode_error(js, msg, start, path);
    Py_XDECREF(ev);
    Py_XDECREF(msg);
    Py_XDECREF(path);
}

/* Raise JSONDecodeError("<path>: <what> (at <unit> <pos>)") with .pos and
 * .path; pos counts characters for str input, bytes otherwise. */
static void
dec_raise(sb_dec *d, int is_str)
{
    PyObject *path = NULL, *what = NULL, *msg = NULL;
    Py_ssize_t at = d->err_at - d->start;
    const char *unit = "byte";

    if (is_str) {
        /* the text is valid UTF-8 here: count the characters before err_at */
        Py_ssize_t chars = 0;
        for (const unsigned char *q = d->start; q < d->err_at; q++)
            chars += (*q & 0xC0) != 0x80;
        at = chars;
        unit = "index";
    }
    path = trail_path(&d->trail, d->trail.n);
    if (path == NULL)
        goto done;
    what = d->err_obj ? Py_NewRef(d->err_obj) : PyUnicode_FromString(d->err);
    if (what == NULL)
        goto done;
    if (d->err_at < d->end && strncmp(d->err, "expected", 8) == 0) {
        unsigned c = *d->err_at;
        if (c >= 0x20 && c < 0x7F)
            msg = PyUnicode_FromFormat("%U: %U, found '%c' (at %s %zd)", path, what, (int)c, unit, at);
        else
            msg = PyUnicode_FromFormat("%U: %U, found byte 0x%02x (at %s %zd)", path, what, c, unit, at);
    }
    else {
        msg = PyUnicode_FromFormat("%U: %U (at %s %zd)", path, what, unit, at);
    }
    if (msg != NULL)
        set_decode_error(d->js, msg, at, path);
done:
    Py_XDECREF(path);
    Py_XDECREF(what);
    Py_XDECREF(msg);
}

static PyObject *
sb_json_loads(PyObject *mod, PyObject *arg)
{
    sb_json_state *js = &((sb_state *)PyModule_GetState(mod))->json;
    Py_buffer view;
    int have_view = 0, is_str = 0;
    const char *buf;
    Py_ssize_t len;
    PyObject *res = NULL;
    sb_dec d;

    if (PyBytes_Check(arg)) {
        buf = PyBytes_AS_STRING(arg);
        len = PyBytes_GET_SIZE(arg);
    }
    else if (PyUnicode_Check(arg)) {
        buf = PyUnicode_AsUTF8AndSize(arg, &len);
        if (buf == NULL) {
            if (PyErr_ExceptionMatches(PyExc_UnicodeEncodeError))
                raise_str_not_utf8(js);
            return NULL;
        }
        is_str = 1;
    }
    else if (PyObject_CheckBuffer(arg)) {
        /* a buffer export also stops a bytearray from being resized while
         * we read it (allocations can run a GC and with it Python code) */
        if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
            return NULL;
        have_view = 1;
        buf = view.buf;
        len = view.len;
    }
    else {
        PyErr_Format(PyExc_TypeError,
                     "json_loads() takes bytes, bytearray, memoryview or str, not %.100s",
                     Py_TYPE(arg)->tp_name);
        return NULL;
    }

    d.start = d.p = (const unsigned char *)buf;
    d.end = d.start + len;
    d.js = js;
    d.depth = 0;
    d.err = NULL;
    d.err_obj = NULL;
    d.err_at = NULL;
    d.trail.steps = NULL;
    d.trail.n = d.trail.cap = 0;
    d.stack = d.inline_stack;
    d.sp = 0;
    d.scap = DEC_STACK_ITEMS;
    d.scratch = NULL;
    d.scratch_cap = 0;

    res = dec_value(&d);
    if (res != NULL) {
        skip_ws(&d);
        if (d.p != d.end) {
            Py_CLEAR(res);
            dec_fail(&d, d.p, "extra data after the JSON value");
        }
    }
    if (res == NULL && d.err != NULL)
        dec_raise(&d, is_str);

    Py_XDECREF(d.err_obj);
    trail_free(&d.trail);
    if (d.stack != d.inline_stack)
        PyMem_Free(d.stack);
    PyMem_Free(d.scratch);
    if (have_view)
        PyBuffer_Release(&view);
    return res;
}

/* ======================================================================
 * module glue
 * ====================================================================== */

static PyMethodDef sb_json_functions[] = {
    {"json_dumps", sb_json_dumps, METH_O,
     "json_dumps(obj, /)\n--\n\n"
     "Encode obj as compact UTF-8 JSON bytes (see sermas_bus.json.dumps)."},
    {"json_loads", sb_json_loads, METH_O,
     "json_loads(data, /)\n--\n\n"
     "Decode UTF-8 JSON from bytes, bytearray, memoryview or str (see sermas_bus.json.loads)."},
    {NULL}
};

static PyObject *
attr_of(const char *module, const char *name)
{
    PyObject *m = PyImport_ImportModule(module), *r;
    if (m == NULL)
        return NULL;
    r = PyObject_GetAttrString(m, name);
    Py_DECREF(m);
    return r;
}

int
sb_json_exec(PyObject *mod, sb_state *st)
{
    sb_json_state *js = &st->json;
    PyObject *bases;
    SB_UNUSED_DATETIME_CAPI;

    bases = PyTuple_Pack(2, st->Error, PyExc_ValueError);
    if (bases == NULL)
        return -1;
    js->DecodeError = PyErr_NewExceptionWithDoc(
        "sermas_bus.errors.JSONDecodeError",
        "The payload is not valid UTF-8 JSON (or nests too deep).\n\n"
        "Attributes: pos (byte offset, or character index for str input) and\n"
        "path (where in the document, e.g. 'payload[\"llm\"]').",
        bases, NULL);
    Py_DECREF(bases);
    if (js->DecodeError == NULL || PyModule_AddObjectRef(mod, "JSONDecodeError", js->DecodeError) < 0)
        return -1;

    /* datetime and enum are cheap to import and nearly always imported
     * already; dataclasses is not, and is loaded on the first dataclass */
    if ((js->datetime_type = attr_of("datetime", "datetime")) == NULL ||
        (js->date_type = attr_of("datetime", "date")) == NULL ||
        (js->timedelta_type = attr_of("datetime", "timedelta")) == NULL ||
        (js->enum_type = attr_of("enum", "Enum")) == NULL)
        return -1;
    PyObject *tz = attr_of("datetime", "timezone");
    if (tz == NULL)
        return -1;
    js->utc = PyObject_GetAttrString(tz, "utc");
    Py_DECREF(tz);
    if (js->utc == NULL)
        return -1;
    if (!PyType_Check(js->datetime_type) || !PyType_Check(js->date_type) ||
        !PyType_Check(js->timedelta_type) || !PyType_Check(js->enum_type)) {
        PyErr_SetString(PyExc_ImportError, "sermas_bus: datetime/enum types are not types");
        return -1;
    }
    if ((js->dc_cache = PyDict_New()) == NULL ||
        (js->str_value_ = PyUnicode_InternFromString("_value_")) == NULL ||
        (js->str_dc_fields = PyUnicode_InternFromString("__dataclass_fields__")) == NULL ||
        (js->str_field_type = PyUnicode_InternFromString("_field_type")) == NULL ||
        (js->str_name = PyUnicode_InternFromString("name")) == NULL ||
        (js->str_utcoffset = PyUnicode_InternFromString("utcoffset")) == NULL ||
        (js->str_isoformat = PyUnicode_InternFromString("isoformat")) == NULL)
        return -1;
    if (PyModule_AddIntConstant(mod, "JSON_MAX_DEPTH", SB_JSON_MAX_DEPTH) < 0)
        return -1;
    return PyModule_AddFunctions(mod, sb_json_functions);
}

int
sb_json_traverse(sb_state *st, visitproc visit, void *arg)
{
    sb_json_state *js = &st->json;
    Py_VISIT(js->DecodeError);
    Py_VISIT(js->datetime_type);
    Py_VISIT(js->date_type);
    Py_VISIT(js->timedelta_type);
    Py_VISIT(js->utc);
    Py_VISIT(js->enum_type);
    Py_VISIT(js->dc_field_marker);
    Py_VISIT(js->dc_cache);
    return 0;
}

void
sb_json_clear(sb_state *st)
{
    sb_json_state *js = &st->json;
    Py_CLEAR(js->DecodeError);
    Py_CLEAR(js->datetime_type);
    Py_CLEAR(js->date_type);
    Py_CLEAR(js->timedelta_type);
    Py_CLEAR(js->utc);
    Py_CLEAR(js->enum_type);
    Py_CLEAR(js->dc_field_marker);
    Py_CLEAR(js->dc_cache);
    Py_CLEAR(js->str_value_);
    Py_CLEAR(js->str_dc_fields);
    Py_CLEAR(js->str_field_type);
    Py_CLEAR(js->str_name);
    Py_CLEAR(js->str_utcoffset);
    Py_CLEAR(js->str_isoformat);
    for (int i = 0; i < SB_JSON_KEY_CACHE; i++)
        Py_CLEAR(js->keys[i].str);
}
