/*
 * topics.c - TopicTable: SERMAS topic templates, compiled once.
 *
 *   add(name, template)   "app/:appId/dialogue/messages/:sessionId" is split
 *                         into levels, each a literal or a parameter;
 *   render(...)           fills the parameters as the platform does, with
 *                         explicit params on top (params, payload["record"],
 *                         the payload's top-level fields, payload["task"],
 *                         then defaults);
 *   match(topic)          resolves an incoming topic to the most specific
 *                         template with a trie over levels.
 *
 * Precedence in match: at each level the literal child is tried before the
 * parameter child, depth first, with backtracking.  The first complete match
 * is therefore the template that has a literal at the first level where the
 * candidates differ ("dialogue/tool/not-matching" beats "dialogue/tool/:name").
 * Each node sits at a fixed depth and is reached by one path, so a lookup
 * visits every node at most once; the work depends on the topic and on how
 * many templates share its prefix, not on the size of the table.
 *
 * Concurrency: the table's mutex is held only in pure-C sections (walking or
 * changing the trie and the name index), never while Python code can run, so
 * it can neither deadlock against the GIL nor be re-entered by a finalizer.
 * Compiled templates are immutable and are freed only with the table: when a
 * name is re-added the old template is retired, not freed, so a render or
 * match that picked it up under the lock can keep using it after unlocking.
 */
#include "sb.h"

#include <string.h>

#define TT_STACK 16        /* parameters / levels handled without the heap */

typedef struct {
    const char *text;      /* into tpl->buf: literal bytes, or the name after ':' */
    Py_ssize_t len;
    int pi;                /* -1: a literal; else the index into tpl->params */
} tt_seg;

typedef struct {
    PyObject *name;        /* interned str */
    Py_ssize_t first;      /* level of its first occurrence */
    int from_record;       /* may come from payload["record"] (scopeId, sessionId, agentId) */
} tt_param;

typedef struct tt_tpl {
    struct tt_tpl *all_next;   /* the table's list of every template it compiled */
    PyObject *name;            /* str; NULL for an ad-hoc template given to render() */
    PyObject *text;            /* str: the template as given */
    char *buf;                 /* UTF-8 copy the segments point into */
    tt_seg *segs;
    Py_ssize_t nsegs;
    tt_param *params;          /* distinct parameters, in order of first use */
    Py_ssize_t nparams;
    Py_ssize_t *same;          /* pairs (first level, later level) of a repeated parameter */
    Py_ssize_t nsame;
    int ascii;                 /* the template text is ASCII */
    uint64_t seq;              /* add order, for ties between identical shapes */
} tt_tpl;

typedef struct tt_node {
    struct tt_node *all_next;  /* the table's list of every node (freed with it) */
    sb_segmap lits;            /* literal level -> child */
    struct tt_node *param;     /* the child for any parameter */
    tt_tpl **ends;             /* templates ending here, most specific first */
    Py_ssize_t nends, cap;
} tt_node;

typedef struct {
    PyObject_HEAD
    pthread_mutex_t mu;        /* guards everything below (pure-C sections only) */
    int have_mu;               /* mu was initialised (tt_dealloc destroys it) */
    tt_node *root;
    tt_node *nodes;
    tt_tpl *tpls;
    sb_segmap by_name;         /* UTF-8 name -> current template */
    tt_tpl **order;            /* current templates, in order of first add */
    Py_ssize_t norder, order_cap;
    Py_ssize_t maxdepth;       /* most levels of any template */
    uint64_t seq;
    PyObject *record_key;      /* "record" */
    PyObject *task_key;        /* "task" */
} sb_topictable;

/* A value filled into a parameter: a str reference and its UTF-8 bytes. */
typedef struct {
    PyObject *obj;
    const char *s;
    Py_ssize_t len;
} tt_val;

/* ---- helpers shared with filtertrie.c ---------------------------------- */

int
sb_topic_bytes(PyObject *o, const char *what, const char **s, Py_ssize_t *len)
{
    int rc = 0;
    if (PyUnicode_Check(o)) {
        *s = PyUnicode_AsUTF8AndSize(o, len);
        if (*s == NULL)
            rc = -1;
    }
    else if (PyBytes_Check(o)) {
        *s = PyBytes_AS_STRING(o);
        *len = PyBytes_GET_SIZE(o);
    }
    else {
        PyErr_Format(PyExc_TypeError, "%s must be str or bytes, not %.100s", what,
                     Py_TYPE(o)->tp_name);
        rc = -1;
    }
    return rc;
}

/* Why a level cannot hold a parameter value, or NULL if it can. */
static const char *
bad_value_reason(const char *s, Py_ssize_t len)
{
    const char *why = NULL;
    Py_ssize_t i;
    if (len == 0)
        why = "it is empty";
    for (i = 0; i < len && why == NULL; i++) {
        switch (s[i]) {
        case '/': why = "it contains '/'"; break;
        case '+': why = "it contains the wildcard '+'"; break;
        case '#': why = "it contains the wildcard '#'"; break;
        case '\0': why = "it contains a NUL character"; break;
        default: break;
        }
    }
    if (why == NULL && sb_topic_control_char(s, len) >= 0)
        why = "it contains a control character (mosquitto drops a client that sends one)";
    return why;
}

