/*
 * filtertrie.c - FilterTrie: MQTT subscription filters -> Python values, for
 * dispatching incoming messages.
 *
 * Same matching rules as sermas_bus.matcher.topic_matches_sub:
 *   '+' matches exactly one level (possibly empty); a final '#' matches the
 *   parent level and everything below; a filter whose first level is a
 *   wildcard does not match topics starting with '$'; "$share/<group>/<f>"
 *   matches like <f>; a '#' that is not the last level is a plain level.
 *
 * Layout: a trie over levels.  Each node has a hash map of literal children
 * (segmap.c), one '+' child, the entries of filters ending at the node, and
 * the entries of filters "<node>/#" (kept on the node itself rather than in a
 * child, because they match at this node and below).  A lookup follows at
 * most the literal and the '+' child per level: its cost depends on the topic
 * depth and on the number of matches, not on the number of filters.
 *
 * Concurrency and re-entrancy: the mutex is held only while C code walks or
 * changes the trie.  No Python code runs under it: values found by match()
 * are increfed into a C buffer first and put in a list after unlocking; the
 * values removed are decrefed after unlocking; the == comparisons remove()
 * needs run on a snapshot, outside the lock.  So a finalizer or __eq__ that
 * uses the trie cannot deadlock or see it half-changed, and the mutex cannot
 * deadlock against the GIL (the GIL is never waited for while it is held).
 */
#include "sb.h"

#include <stddef.h>
#include <string.h>
#include <structmember.h>

#define FT_STACK 64        /* match stack entries / results handled without the heap */

typedef struct {
    PyObject *filter;      /* exact str, as added ("$share/g/a/+" stays as is) */
    PyObject *value;
} ft_entry;

typedef struct {
    ft_entry *v;
    Py_ssize_t n, cap;
} ft_vec;

typedef struct ft_node {
    struct ft_node *prev, *next;  /* every node of the trie (traverse, clear) */
    sb_segmap lits;               /* literal level -> child */
    struct ft_node *plus;         /* the '+' child */
    ft_vec ends;                  /* filters that end at this node */
    ft_vec hash;                  /* filters "<this node>/#" */
} ft_node;

typedef struct {
    PyObject_HEAD
    pthread_mutex_t mu;           /* guards everything below (pure-C sections only) */
    int have_mu;
    ft_node *root;                /* NULL while empty */
    ft_node *nodes;               /* list of every node */
    Py_ssize_t count;             /* (filter, value) entries */
    Py_ssize_t maxdepth;          /* most levels of any filter added (bounds the walk) */
    PyObject *weakreflist;
} sb_filtertrie;

/* One step of a walk from the root: the parent and the level that led on. */
typedef struct {
    ft_node *parent;
    const char *lvl;
    Py_ssize_t len;
} ft_step;

/* ---- filters ------------------------------------------------------------ */

/* "$share/<group>/<filter>" -> "<filter>", as matcher._strip_share does. */
static void
strip_share(const char **s, Py_ssize_t *len)
{
    const char *slash;
    if (*len >= 7 && memcmp(*s, "$share/", 7) == 0) {
        slash = memchr(*s + 7, '/', (size_t)(*len - 7));
        if (slash != NULL) {
            *len -= slash + 1 - *s;
            *s = slash + 1;
        }
    }
}

static Py_ssize_t
count_levels(const char *s, Py_ssize_t len)
{
    Py_ssize_t n = 1, i;
    for (i = 0; i < len; i++)
        n += s[i] == '/';
    return n;
}

/* ---- nodes (under mu) ------------------------------------------------- */

static ft_node *
node_new_locked(sb_filtertrie *self)
{
    ft_node *nd = PyMem_RawCalloc(1, sizeof *nd);
    if (nd != NULL) {
        nd->next = self->nodes;
        if (self->nodes != NULL)
            self->nodes->prev = nd;
        self->nodes = nd;
    }
    return nd;
}

static void
node_free_locked(sb_filtertrie *self, ft_node *nd)
{
    if (nd->prev != NULL)
        nd->prev->next = nd->next;
    else
        self->nodes = nd->next;
    if (nd->next != NULL)
        nd->next->prev = nd->prev;
    sb_segmap_free(&nd->lits);
    PyMem_RawFree(nd->ends.v);
    PyMem_RawFree(nd->hash.v);
    PyMem_RawFree(nd);
}

static int
node_empty(const ft_node *nd)
{
    return nd->lits.count == 0 && nd->plus == NULL && nd->ends.n == 0 && nd->hash.n == 0;
}

/* Walk the levels of a (share-stripped) filter.  Returns the entries vector
 * the filter belongs in, or NULL when a node is missing (or, with `create`,
 * cannot be allocated).  With `path` (room for every level), records the
 * steps taken, for pruning; *nsteps gets their number. */
static ft_vec *
walk_locked(sb_filtertrie *self, const char *s, Py_ssize_t len, int create, ft_step *path,
            Py_ssize_t *nsteps)
{
    ft_vec *vec = NULL;
    ft_node *nd = self->root, *child;
    const char *p = s, *q, *end = s + len;
    Py_ssize_t steps = 0, l;

    if (nd == NULL && create)
        nd = self->root = node_new_locked(self);
    while (nd != NULL && vec == NULL) {
        q = memchr(p, '/', (size_t)(end - p));
        if (q == NULL)
            q = end;
        l = q - p;
        if (q == end && l == 1 && p[0] == '#') {
            vec = &nd->hash;               /* "<here>/#", or "#" alone at the root */
            break;
        }
        if (l == 1 && p[0] == '+') {
            if (nd->plus == NULL && create)
                nd->plus = node_new_locked(self);
            child = nd->plus;
        }
        else {
            child = sb_segmap_get(&nd->lits, p, (size_t)l);
            if (child == NULL && create) {
                child = node_new_locked(self);
                if (child != NULL && sb_segmap_put(&nd->lits, p, (size_t)l, child) < 0) {
                    node_free_locked(self, child);
                    child = NULL;
                }
            }
        }
        if (path != NULL) {
            path[steps].parent = nd;
            path[steps].lvl = p;
            path[steps].len = l;
        }
        steps++;
        nd = child;
        if (nd != NULL && q == end)
            vec = &nd->ends;
        p = q + 1;
    }
    if (nsteps != NULL)
        *nsteps = steps;
    return vec;
}

/* After a removal: free the empty nodes at the end of the path. */
static void
prune_locked(sb_filtertrie *self, const ft_step *path, Py_ssize_t nsteps)
{
    Py_ssize_t k;
    ft_node *parent, *child;
    for (k = nsteps - 1; k >= 0; k--) {
        parent = path[k].parent;
        child = path[k].len == 1 && path[k].lvl[0] == '+'
                    ? parent->plus
                    : sb_segmap_get(&parent->lits, path[k].lvl, (size_t)path[k].len);
        if (child == NULL || !node_empty(child))
            break;
        if (child == parent->plus)
            parent->plus = NULL;
        else
            sb_segmap_del(&parent->lits, path[k].lvl, (size_t)path[k].len);
        node_free_locked(self, child);
    }
    if (self->root != NULL && node_empty(self->root)) {
        node_free_locked(self, self->root);
        self->root = NULL;
    }
}

/* Detach every node (the trie becomes empty); returns the detached list. */
static ft_node *
detach_locked(sb_filtertrie *self)
{
    ft_node *all = self->nodes;
    self->nodes = NULL;
    self->root = NULL;
    self->count = 0;
    return all;
}

/* Free detached nodes and drop their references.  GIL held, mu not held:
 * the decrefs may run finalizers, which may use the (already empty) trie. */
static void
free_detached(ft_node *all)
{
    ft_node *nd, *next;
    Py_ssize_t i;
    for (nd = all; nd != NULL; nd = next) {
        next = nd->next;
        for (i = 0; i < nd->ends.n; i++) {
            Py_DECREF(nd->ends.v[i].filter);
            Py_DECREF(nd->ends.v[i].value);
        }
        for (i = 0; i < nd->hash.n; i++) {
            Py_DECREF(nd->hash.v[i].filter);
            Py_DECREF(nd->hash.v[i].value);
        }
        sb_segmap_free(&nd->lits);
        PyMem_RawFree(nd->ends.v);
        PyMem_RawFree(nd->hash.v);
        PyMem_RawFree(nd);
    }
}

/* ---- add / remove ------------------------------------------------------- */