long
sb_topic_control_char(const char *s, Py_ssize_t len)
{
    Py_ssize_t i;
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c >= 0x01 && c <= 0x1F) || c == 0x7F)
            return c;
        if (c == 0xC2 && i + 1 < len && (unsigned char)s[i + 1] >= 0x80 && (unsigned char)s[i + 1] <= 0x9F)
            return (unsigned char)s[i + 1];     /* U+0080-U+009F in UTF-8 */
    }
    return -1;
}

static int
has_wildcard(const char *s, Py_ssize_t len)
{
    return memchr(s, '+', (size_t)len) != NULL || memchr(s, '#', (size_t)len) != NULL;
}

static int
bytes_eq(const char *a, Py_ssize_t alen, const char *b)
{
    return (size_t)alen == strlen(b) && memcmp(a, b, (size_t)alen) == 0;
}

/* ---- compiled templates ------------------------------------------------- */

static void
tpl_free(tt_tpl *t)
{
    Py_ssize_t i;
    if (t != NULL) {
        Py_XDECREF(t->name);
        Py_XDECREF(t->text);
        for (i = 0; i < t->nparams; i++)
            Py_XDECREF(t->params[i].name);
        PyMem_Free(t->params);
        PyMem_Free(t->segs);
        PyMem_Free(t->same);
        PyMem_Free(t->buf);
        PyMem_Free(t);
    }
}

/* Is parameter j one the platform also looks up in payload["record"]?
 * (sermas-api's MqttService.publish: record.<scope>Id, where the scope is
 * the template's 4th level, then record.sessionId and record.agentId.) */
static int
is_record_param(const tt_tpl *t, const tt_seg *p)
{
    int yes = bytes_eq(p->text, p->len, "sessionId") || bytes_eq(p->text, p->len, "agentId");
    const tt_seg *scope = t->nsegs > 3 && t->segs[3].pi < 0 ? &t->segs[3] : NULL;
    if (!yes && scope != NULL && p->len == scope->len + 2)
        yes = memcmp(p->text, scope->text, (size_t)scope->len) == 0 &&
              memcmp(p->text + scope->len, "Id", 2) == 0;
    return yes;
}

/* Compile `text` (a str).  With `wildcards` (render for subscribing), whole
 * levels "+" and a final "#" are accepted as literals.  NULL with ValueError
 * naming the template when it is malformed. */
static tt_tpl *
tpl_compile(PyObject *name, PyObject *text, int wildcards)
{
    tt_tpl *t = NULL, *result = NULL;
    const char *s, *p, *q, *end, *why = NULL;
    Py_ssize_t len, i, j, n = 1, where = 0;
    tt_seg *sg;

    if (!PyUnicode_Check(text)) {
        PyErr_Format(PyExc_TypeError, "topic template must be str, not %.100s",
                     Py_TYPE(text)->tp_name);
        goto done;
    }
    s = PyUnicode_AsUTF8AndSize(text, &len);
    if (s == NULL)
        goto done;
    if (len == 0 || memchr(s, '\0', (size_t)len) != NULL) {
        PyErr_Format(PyExc_ValueError, "invalid topic template %R: %s", text,
                     len == 0 ? "it is empty" : "it contains a NUL character");
        goto done;
    }
    for (i = 0; i < len; i++)
        n += s[i] == '/';
    t = PyMem_Calloc(1, sizeof *t);
    if (t == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    t->text = PyUnicode_FromObject(text);      /* an exact str, even from a subclass */
    t->name = Py_XNewRef(name);
    t->buf = PyMem_Malloc((size_t)len + 1);
    t->segs = PyMem_Calloc((size_t)n, sizeof *t->segs);
    t->params = PyMem_Calloc((size_t)n, sizeof *t->params);
    t->same = PyMem_Calloc((size_t)n * 2, sizeof *t->same);
    if (t->text == NULL)
        goto done;
    if (t->buf == NULL || t->segs == NULL || t->params == NULL || t->same == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    memcpy(t->buf, s, (size_t)len + 1);
    t->nsegs = n;
    t->ascii = PyUnicode_IS_ASCII(t->text);

    p = t->buf;
    end = t->buf + len;
    for (i = 0; i < n && why == NULL; i++, p = q + 1) {
        q = memchr(p, '/', (size_t)(end - p));
        if (q == NULL)
            q = end;
        sg = &t->segs[i];
        sg->text = p;
        sg->len = q - p;
        sg->pi = -1;
        where = i + 1;
        if (sg->len == 0) {
            why = "is empty";
        }
        else if (p[0] == ':') {
            sg->text++;
            sg->len--;
            if (sg->len == 0)
                why = "is a parameter without a name";
            else if (has_wildcard(sg->text, sg->len))
                why = "has a wildcard ('+' or '#') in a parameter name";
            for (j = 0; j < t->nparams && why == NULL; j++) {
                const tt_seg *f = &t->segs[t->params[j].first];
                if (f->len == sg->len && memcmp(f->text, sg->text, (size_t)sg->len) == 0) {
                    sg->pi = (int)j;       /* a repeated parameter: same value in both places */
                    t->same[2 * t->nsame] = t->params[j].first;
                    t->same[2 * t->nsame + 1] = i;
                    t->nsame++;
                    break;
                }
            }
            if (why == NULL && sg->pi < 0) {
                sg->pi = (int)t->nparams;
                t->params[t->nparams++].first = i;
            }
        }
        else if (has_wildcard(sg->text, sg->len) &&
                 !(wildcards && sg->len == 1 && (p[0] == '+' || (p[0] == '#' && i == n - 1)))) {
            why = "has a wildcard ('+' or '#'); topic templates name single topics";
        }
    }
    if (why != NULL) {
        PyErr_Format(PyExc_ValueError, "invalid topic template %R: level %zd %s", text, where, why);
        goto done;
    }
    for (j = 0; j < t->nparams; j++) {
        sg = &t->segs[t->params[j].first];
        t->params[j].name = PyUnicode_DecodeUTF8(sg->text, sg->len, NULL);
        if (t->params[j].name == NULL)
            goto done;
        PyUnicode_InternInPlace(&t->params[j].name);
        t->params[j].from_record = is_record_param(t, sg);
    }
    result = t;
    t = NULL;
done:
    tpl_free(t);
    return result;
}

/* ---- the router trie (all under self->mu) ---------------------------- */

static tt_node *
node_new_locked(sb_topictable *self)
{
    tt_node *nd = PyMem_RawCalloc(1, sizeof *nd);
    if (nd != NULL) {
        nd->all_next = self->nodes;
        self->nodes = nd;
    }
    return nd;
}

/* The node where t ends, creating the path when `create` (NULL if absent or
 * out of memory; nodes created before a failure stay, empty and harmless). */
static tt_node *
node_for_locked(sb_topictable *self, const tt_tpl *t, int create)
{
    tt_node *nd = self->root, *child = NULL;
    Py_ssize_t i;
    if (nd == NULL && create)
        nd = self->root = node_new_locked(self);
    for (i = 0; i < t->nsegs && nd != NULL; i++, nd = child) {
        const tt_seg *sg = &t->segs[i];
        if (sg->pi >= 0) {
            if (nd->param == NULL && create)
                nd->param = node_new_locked(self);
            child = nd->param;
        }
        else {
            child = sb_segmap_get(&nd->lits, sg->text, (size_t)sg->len);
            if (child == NULL && create) {
                child = node_new_locked(self);
                if (child != NULL && sb_segmap_put(&nd->lits, sg->text, (size_t)sg->len, child) < 0)
                    child = NULL;
            }
        }
    }
    return nd;
}

static int
grow(void **arr, Py_ssize_t *cap, Py_ssize_t used, size_t item)
{
    int rc = 0;
    Py_ssize_t ncap;
    void *na;
    if (used == *cap) {
        ncap = *cap ? *cap * 2 : 4;
        na = PyMem_RawRealloc(*arr, (size_t)ncap * item);
        if (na == NULL) {
            rc = -1;
        }
        else {
            *arr = na;
            *cap = ncap;
        }
    }
    return rc;
}

/* Put t in the router and the name index, replacing the template the name
 * had.  Every allocation comes before the first visible change, so on -1
 * (out of memory) the table is as it was. */
static int
table_insert_locked(sb_topictable *self, tt_tpl *t, const char *name, Py_ssize_t nlen)
{
    int rc = -1;
    tt_node *nd, *oldnd = NULL;
    tt_tpl *old;
    Py_ssize_t k;

    nd = node_for_locked(self, t, 1);
    if (nd == NULL)
        goto done;
    old = sb_segmap_get(&self->by_name, name, (size_t)nlen);
    if (grow((void **)&nd->ends, &nd->cap, nd->nends, sizeof *nd->ends) < 0)
        goto done;
    if (old == NULL && grow((void **)&self->order, &self->order_cap, self->norder,
                            sizeof *self->order) < 0)
        goto done;
    /* replacing an existing key allocates nothing; a new key may fail here */
    if (sb_segmap_put(&self->by_name, name, (size_t)nlen, t) < 0)
        goto done;

    /* committed: nothing below can fail */
    t->seq = self->seq++;
    t->all_next = self->tpls;
    self->tpls = t;
    if (old != NULL) {
        oldnd = node_for_locked(self, old, 0);
        for (k = 0; oldnd != NULL && k < oldnd->nends; k++) {
            if (oldnd->ends[k] == old) {
                memmove(&oldnd->ends[k], &oldnd->ends[k + 1],
                        (size_t)(oldnd->nends - k - 1) * sizeof *oldnd->ends);
                oldnd->nends--;
                break;
            }
        }
        for (k = 0; k < self->norder; k++)
            if (self->order[k] == old)
                self->order[k] = t;
    }
    else {
        self->order[self->norder++] = t;
    }
    /* Same shape, several templates: the one with more repeated-parameter
     * constraints is more specific; otherwise the earlier one wins. */
    for (k = 0; k < nd->nends && nd->ends[k]->nsame >= t->nsame; k++)
        ;
    memmove(&nd->ends[k + 1], &nd->ends[k], (size_t)(nd->nends - k) * sizeof *nd->ends);
    nd->ends[k] = t;
    nd->nends++;
    if (t->nsegs > self->maxdepth)
        self->maxdepth = t->nsegs;
    rc = 0;
done:
    return rc;
}

/* The current template named `key` (borrowed: templates live as long as the
 * table), or NULL without an exception when there is none. */
static tt_tpl *
lookup_name(sb_topictable *self, const char *s, Py_ssize_t len)
{
    tt_tpl *t;
    pthread_mutex_lock(&self->mu);
    t = sb_segmap_get(&self->by_name, s, (size_t)len);
    pthread_mutex_unlock(&self->mu);
    return t;
}

/* Template for a name argument: NULL with KeyError/TypeError if unknown. */
static tt_tpl *
named_template(sb_topictable *self, PyObject *name)
{
    tt_tpl *t = NULL;
    const char *s;
    Py_ssize_t len;
    if (!PyUnicode_Check(name)) {
        PyErr_Format(PyExc_TypeError, "topic name must be str, not %.100s", Py_TYPE(name)->tp_name);
    }
    else if ((s = PyUnicode_AsUTF8AndSize(name, &len)) != NULL) {
        t = lookup_name(self, s, len);
        if (t == NULL)
            PyErr_Format(PyExc_KeyError, "unknown topic %R", name);
    }
    return t;
}

/* ---- render -------------------------------------------------------------- */

/* v as a str usable for a parameter: a new reference, or NULL without an
 * exception when v is not a str or an int (bool is not an int here). */
static PyObject *
as_text(PyObject *v)
{
    PyObject *r = NULL;
    if (PyUnicode_Check(v))
        r = Py_NewRef(v);
    else if (PyLong_Check(v) && !PyBool_Check(v))
        r = PyLong_Type.tp_repr(v);        /* decimal, even for int subclasses */
    return r;
}

static void
describe(PyObject **out, const tt_tpl *t)
{
    if (t->name != NULL)
        *out = PyUnicode_FromFormat("%U (%U)", t->name, t->text);
    else
        *out = Py_NewRef(t->text);
}

/* JavaScript's falsy for what a payload field can hold here: "" and 0
 * (the platform takes record.* and nested values only when truthy). */
static int
is_falsy(PyObject *v)
{
    if (PyUnicode_Check(v))
        return PyUnicode_GET_LENGTH(v) == 0;
    if (PyLong_Check(v) && !PyBool_Check(v))
        return PyObject_Not(v) == 1;
    return 0;
}

/* How a source is read: explicit params and defaults must hold str or int;
 * payload sources skip other types, and nested ones skip falsy values. */
enum { SRC_STRICT = 1, SRC_SKIP_FALSY = 2 };

/* Look parameter j up in one source.  0: not there (or not usable, see
 * flags); 1: found, *out set; -1: error.  `from` names the source. */
static int
lookup_source(const tt_tpl *t, Py_ssize_t j, PyObject *src, int flags, const char *from,
              tt_val *out)
{
    int strict = flags & SRC_STRICT;
    int rc = 0;
    PyObject *name = t->params[j].name, *v, *s = NULL, *where = NULL;
    const char *why;
    if (src == NULL)
        goto done;
    v = PyDict_GetItemWithError(src, name);
    if (v == NULL) {
        rc = PyErr_Occurred() ? -1 : 0;
        goto done;
    }
    Py_INCREF(v);                      /* hold it: key comparisons may run Python code */
    if ((flags & SRC_SKIP_FALSY) && is_falsy(v)) {
        Py_DECREF(v);
        goto done;
    }
    s = as_text(v);
    if (s == NULL && (PyErr_Occurred() || strict)) {
        if (!PyErr_Occurred()) {
            describe(&where, t);
            if (where != NULL)
                PyErr_Format(PyExc_TypeError,
                             "parameter %R for %U must be str or int, not %.100s (from %s)",
                             name, where, Py_TYPE(v)->tp_name, from);
        }
        rc = -1;
    }
    else if (s != NULL) {
        out->s = PyUnicode_AsUTF8AndSize(s, &out->len);
        if (out->s == NULL) {
            rc = -1;
        }
        else if ((why = bad_value_reason(out->s, out->len)) != NULL) {
            describe(&where, t);
            if (where != NULL)
                PyErr_Format(PyExc_ValueError,
                             "invalid value %R for parameter %R of %U (from %s): %s",
                             s, name, where, from, why);
            rc = -1;
        }
        else {
            out->obj = Py_NewRef(s);
            rc = 1;
        }
    }
    Py_DECREF(v);
done:
    Py_XDECREF(s);
    Py_XDECREF(where);
    return rc;
}

/* Look parameter j up in the dict payload[key], if it is one (truthy values only). */
static int
lookup_nested(const tt_tpl *t, Py_ssize_t j, PyObject *payload, PyObject *key, const char *from,
              tt_val *out)
{
    int rc = 0;
    PyObject *inner;
    if (payload == NULL)
        return 0;
    inner = PyDict_GetItemWithError(payload, key);   /* borrowed */
    if (inner == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (PyDict_Check(inner)) {
        Py_INCREF(inner);
        rc = lookup_source(t, j, inner, SRC_SKIP_FALSY, from, out);
        Py_DECREF(inner);
    }
    return rc;
}

/* Fill parameter j as the platform does (sermas-api's MqttService.publish),
 * with explicit params on top: params; payload["record"] (<scope>Id,
 * sessionId, agentId: they override the top level); the payload's own
 * fields; payload["task"] (taskProgress renders from it); defaults. */
static int
resolve(sb_topictable *self, const tt_tpl *t, Py_ssize_t j, PyObject *params, PyObject *payload,
        PyObject *defaults, tt_val *out)
{
    int rc = lookup_source(t, j, params, SRC_STRICT, "params", out);
    if (rc == 0 && t->params[j].from_record)
        rc = lookup_nested(t, j, payload, self->record_key, "payload['record']", out);
    if (rc == 0)
        rc = lookup_source(t, j, payload, 0, "payload", out);
    if (rc == 0)
        rc = lookup_nested(t, j, payload, self->task_key, "payload['task']", out);
    if (rc == 0)
        rc = lookup_source(t, j, defaults, SRC_STRICT, "defaults", out);
    return rc;
}

/* Join the levels of t with the values in vals (NULL value: '+'). */
static PyObject *
build_topic(const tt_tpl *t, const tt_val *vals)
{
    PyObject *out = NULL;
    Py_ssize_t total = t->nsegs - 1, i;
    int ascii = t->ascii;
    char *buf = NULL, *w;
    const tt_seg *sg;

    for (i = 0; i < t->nsegs; i++) {
        sg = &t->segs[i];
        if (sg->pi < 0) {
            total += sg->len;
        }
        else if (vals[sg->pi].obj != NULL) {
            total += vals[sg->pi].len;
            ascii = ascii && PyUnicode_IS_ASCII(vals[sg->pi].obj);
        }
        else {
            total += 1;
        }
    }
    if (ascii) {
        out = PyUnicode_New(total, 127);
        if (out == NULL)
            goto done;
        w = (char *)PyUnicode_1BYTE_DATA(out);
    }
    else {
        w = buf = PyMem_Malloc((size_t)total + 1);
        if (buf == NULL) {
            PyErr_NoMemory();
            goto done;
        }
    }
    for (i = 0; i < t->nsegs; i++) {
        sg = &t->segs[i];
        if (i > 0)
            *w++ = '/';
        if (sg->pi < 0) {
            memcpy(w, sg->text, (size_t)sg->len);
            w += sg->len;
        }
        else if (vals[sg->pi].obj != NULL) {
            memcpy(w, vals[sg->pi].s, (size_t)vals[sg->pi].len);
            w += vals[sg->pi].len;
        }
        else {
            *w++ = '+';
        }
    }
    if (!ascii)
        out = PyUnicode_DecodeUTF8(buf, total, NULL);
done:
    PyMem_Free(buf);
    return out;
}

static PyObject *
none_as_null(PyObject *o)
{
    return o == Py_None ? NULL : o;
}

static int
check_dict(PyObject *o, const char *what)
{
    int rc = 0;
    if (o != NULL && !PyDict_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be a dict or None, not %.100s", what,
                     Py_TYPE(o)->tp_name);
        rc = -1;
    }
    return rc;
}

/* render()'s arguments by position: name, params, payload, defaults, subscribe.
 * Fills argv[0..4] (NULL: not given) from positional and keyword arguments. */
static int
render_args(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, PyObject **argv)
{
    static const char *names[] = {"name", "params", "payload", "defaults", "subscribe"};
    int rc = 0;
    Py_ssize_t i, k, nkw = kwnames != NULL ? PyTuple_GET_SIZE(kwnames) : 0;
    PyObject *kw;

    for (k = 0; k < 5; k++)
        argv[k] = k < nargs ? args[k] : NULL;
    if (nargs < 1 || nargs > 5) {
        PyErr_Format(PyExc_TypeError, "render() takes from 1 to 5 positional arguments (%zd given)",
                     nargs);
        rc = -1;
    }
    for (i = 0; i < nkw && rc == 0; i++) {
        kw = PyTuple_GET_ITEM(kwnames, i);
        for (k = 1; k < 5 && PyUnicode_CompareWithASCIIString(kw, names[k]) != 0; k++)
            ;
        if (k == 5 || argv[k] != NULL) {
            PyErr_Format(PyExc_TypeError, k == 5 ? "render() got an unexpected keyword argument %R"
                                                 : "render() got multiple values for argument %R",
                         kw);
            rc = -1;
        }
        else {
            argv[k] = args[nargs + i];
        }
    }
    return rc;
}

static PyObject *
tt_render(sb_topictable *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *result = NULL, *argv[5], *key, *params, *payload, *defaults, *where = NULL;
    tt_tpl *t = NULL, *adhoc = NULL;
    tt_val vstack[TT_STACK], *vals = vstack;
    Py_ssize_t nvals = 0, j, klen;
    const char *ks;
    int subscribe = 0, rc;

    if (render_args(args, nargs, kwnames, argv) < 0)
        goto done;
    key = argv[0];
    params = argv[1] != NULL ? none_as_null(argv[1]) : NULL;
    payload = argv[2] != NULL ? none_as_null(argv[2]) : NULL;
    defaults = argv[3] != NULL ? none_as_null(argv[3]) : NULL;
    if (argv[4] != NULL && (subscribe = PyObject_IsTrue(argv[4])) < 0)
        goto done;
    if (check_dict(params, "params") < 0 || check_dict(payload, "payload") < 0 ||
        check_dict(defaults, "defaults") < 0)
        goto done;
    if (!PyUnicode_Check(key)) {
        PyErr_Format(PyExc_TypeError, "topic name or template must be str, not %.100s",
                     Py_TYPE(key)->tp_name);
        goto done;
    }
    ks = PyUnicode_AsUTF8AndSize(key, &klen);
    if (ks == NULL)
        goto done;
    t = lookup_name(self, ks, klen);
    if (t == NULL && memchr(ks, '/', (size_t)klen) != NULL)
        t = adhoc = tpl_compile(NULL, key, subscribe);   /* a template or plain topic */
    else if (t == NULL)
        PyErr_Format(PyExc_KeyError, "unknown topic %R (not in the table, and not a template: "
                     "no '/')", key);
    if (t == NULL)
        goto done;

    if (t->nparams > TT_STACK) {
        vals = PyMem_Calloc((size_t)t->nparams, sizeof *vals);
        if (vals == NULL) {
            PyErr_NoMemory();
            goto done;
        }
    }
    for (nvals = 0; nvals < t->nparams; nvals++) {
        j = nvals;
        vals[j].obj = NULL;
        rc = resolve(self, t, j, params, payload, defaults, &vals[j]);
        if (rc < 0)
            goto done;
        if (rc == 0 && !subscribe) {
            /* the platform refuses a topic that still holds a ':param' */
            describe(&where, t);
            if (where != NULL)
                PyErr_Format(PyExc_ValueError, "missing parameter %R for %U",
                             t->params[j].name, where);
            nvals++;
            goto done;
        }
    }
    result = build_topic(t, vals);
done:
    for (j = 0; j < nvals; j++)
        Py_XDECREF(vals[j].obj);
    if (vals != vstack)
        PyMem_Free(vals);
    Py_XDECREF(where);
    tpl_free(adhoc);
    return result;
}

/* ---- match ------------------------------------------------------------- */

/* Do the repeated parameters of t agree in this topic? */
static int
same_ok(const tt_tpl *t, const char *s, const Py_ssize_t *starts)
{
    int ok = 1;
    Py_ssize_t k, a, b, alen;
    for (k = 0; k < t->nsame && ok; k++) {
        a = t->same[2 * k];
        b = t->same[2 * k + 1];
        alen = starts[a + 1] - 1 - starts[a];
        ok = alen == starts[b + 1] - 1 - starts[b] &&
             memcmp(s + starts[a], s + starts[b], (size_t)alen) == 0;
    }
    return ok;
}

/* Depth-first walk, literal child before parameter child, backtracking.
 * starts[i] is the offset of level i; starts[n] = len + 1.  Returns the
 * most specific template matching, or NULL. */
static tt_tpl *
route_locked(sb_topictable *self, const char *s, const Py_ssize_t *starts, Py_ssize_t n,
             tt_node **nodes, unsigned char *state)
{
    tt_tpl *hit = NULL;
    tt_node *nd, *child;
    Py_ssize_t d = 0, k, off, len;

    nodes[0] = self->root;
    state[0] = 0;
    while (d >= 0 && hit == NULL && nodes[0] != NULL) {
        nd = nodes[d];
        if (d == n) {
            for (k = 0; k < nd->nends && hit == NULL; k++)
                if (same_ok(nd->ends[k], s, starts))
                    hit = nd->ends[k];
            d--;
            continue;
        }
        off = starts[d];
        len = starts[d + 1] - 1 - off;
        child = NULL;
        if (state[d] == 0) {
            state[d] = 1;
            child = sb_segmap_get(&nd->lits, s + off, (size_t)len);
        }
        if (child == NULL && state[d] == 1) {
            state[d] = 2;
            /* a parameter only takes what render() could have put there */
            if (nd->param != NULL && bad_value_reason(s + off, len) == NULL)
                child = nd->param;
        }
        if (child != NULL) {
            nodes[++d] = child;
            state[d] = 0;
        }
        else {
            d--;
        }
    }
    return hit;
}

static PyObject *
level_str(const char *s, Py_ssize_t len, int ascii)
{
    PyObject *r;
    if (ascii) {
        r = PyUnicode_New(len, 127);
        if (r != NULL)
            memcpy(PyUnicode_1BYTE_DATA(r), s, (size_t)len);
    }
    else {
        r = PyUnicode_DecodeUTF8(s, len, NULL);
    }
    return r;
}

static PyObject *
tt_match(sb_topictable *self, PyObject *topic)
{
    PyObject *result = NULL, *params = NULL, *v;
    const char *s, *q;
    Py_ssize_t len, n, i, sstack[TT_STACK + 1], *starts = sstack;
    tt_node *nstack[TT_STACK + 1], **nodes = nstack;
    unsigned char ststack[TT_STACK + 1], *state = ststack;
    tt_tpl *hit = NULL;
    int nomem = 0, ascii;

    if (sb_topic_bytes(topic, "topic", &s, &len) < 0)
        goto done;
    ascii = PyUnicode_Check(topic) && PyUnicode_IS_ASCII(topic);

    pthread_mutex_lock(&self->mu);
    /* count the levels, giving up past the deepest template */
    for (n = 1, q = s; n <= self->maxdepth && (q = memchr(q, '/', (size_t)(s + len - q))) != NULL; q++)
        n++;
    if (n <= self->maxdepth && n > TT_STACK) {
        starts = PyMem_RawMalloc((size_t)(n + 1) * sizeof *starts);
        nodes = PyMem_RawMalloc((size_t)(n + 1) * sizeof *nodes);
        state = PyMem_RawMalloc((size_t)(n + 1));
        nomem = starts == NULL || nodes == NULL || state == NULL;
    }
    if (n <= self->maxdepth && !nomem) {
        starts[0] = 0;
        for (i = 1, q = s; i < n; i++) {
            q = memchr(q, '/', (size_t)(s + len - q)) + 1;
            starts[i] = q - s;
        }
        starts[n] = len + 1;
        hit = route_locked(self, s, starts, n, nodes, state);
    }
    pthread_mutex_unlock(&self->mu);

    if (nomem) {
        PyErr_NoMemory();
        goto done;
    }
    if (hit == NULL) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    /* hit is immutable and lives as long as the table: safe without the lock */
    params = PyDict_New();
    if (params == NULL)
        goto done;
    for (i = 0; i < hit->nsegs; i++) {
        const tt_seg *sg = &hit->segs[i];
        if (sg->pi < 0 || hit->params[sg->pi].first != i)
            continue;
        v = level_str(s + starts[i], starts[i + 1] - 1 - starts[i], ascii);
        if (v == NULL || PyDict_SetItem(params, hit->params[sg->pi].name, v) < 0) {
            Py_XDECREF(v);
            goto done;
        }
        Py_DECREF(v);
    }
    result = PyTuple_Pack(2, hit->name, params);
done:
    Py_XDECREF(params);
    if (starts != sstack)
        PyMem_RawFree(starts);
    if (nodes != nstack)
        PyMem_RawFree(nodes);
    if (state != ststack)
        PyMem_RawFree(state);
    return result;
}

/* ---- the rest of the API ------------------------------------------------ */

static PyObject *
tt_add(sb_topictable *self, PyObject *args)
{
    PyObject *result = NULL, *name, *text, *exact = NULL;
    tt_tpl *t = NULL;
    const char *ns;
    Py_ssize_t nlen;
    int rc;

    if (!PyArg_ParseTuple(args, "UU:add", &name, &text))
        goto done;
    exact = PyUnicode_FromObject(name);
    if (exact == NULL)
        goto done;
    PyUnicode_InternInPlace(&exact);   /* may swap the object: take its bytes after */
    ns = PyUnicode_AsUTF8AndSize(exact, &nlen);
    if (ns == NULL)
        goto done;
    if (nlen == 0 || memchr(ns, '/', (size_t)nlen) != NULL || memchr(ns, '\0', (size_t)nlen) != NULL) {
        PyErr_Format(PyExc_ValueError, "invalid topic name %R: it must be non-empty and hold "
                     "no '/' or NUL (names look like 'dialogue.messages')", name);
        goto done;
    }
    t = tpl_compile(exact, text, 0);
    if (t == NULL)
        goto done;
    pthread_mutex_lock(&self->mu);
    rc = table_insert_locked(self, t, ns, nlen);
    pthread_mutex_unlock(&self->mu);
    if (rc < 0) {
        PyErr_NoMemory();
        goto done;
    }
    t = NULL;                          /* the table owns it now */
    result = Py_NewRef(Py_None);
done:
    tpl_free(t);
    Py_XDECREF(exact);
    return result;
}

static PyObject *
tt_template(sb_topictable *self, PyObject *name)
{
    tt_tpl *t = named_template(self, name);
    return t != NULL ? Py_NewRef(t->text) : NULL;
}

static PyObject *
tt_params(sb_topictable *self, PyObject *name)
{
    PyObject *result = NULL;
    tt_tpl *t = named_template(self, name);
    Py_ssize_t j;
    if (t != NULL && (result = PyTuple_New(t->nparams)) != NULL)
        for (j = 0; j < t->nparams; j++)
            PyTuple_SET_ITEM(result, j, Py_NewRef(t->params[j].name));
    return result;
}

static PyObject *
tt_names(sb_topictable *self, PyObject *unused)
{
    PyObject *result = NULL;
    tt_tpl **snap = NULL;
    Py_ssize_t n, i;

    pthread_mutex_lock(&self->mu);
    n = self->norder;
    snap = PyMem_RawMalloc((size_t)(n ? n : 1) * sizeof *snap);
    if (snap != NULL)
        memcpy(snap, self->order, (size_t)n * sizeof *snap);
    pthread_mutex_unlock(&self->mu);
    if (snap == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    result = PyList_New(n);
    for (i = 0; result != NULL && i < n; i++)
        PyList_SET_ITEM(result, i, Py_NewRef(snap[i]->name));
done:
    PyMem_RawFree(snap);
    return result;
}

static Py_ssize_t
tt_len(sb_topictable *self)
{
    Py_ssize_t n;
    pthread_mutex_lock(&self->mu);
    n = self->norder;
    pthread_mutex_unlock(&self->mu);
    return n;
}

static int
tt_contains(sb_topictable *self, PyObject *name)
{
    int found = 0;
    const char *s;
    Py_ssize_t len;
    if (PyUnicode_Check(name)) {
        s = PyUnicode_AsUTF8AndSize(name, &len);
        found = s == NULL ? -1 : lookup_name(self, s, len) != NULL;
    }
    return found;
}

static PyObject *
tt_new(PyTypeObject *tp, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {NULL};
    sb_topictable *self = NULL;
    PyObject *result = NULL;

    if (!PyArg_ParseTupleAndKeywords(args, kw, ":TopicTable", kwlist))
        goto done;
    self = (sb_topictable *)tp->tp_alloc(tp, 0);
    if (self == NULL)
        goto done;
    if (pthread_mutex_init(&self->mu, NULL) != 0) {
        PyErr_SetString(PyExc_RuntimeError, "TopicTable: cannot create its mutex");
        goto done;
    }
    self->have_mu = 1;
    self->record_key = PyUnicode_InternFromString("record");
    self->task_key = PyUnicode_InternFromString("task");
    if (self->record_key == NULL || self->task_key == NULL)
        goto done;
    result = (PyObject *)self;
    self = NULL;
done:
    Py_XDECREF(self);
    return result;
}

static void
tt_dealloc(sb_topictable *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    tt_node *nd, *nnext;
    tt_tpl *t, *tnext;

    for (nd = self->nodes; nd != NULL; nd = nnext) {
        nnext = nd->all_next;
        sb_segmap_free(&nd->lits);
        PyMem_RawFree(nd->ends);
        PyMem_RawFree(nd);
    }
    for (t = self->tpls; t != NULL; t = tnext) {
        tnext = t->all_next;
        tpl_free(t);
    }
    sb_segmap_free(&self->by_name);
    PyMem_RawFree(self->order);
    Py_XDECREF(self->record_key);
    Py_XDECREF(self->task_key);
    if (self->have_mu)
        pthread_mutex_destroy(&self->mu);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyMethodDef tt_methods[] = {
    {"add", (PyCFunction)tt_add, METH_VARARGS,
     "add($self, name, template, /)\n--\n\n"
     "Compile template (e.g. 'app/:appId/dialogue/messages/:sessionId') under name\n"
     "(e.g. 'dialogue.messages'), replacing the template the name had.\n"
     "ValueError if the template has an empty level, a wildcard, or ':' without a name."},
    {"render", (PyCFunction)(void (*)(void))tt_render, METH_FASTCALL | METH_KEYWORDS,
     "render($self, name, /, params=None, payload=None, defaults=None, subscribe=False)\n--\n\n"
     "The topic for a table name (or a template / plain topic containing '/').\n"
     "Each ':param' comes from params, then payload['record'] (<scope>Id, sessionId,\n"
     "agentId), then payload's top-level fields, then payload['task'], then defaults; values are\n"
     "str or int.  Unfilled: '+' when subscribe, else ValueError."},
    {"match", (PyCFunction)tt_match, METH_O,
     "match($self, topic, /)\n--\n\n"
     "(name, params) of the most specific template matching topic (str or bytes),\n"
     "or None.  A literal level beats a parameter at the first level where two\n"
     "templates differ; repeated parameters must hold the same value."},
    {"template", (PyCFunction)tt_template, METH_O,
     "template($self, name, /)\n--\n\nThe template of a name; KeyError if unknown."},
    {"params", (PyCFunction)tt_params, METH_O,
     "params($self, name, /)\n--\n\nThe distinct parameter names of a name's template, in order."},
    {"names", (PyCFunction)tt_names, METH_NOARGS,
     "names($self, /)\n--\n\nEvery name, in the order first added."},
    {NULL}
};

static PyType_Slot tt_slots[] = {
    {Py_tp_doc, "TopicTable()\n--\n\n"
                "SERMAS topic templates by name: render topics to publish or subscribe to,\n"
                "and route incoming topics to the most specific template."},
    {Py_tp_new, tt_new},
    {Py_tp_dealloc, tt_dealloc},
    {Py_tp_methods, tt_methods},
    {Py_sq_length, tt_len},
    {Py_sq_contains, tt_contains},
    {0, NULL}
};

static PyType_Spec tt_spec = {
    .name = "sermas_bus._core.TopicTable",
    .basicsize = sizeof(sb_topictable),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .slots = tt_slots,
};

/* ---- registration -------------------------------------------------------- */

int
sb_topics_init(PyObject *mod, sb_state *st)
{
    int rc = -1;
    st->TopicTableType = (PyTypeObject *)PyType_FromModuleAndSpec(mod, &tt_spec, NULL);
    if (st->TopicTableType == NULL || PyModule_AddType(mod, st->TopicTableType) < 0)
        goto done;
    st->FilterTrieType = (PyTypeObject *)PyType_FromModuleAndSpec(mod, &sb_filtertrie_spec, NULL);
    if (st->FilterTrieType == NULL || PyModule_AddType(mod, st->FilterTrieType) < 0)
        goto done;
    rc = 0;
done:
    return rc;
}