/* An exact str for a filter argument, and its UTF-8 with $share stripped. */
static PyObject *
filter_arg(PyObject *o, const char **s, Py_ssize_t *len)
{
    PyObject *f = NULL;
    if (!PyUnicode_Check(o)) {
        PyErr_Format(PyExc_TypeError, "topic filter must be str, not %.100s", Py_TYPE(o)->tp_name);
    }
    else if ((f = PyUnicode_FromObject(o)) != NULL) {
        *s = PyUnicode_AsUTF8AndSize(f, len);   /* cached in f from now on */
        if (*s == NULL)
            Py_CLEAR(f);
        else
            strip_share(s, len);
    }
    return f;
}

static PyObject *
ft_add(sb_filtertrie *self, PyObject *args)
{
    PyObject *result = NULL, *farg, *value, *filter = NULL;
    const char *s;
    Py_ssize_t len, levels;
    ft_vec *vec;
    int ok = 0;

    if (!PyArg_ParseTuple(args, "OO:add", &farg, &value))
        goto done;
    filter = filter_arg(farg, &s, &len);
    if (filter == NULL)
        goto done;
    levels = count_levels(s, len);
    pthread_mutex_lock(&self->mu);
    /* first: the walk may create nodes this deep even if the add then fails */
    if (levels > self->maxdepth)
        self->maxdepth = levels;
    vec = walk_locked(self, s, len, 1, NULL, NULL);
    if (vec != NULL && vec->n == vec->cap) {
        Py_ssize_t ncap = vec->cap ? vec->cap * 2 : 1;
        ft_entry *nv = PyMem_RawRealloc(vec->v, (size_t)ncap * sizeof *nv);
        if (nv != NULL) {
            vec->v = nv;
            vec->cap = ncap;
        }
    }
    if (vec != NULL && vec->n < vec->cap) {
        /* the trie's references: increfs run no Python code */
        vec->v[vec->n].filter = Py_NewRef(filter);
        vec->v[vec->n].value = Py_NewRef(value);
        vec->n++;
        self->count++;
        ok = 1;
    }
    /* (nodes created before an allocation failure stay empty until clear()) */
    pthread_mutex_unlock(&self->mu);
    if (!ok) {
        PyErr_NoMemory();
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(filter);
    return result;
}

/* Under mu: remove the entry (filter equal, value identical to `target`);
 * 1 and the entry in *out if found, else 0. */
static int
take_locked(sb_filtertrie *self, PyObject *filter, const char *s, Py_ssize_t len,
            PyObject *target, ft_step *path, ft_entry *out)
{
    int found = 0;
    Py_ssize_t nsteps = 0, i;
    ft_vec *vec = walk_locked(self, s, len, 0, path, &nsteps);
    for (i = 0; vec != NULL && i < vec->n; i++) {
        /* both exact str: the comparison runs no Python code */
        if (vec->v[i].value == target && PyUnicode_Compare(vec->v[i].filter, filter) == 0) {
            *out = vec->v[i];
            memmove(&vec->v[i], &vec->v[i + 1], (size_t)(vec->n - i - 1) * sizeof *vec->v);
            vec->n--;
            self->count--;
            found = 1;
            break;
        }
    }
    if (found)
        prune_locked(self, path, nsteps);
    return found;
}

/* Remove one entry (filter, v) with v == value.  1 removed, 0 absent, -1 error. */
static int
remove_one(sb_filtertrie *self, PyObject *farg, PyObject *value)
{
    int rc = -1, found, r, nomem;
    PyObject *filter, *target = NULL, **snap = NULL;
    const char *s;
    Py_ssize_t len, nsnap = 0, i;
    ft_step *path = NULL;
    ft_entry gone = {NULL, NULL};
    ft_vec *vec;

    filter = filter_arg(farg, &s, &len);
    if (filter == NULL)
        goto done;
    path = PyMem_Malloc((size_t)count_levels(s, len) * sizeof *path);
    if (path == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    /* Fast path: the very object that was added. */
    pthread_mutex_lock(&self->mu);
    found = take_locked(self, filter, s, len, value, path, &gone);
    pthread_mutex_unlock(&self->mu);

    /* Else compare with ==, which may run Python code: on a snapshot, outside
     * the lock; then remove the object found by identity.  If someone removed
     * it meanwhile, look again. */
    while (!found) {
        nomem = 0;
        pthread_mutex_lock(&self->mu);
        vec = walk_locked(self, s, len, 0, NULL, NULL);
        if (vec != NULL && vec->n > 0) {
            snap = PyMem_RawMalloc((size_t)vec->n * sizeof *snap);
            nomem = snap == NULL;
            for (i = 0; snap != NULL && i < vec->n; i++)
                if (PyUnicode_Compare(vec->v[i].filter, filter) == 0)
                    snap[nsnap++] = Py_NewRef(vec->v[i].value);
        }
        pthread_mutex_unlock(&self->mu);
        if (nomem) {
            PyErr_NoMemory();
            goto done;
        }
        target = NULL;
        for (i = 0; i < nsnap && target == NULL; i++) {
            r = PyObject_RichCompareBool(snap[i], value, Py_EQ);
            if (r < 0)
                goto done;
            if (r > 0)
                target = snap[i];
        }
        if (target == NULL) {
            rc = 0;
            goto done;
        }
        pthread_mutex_lock(&self->mu);
        found = take_locked(self, filter, s, len, target, path, &gone);
        pthread_mutex_unlock(&self->mu);
        for (i = 0; i < nsnap; i++)
            Py_DECREF(snap[i]);
        PyMem_RawFree(snap);
        snap = NULL;
        nsnap = 0;
    }
    rc = 1;
done:
    for (i = 0; i < nsnap; i++)
        Py_DECREF(snap[i]);
    PyMem_RawFree(snap);
    PyMem_Free(path);
    Py_XDECREF(filter);
    /* the trie's references, dropped last: this may run finalizers */
    Py_XDECREF(gone.filter);
    Py_XDECREF(gone.value);
    return rc;
}

static PyObject *
ft_remove(sb_filtertrie *self, PyObject *args)
{
    PyObject *result = NULL, *farg, *value;
    int rc;
    if (PyArg_ParseTuple(args, "OO:remove", &farg, &value)) {
        rc = remove_one(self, farg, value);
        if (rc == 0)
            PyErr_Format(PyExc_KeyError, "no value equal to %R stored for topic filter %R",
                         value, farg);
        else if (rc > 0)
            result = Py_NewRef(Py_None);
    }
    return result;
}

static PyObject *
ft_discard(sb_filtertrie *self, PyObject *args)
{
    PyObject *result = NULL, *farg, *value;
    int rc;
    if (PyArg_ParseTuple(args, "OO:discard", &farg, &value)) {
        rc = remove_one(self, farg, value);
        if (rc >= 0)
            result = PyBool_FromLong(rc);
    }
    return result;
}

/* ---- match -------------------------------------------------------------- */

typedef struct {
    ft_node *node;
    Py_ssize_t off;        /* where the next level starts; len + 1: no more levels */
} ft_frame;

typedef struct {
    PyObject **v;
    Py_ssize_t n, cap;
    int heap;              /* v was allocated (else it is the caller's array) */
    int nomem;
} ft_out;

/* Append new references to the values of vec (under mu: increfs only). */
static void
report(ft_out *out, const ft_vec *vec)
{
    Py_ssize_t i, ncap;
    PyObject **nv;
    if (vec->n > 0 && out->n + vec->n > out->cap && !out->nomem) {
        ncap = out->cap * 2 > out->n + vec->n ? out->cap * 2 : out->n + vec->n;
        nv = PyMem_RawMalloc((size_t)ncap * sizeof *nv);
        if (nv == NULL) {
            out->nomem = 1;
        }
        else {
            memcpy(nv, out->v, (size_t)out->n * sizeof *nv);
            if (out->heap)
                PyMem_RawFree(out->v);
            out->v = nv;
            out->cap = ncap;
            out->heap = 1;
        }
    }
    for (i = 0; i < vec->n && !out->nomem; i++)
        out->v[out->n++] = Py_NewRef(vec->v[i].value);
}

/* Depth first: the literal child, the '+' child, and the '#' entries of each
 * node on the way.  Every node is reached by one path, so each is visited
 * at most once; the stack never holds more than depth + 2 frames. */
static void
match_locked(sb_filtertrie *self, const char *s, Py_ssize_t len, ft_frame *stack, ft_out *out)
{
    Py_ssize_t sp = 0, off, next;
    ft_node *nd, *child;
    const char *q;
    int wild_ok, dollar = len > 0 && s[0] == '$';

    if (self->root != NULL)
        stack[sp++] = (ft_frame){self->root, 0};
    while (sp > 0 && !out->nomem) {
        nd = stack[--sp].node;
        off = stack[sp].off;
        if (off > len) {               /* every level consumed: "a/b" and "a/b/#" */
            report(out, &nd->ends);
            report(out, &nd->hash);
            continue;
        }
        q = memchr(s + off, '/', (size_t)(len - off));
        next = (q != NULL ? q - s : len) + 1;
        /* no wildcard at the first level for "$SYS/..."-style topics */
        wild_ok = off > 0 || !dollar;
        if (wild_ok) {
            report(out, &nd->hash);
            if (nd->plus != NULL)
                stack[sp++] = (ft_frame){nd->plus, next};
        }
        /* pushed last, so the literal branch is walked first */
        child = sb_segmap_get(&nd->lits, s + off, (size_t)(next - 1 - off));
        if (child != NULL)
            stack[sp++] = (ft_frame){child, next};
    }
}

static PyObject *
ft_match(sb_filtertrie *self, PyObject *topic)
{
    PyObject *result = NULL, *ostack[FT_STACK];
    ft_frame fstack[FT_STACK], *stack = fstack;
    ft_out out = {ostack, 0, FT_STACK, 0, 0};
    const char *s;
    Py_ssize_t len, need, i;
    int nomem = 0;

    if (sb_topic_bytes(topic, "topic", &s, &len) < 0)
        goto done;
    pthread_mutex_lock(&self->mu);
    need = self->maxdepth + 2;
    if (need > FT_STACK) {
        stack = PyMem_RawMalloc((size_t)need * sizeof *stack);
        nomem = stack == NULL;
    }
    if (!nomem)
        match_locked(self, s, len, stack, &out);
    pthread_mutex_unlock(&self->mu);
    if (nomem || out.nomem) {
        PyErr_NoMemory();
        goto done;
    }
    /* outside the lock: building the list may run the GC, hence finalizers */
    result = PyList_New(out.n);
    if (result != NULL) {
        for (i = 0; i < out.n; i++)
            PyList_SET_ITEM(result, i, out.v[i]);     /* steals the reference */
        out.n = 0;
    }
done:
    for (i = 0; i < out.n; i++)
        Py_DECREF(out.v[i]);
    if (out.heap)
        PyMem_RawFree(out.v);
    if (stack != fstack)
        PyMem_RawFree(stack);
    return result;
}

/* ---- the rest of the API ------------------------------------------------ */

static PyObject *
ft_items(sb_filtertrie *self, PyObject *unused)
{
    PyObject *result = NULL, **snap = NULL, *pair;
    Py_ssize_t n = 0, i;
    ft_node *nd;
    const ft_vec *vecs[2];
    int k;

    pthread_mutex_lock(&self->mu);
    snap = PyMem_RawMalloc((size_t)(self->count ? self->count : 1) * 2 * sizeof *snap);
    for (nd = self->nodes; nd != NULL && snap != NULL; nd = nd->next) {
        vecs[0] = &nd->ends;
        vecs[1] = &nd->hash;
        for (k = 0; k < 2; k++) {
            for (i = 0; i < vecs[k]->n; i++) {
                snap[n++] = Py_NewRef(vecs[k]->v[i].filter);
                snap[n++] = Py_NewRef(vecs[k]->v[i].value);
            }
        }
    }
    pthread_mutex_unlock(&self->mu);
    if (snap == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    result = PyList_New(n / 2);
    for (i = 0; result != NULL && i < n / 2; i++) {
        pair = PyTuple_Pack(2, snap[2 * i], snap[2 * i + 1]);
        if (pair == NULL)
            Py_CLEAR(result);
        else
            PyList_SET_ITEM(result, i, pair);
    }
done:
    for (i = 0; i < n; i++)
        Py_DECREF(snap[i]);
    PyMem_RawFree(snap);
    return result;
}

static PyObject *
ft_clear_method(sb_filtertrie *self, PyObject *unused)
{
    ft_node *all;
    pthread_mutex_lock(&self->mu);
    all = detach_locked(self);
    pthread_mutex_unlock(&self->mu);
    free_detached(all);
    Py_RETURN_NONE;
}

static Py_ssize_t
ft_len(sb_filtertrie *self)
{
    Py_ssize_t n;
    pthread_mutex_lock(&self->mu);
    n = self->count;
    pthread_mutex_unlock(&self->mu);
    return n;
}

static int
ft_traverse(sb_filtertrie *self, visitproc visit, void *arg)
{
    /* No lock: the collector runs with the GIL, and mu is only ever held by
     * a thread that holds the GIL and runs no Python code meanwhile. */
    ft_node *nd;
    Py_ssize_t i;
    Py_VISIT(Py_TYPE(self));
    for (nd = self->nodes; nd != NULL; nd = nd->next) {
        for (i = 0; i < nd->ends.n; i++)
            Py_VISIT(nd->ends.v[i].value);
        for (i = 0; i < nd->hash.n; i++)
            Py_VISIT(nd->hash.v[i].value);
    }
    return 0;
}

static int
ft_clear(sb_filtertrie *self)
{
    ft_node *all = NULL;
    if (self->have_mu) {
        pthread_mutex_lock(&self->mu);
        all = detach_locked(self);
        pthread_mutex_unlock(&self->mu);
    }
    free_detached(all);
    return 0;
}

static PyObject *
ft_new(PyTypeObject *tp, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {NULL};
    sb_filtertrie *self = NULL;
    PyObject *result = NULL;

    if (!PyArg_ParseTupleAndKeywords(args, kw, ":FilterTrie", kwlist))
        goto done;
    self = (sb_filtertrie *)tp->tp_alloc(tp, 0);
    if (self == NULL)
        goto done;
    if (pthread_mutex_init(&self->mu, NULL) != 0) {
        PyErr_SetString(PyExc_RuntimeError, "FilterTrie: cannot create its mutex");
        goto done;
    }
    self->have_mu = 1;
    result = (PyObject *)self;
    self = NULL;
done:
    Py_XDECREF(self);
    return result;
}

static void
ft_dealloc(sb_filtertrie *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL)
        PyObject_ClearWeakRefs((PyObject *)self);
    ft_clear(self);
    if (self->have_mu)
        pthread_mutex_destroy(&self->mu);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyMethodDef ft_methods[] = {
    {"add", (PyCFunction)ft_add, METH_VARARGS,
     "add($self, filter, value, /)\n--\n\n"
     "Store value under the subscription filter (a multimap: adding the same pair\n"
     "twice stores it twice)."},
    {"remove", (PyCFunction)ft_remove, METH_VARARGS,
     "remove($self, filter, value, /)\n--\n\n"
     "Remove one entry of filter whose value == value; KeyError if there is none."},
    {"discard", (PyCFunction)ft_discard, METH_VARARGS,
     "discard($self, filter, value, /)\n--\n\nLike remove(); returns whether an entry was removed."},
    {"match", (PyCFunction)ft_match, METH_O,
     "match($self, topic, /)\n--\n\n"
     "The values of every stored filter matching topic (str or bytes), one per\n"
     "matching entry, in no particular order."},
    {"items", (PyCFunction)ft_items, METH_NOARGS,
     "items($self, /)\n--\n\nA snapshot list of (filter, value) entries."},
    {"clear", (PyCFunction)ft_clear_method, METH_NOARGS,
     "clear($self, /)\n--\n\nRemove every entry."},
    {NULL}
};

static PyMemberDef ft_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(sb_filtertrie, weakreflist), READONLY},
    {NULL}
};

static PyType_Slot ft_slots[] = {
    {Py_tp_doc, "FilterTrie()\n--\n\n"
                "MQTT subscription filters ('+', '#', '$share/<group>/...') mapped to values;\n"
                "match(topic) finds the values of every matching filter in time that depends\n"
                "on the topic depth, not on the number of filters.  Thread-safe."},
    {Py_tp_new, ft_new},
    {Py_tp_dealloc, ft_dealloc},
    {Py_tp_traverse, ft_traverse},
    {Py_tp_clear, ft_clear},
    {Py_tp_methods, ft_methods},
    {Py_tp_members, ft_members},
    {Py_sq_length, ft_len},
    {0, NULL}
};

PyType_Spec sb_filtertrie_spec = {
    .name = "sermas_bus._core.FilterTrie",
    .basicsize = sizeof(sb_filtertrie),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = ft_slots,
};
