/*
 * fuzz_core.c - libFuzzer harnesses for the C core's Python-facing code,
 * in an embedded CPython: the core's own sources are compiled into the
 * harness with ASan/UBSan and coverage (the interpreter is not), and
 * registered as sermas_bus._core before the package is imported.
 *
 * One file, one harness per SB_FUZZ_TARGET (make fuzz builds each):
 *   json_decode     bytes -> json_loads; what decodes must re-encode to a
 *                   fixed point: dumps(loads(dumps(x))) == dumps(x)
 *   json_roundtrip  a value built from the bytes (str, int, float, bool,
 *                   None, list, dict, nested) -> json_dumps -> json_loads
 *                   gives an equal value, and the bytes equal json.dumps's
 *   topics          topic render/match on the platform's table: whatever
 *                   match() finds renders back to the same topic; whatever
 *                   render() makes matches to a template rendering it back
 *   trie            FilterTrie add/discard/match against the reference
 *                   matcher (sermas_bus.matcher.topic_matches_sub)
 *   properties      packed MQTT 5 properties (the durable store's format)
 *                   -> paho's properties -> Python pairs -> paho's -> packed:
 *                   the same bytes
 *
 * A violated property calls abort() after printing what differed: libFuzzer
 * keeps the input as a crash.
 */
#include "../csrc/sb.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef SB_FUZZ_TARGET
#error "define SB_FUZZ_TARGET (json_decode, json_roundtrip, topics, trie, properties)"
#endif
#ifndef SB_ROOT
#error "define SB_ROOT (the repository, for the sermas_bus package)"
#endif
#ifndef SB_PYTHON_HOME
#error "define SB_PYTHON_HOME (sys.base_prefix of the Python the core is built for)"
#endif

#define STR_(x) #x
#define STR(x) STR_(x)
#define TARGET_IS(name) (strcmp(STR(SB_FUZZ_TARGET), #name) == 0)

PyMODINIT_FUNC PyInit__core(void);

static PyObject *g_core, *g_loads, *g_dumps, *g_table, *g_names, *g_matches, *g_trie_type, *g_json_dumps;

static void
die(const char *what)
{
    fprintf(stderr, "fuzz_core: %s\n", what);
    if (PyErr_Occurred())
        PyErr_Print();
    abort();
}

static PyObject *
attr(PyObject *mod, const char *name)
{
    PyObject *o = PyObject_GetAttrString(mod, name);
    if (o == NULL)
        die(name);
    return o;
}

/* The core built into this binary, as sermas_bus._core; then the package. */
static void
start_python(void)
{
    PyConfig config;
    PyPreConfig pre;
    PyObject *def, *machinery, *spec, *sys_modules, *pkg, *topics, *matcher, *json;
    /* every object from malloc: LeakSanitizer sees (and follows) them all,
     * so a missing Py_DECREF in the core shows as a leak of its input */
    PyPreConfig_InitIsolatedConfig(&pre);
    pre.allocator = PYMEM_ALLOCATOR_MALLOC;
    if (PyStatus_Exception(Py_PreInitialize(&pre)))
        die("Py_PreInitialize");
    PyConfig_InitIsolatedConfig(&config);
    config.install_signal_handlers = 0;
    if (PyStatus_Exception(PyConfig_SetBytesString(&config, &config.home, SB_PYTHON_HOME)))
        die("PYTHONHOME");
    if (PyStatus_Exception(Py_InitializeFromConfig(&config)))
        die("Py_InitializeFromConfig");
    PyConfig_Clear(&config);
    if (PyRun_SimpleString("import sys; sys.path.insert(0, '" SB_ROOT "')") != 0)
        die("sys.path");
    def = PyInit__core();
    machinery = PyImport_ImportModule("importlib.machinery");
    if (def == NULL || machinery == NULL)
        die("PyInit__core / importlib");
    spec = PyObject_CallMethod(machinery, "ModuleSpec", "sO", "sermas_bus._core", Py_None);
    if (spec == NULL)
        die("ModuleSpec");
    g_core = PyModule_FromDefAndSpec((PyModuleDef *)def, spec);
    if (g_core == NULL || PyModule_ExecDef(g_core, (PyModuleDef *)def) < 0)
        die("module exec");
    sys_modules = PyImport_GetModuleDict();
    if (PyDict_SetItemString(sys_modules, "sermas_bus._core", g_core) < 0)
        die("sys.modules");
    pkg = PyImport_ImportModule("sermas_bus");
    topics = PyImport_ImportModule("sermas_bus.topics");
    matcher = PyImport_ImportModule("sermas_bus.matcher");
    json = PyImport_ImportModule("json");
    if (pkg == NULL || topics == NULL || matcher == NULL || json == NULL)
        die("import sermas_bus");
    if (attr(pkg, "_core") != g_core)
        die("the package did not take the instrumented core");
    g_loads = attr(g_core, "json_loads");
    g_dumps = attr(g_core, "json_dumps");
    g_table = attr(topics, "table");
    g_names = PyObject_CallMethod(g_table, "names", NULL);
    g_matches = attr(matcher, "topic_matches_sub");
    g_trie_type = attr(g_core, "FilterTrie");
    g_json_dumps = attr(json, "dumps");
    if (g_names == NULL)
        die("table.names()");
    Py_DECREF(spec);
    Py_DECREF(machinery);
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    start_python();
    return 0;
}

/* ---- a small reader over the input ------------------------------------------ */

typedef struct {
    const uint8_t *p;
    size_t n;
} input;

static unsigned
take(input *in)
{
    unsigned b;
    if (in->n == 0)
        return 0;
    b = *in->p++;
    in->n--;
    return b;
}

/* Up to max bytes as a str (invalid UTF-8 replaced): never NULL. */
static PyObject *
take_str(input *in, size_t max)
{
    size_t len = take(in) % (max + 1);
    PyObject *s;
    if (len > in->n)
        len = in->n;
    s = PyUnicode_DecodeUTF8((const char *)in->p, (Py_ssize_t)len, "replace");
    in->p += len;
    in->n -= len;
    if (s == NULL)
        die("str");
    return s;
}

static int
equal_or_die(PyObject *a, PyObject *b, const char *what)
{
    int eq = PyObject_RichCompareBool(a, b, Py_EQ);
    if (eq != 1) {
        fprintf(stderr, "%s differ:\n", what);
        PyObject_Print(a, stderr, 0);
        fprintf(stderr, "\n");
        PyObject_Print(b, stderr, 0);
        fprintf(stderr, "\n");
        die(what);
    }
    return 0;
}

/* ---- json ------------------------------------------------------------------------ */

static void
fuzz_json_decode(const uint8_t *data, size_t size)
{
    PyObject *obj = PyObject_CallFunction(g_loads, "y#", (const char *)data, (Py_ssize_t)size), *a, *b, *again;
    if (obj == NULL) {
        PyErr_Clear();    /* refused: JSONDecodeError, ValueError (digits), RecursionError */
        return;
    }
    a = PyObject_CallOneArg(g_dumps, obj);
    if (a == NULL) {
        PyErr_Clear();    /* e.g. a float the decoder read as inf: not encodable */
        Py_DECREF(obj);
        return;
    }
    again = PyObject_CallOneArg(g_loads, a);
    if (again == NULL)
        die("what json_dumps made does not decode");
    b = PyObject_CallOneArg(g_dumps, again);
    if (b == NULL)
        die("re-encoding failed");
    equal_or_die(a, b, "dumps(loads(dumps(x))) and dumps(x)");
    Py_DECREF(obj);
    Py_DECREF(a);
    Py_DECREF(again);
    Py_DECREF(b);
}

/* A JSON-able value from the input (depth bounded). */
static PyObject *
build_value(input *in, int depth)
{
    unsigned kind = take(in) % (depth > 6 ? 6 : 8);
    PyObject *v = NULL;
    switch (kind) {
    case 0: v = Py_NewRef(Py_None); break;
    case 1: v = Py_NewRef(take(in) & 1 ? Py_True : Py_False); break;
    case 2: {
        long long x = 0;
        unsigned i, n = take(in) % 9;
        for (i = 0; i < n; i++)
            x = (long long)((unsigned long long)x << 8 | take(in));
        v = PyLong_FromLongLong(x);
        if (take(in) == 7 && v != NULL) {   /* sometimes a big one */
            PyObject *big = PyNumber_Power(v, PyLong_FromLong(9), Py_None);
            Py_DECREF(v);
            v = big;
        }
        break;
    }
    case 3: {
        double d;
        uint8_t raw[8] = {0};
        unsigned i;
        for (i = 0; i < 8; i++)
            raw[i] = (uint8_t)take(in);
        memcpy(&d, raw, sizeof d);
        if (d != d || d - d != 0)
            d = 0.5;   /* NaN / inf are not JSON */
        v = PyFloat_FromDouble(d);
        break;
    }
    case 4:
    case 5: v = take_str(in, 40); break;
    case 6: {
        unsigned i, n = take(in) % 6;
        v = PyList_New(0);
        for (i = 0; v != NULL && i < n; i++) {
            PyObject *item = build_value(in, depth + 1);
            if (item == NULL || PyList_Append(v, item) < 0)
                die("list");
            Py_DECREF(item);
        }
        break;
    }
    default: {
        unsigned i, n = take(in) % 6;
        v = PyDict_New();
        for (i = 0; v != NULL && i < n; i++) {
            PyObject *k = take_str(in, 12), *item = build_value(in, depth + 1);
            if (item == NULL || PyDict_SetItem(v, k, item) < 0)
                die("dict");
            Py_DECREF(k);
            Py_DECREF(item);
        }
        break;
    }
    }
    if (v == NULL)
        die("value");
    return v;
}

static void
fuzz_json_roundtrip(const uint8_t *data, size_t size)
{
    input in = {data, size};
    PyObject *v = build_value(&in, 0), *enc, *back, *ref, *ref_bytes;
    enc = PyObject_CallOneArg(g_dumps, v);
    if (enc == NULL) {
        /* only a str with a lone surrogate may be refused */
        if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError) && !PyErr_ExceptionMatches(PyExc_ValueError))
            die("json_dumps raised something unexpected");
        PyErr_Clear();
        Py_DECREF(v);
        return;
    }
    back = PyObject_CallOneArg(g_loads, enc);
    if (back == NULL)
        die("json_loads refused what json_dumps made");
    equal_or_die(v, back, "value and loads(dumps(value))");
    /* the same text as the standard library's compact, non-ASCII-escaping form */
    ref = PyObject_CallFunction(g_json_dumps, "O", v);
    if (ref != NULL) {
        PyObject *kw = Py_BuildValue("{s:(ss),s:O,s:O}", "separators", ",", ":", "ensure_ascii", Py_False,
                                     "allow_nan", Py_False);
        PyObject *args = PyTuple_Pack(1, v);
        Py_DECREF(ref);
        ref = kw && args ? PyObject_Call(g_json_dumps, args, kw) : NULL;
        Py_XDECREF(kw);
        Py_XDECREF(args);
    }
    if (ref == NULL)
        die("json.dumps");
    ref_bytes = PyUnicode_AsEncodedString(ref, "utf-8", "surrogatepass");
    if (ref_bytes == NULL)
        die("encode");
    equal_or_die(enc, ref_bytes, "json_dumps and json.dumps");
    Py_DECREF(ref_bytes);
    Py_DECREF(ref);
    Py_DECREF(back);
    Py_DECREF(enc);
    Py_DECREF(v);
}

/* ---- topics -------------------------------------------------------------------------- */

/* render(name, params) of what match() found must give the topic back. */
static void
check_match_renders_back(PyObject *topic)
{
    PyObject *m = PyObject_CallMethod(g_table, "match", "O", topic), *again;
    if (m == NULL) {
        PyErr_Clear();    /* a topic with a control character or bad UTF-8 is refused */
        return;
    }
    if (m != Py_None) {
        again = PyObject_CallMethod(g_table, "render", "OO", PyTuple_GET_ITEM(m, 0), PyTuple_GET_ITEM(m, 1));
        if (again == NULL)
            die("render refused what match found");
        equal_or_die(topic, again, "a matched topic and its rendering");
        Py_DECREF(again);
    }
    Py_DECREF(m);
}

static void
fuzz_topics(const uint8_t *data, size_t size)
{
    input in = {data, size};
    if (take(&in) & 1) {
        /* a raw topic */
        PyObject *t = PyUnicode_DecodeUTF8((const char *)in.p, (Py_ssize_t)in.n, "replace");
        if (t == NULL)
            die("str");
        check_match_renders_back(t);
        Py_DECREF(t);
        return;
    }
    {
        /* a name of the table and parameters */
        Py_ssize_t n = PyList_GET_SIZE(g_names);
        PyObject *name = PyList_GET_ITEM(g_names, (Py_ssize_t)take(&in) % n);
        PyObject *params = PyDict_New(), *topic, *pnames;
        Py_ssize_t i;
        pnames = PyObject_CallMethod(g_table, "params", "O", name);
        if (params == NULL || pnames == NULL)
            die("params");
        for (i = 0; i < PyTuple_GET_SIZE(pnames); i++) {
            PyObject *v = take_str(&in, 16);
            PyDict_SetItem(params, PyTuple_GET_ITEM(pnames, i), v);
            Py_DECREF(v);
        }
        topic = PyObject_CallMethod(g_table, "render", "OO", name, params);
        if (topic == NULL)
            PyErr_Clear();    /* empty, '/', wildcard or control characters in a value: refused */
        else {
            check_match_renders_back(topic);
            Py_DECREF(topic);
        }
        Py_DECREF(params);
        Py_DECREF(pnames);
    }
}

/* ---- the filter trie --------------------------------------------------------------------- */

/* A topic or filter from a few levels of a small alphabet (collisions wanted). */
static PyObject *
take_levels(input *in, int filter)
{
    static const char *words[] = {"a", "b", "app", "", "$SYS", "x y", "\xc3\xa9"};
    char buf[256];
    size_t len = 0;
    unsigned i, n = 1 + take(in) % 5;
    if (filter && take(in) % 8 == 0) {
        memcpy(buf, "$share/g/", 9);
        len = 9;
    }
    for (i = 0; i < n; i++) {
        unsigned w = take(in);
        const char *word = filter && w % 9 == 7 ? "+" : filter && w % 9 == 8 ? "#" : words[w % 7];
        size_t wl = strlen(word);
        if (i > 0)
            buf[len++] = '/';
        memcpy(buf + len, word, wl);
        len += wl;
    }
    return PyUnicode_DecodeUTF8(buf, (Py_ssize_t)len, "strict");
}

static void
fuzz_trie(const uint8_t *data, size_t size)
{
    input in = {data, size};
    PyObject *trie = PyObject_CallNoArgs(g_trie_type), *added = PyList_New(0);
    if (trie == NULL || added == NULL)
        die("FilterTrie()");
    while (in.n > 0) {
        unsigned op = take(&in) % 4;
        if (op <= 1) {
            PyObject *f = take_levels(&in, 1), *v = PyLong_FromLong((long)take(&in) % 4), *r;
            r = PyObject_CallMethod(trie, op == 0 ? "add" : "discard", "OO", f, v);
            if (r == NULL)
                PyErr_Clear();     /* an invalid filter ('#' not last, ...) is refused */
            else if (op == 0) {
                PyObject *pair = PyTuple_Pack(2, f, v);
                PyList_Append(added, pair);
                Py_DECREF(pair);
            }
            else if (r == Py_True) {
                /* remove one (filter, value) pair from the model */
                Py_ssize_t i;
                for (i = 0; i < PyList_GET_SIZE(added); i++) {
                    PyObject *p = PyList_GET_ITEM(added, i);
                    if (PyObject_RichCompareBool(PyTuple_GET_ITEM(p, 0), f, Py_EQ) == 1 &&
                        PyObject_RichCompareBool(PyTuple_GET_ITEM(p, 1), v, Py_EQ) == 1) {
                        PySequence_DelItem(added, i);
                        break;
                    }
                }
            }
            Py_XDECREF(r);
            Py_DECREF(f);
            Py_DECREF(v);
        }
        else {
            PyObject *t = take_levels(&in, 0), *got, *want = PyList_New(0);
            Py_ssize_t i;
            got = PyObject_CallMethod(trie, "match", "O", t);
            if (got == NULL)
                die("match");
            for (i = 0; i < PyList_GET_SIZE(added); i++) {
                PyObject *p = PyList_GET_ITEM(added, i);
                PyObject *m = PyObject_CallFunction(g_matches, "OO", PyTuple_GET_ITEM(p, 0), t);
                if (m == NULL)
                    die("topic_matches_sub");
                if (m == Py_True)
                    PyList_Append(want, PyTuple_GET_ITEM(p, 1));
                Py_DECREF(m);
            }
            if (PyList_Sort(got) < 0 || PyList_Sort(want) < 0)
                die("sort");
            if (PyObject_RichCompareBool(got, want, Py_EQ) != 1) {
                PyObject_Print(t, stderr, 0);
                PyObject_Print(added, stderr, 0);
                equal_or_die(got, want, "FilterTrie.match and the reference matcher");
            }
            Py_DECREF(got);
            Py_DECREF(want);
            Py_DECREF(t);
        }
    }
    Py_DECREF(added);
    Py_DECREF(trie);
}

/* ---- MQTT 5 properties ---------------------------------------------------------------------- */

static int
valid_utf8(const MQTTLenString *s)
{
    PyObject *u = PyUnicode_DecodeUTF8(s->data, s->len, "strict");
    if (u == NULL) {
        PyErr_Clear();
        return 0;
    }
    Py_DECREF(u);
    return 1;
}

/* Do the UTF-8 string properties hold UTF-8?  (Received ones that do not are
 * decoded with U+FFFD by design: the round trip then differs.) */
static int
strings_are_utf8(const MQTTProperties *props)
{
    int i;
    for (i = 0; i < props->count; i++) {
        const MQTTProperty *p = &props->array[i];
        int type = MQTTProperty_getType(p->identifier);
        if ((type == MQTTPROPERTY_TYPE_UTF_8_ENCODED_STRING || type == MQTTPROPERTY_TYPE_UTF_8_STRING_PAIR) &&
            !valid_utf8(&p->value.data))
            return 0;
        if (type == MQTTPROPERTY_TYPE_UTF_8_STRING_PAIR && !valid_utf8(&p->value.value))
            return 0;
    }
    return 1;
}

static void
fuzz_properties(const uint8_t *data, size_t size)
{
    MQTTProperties a = MQTTProperties_initializer, b = MQTTProperties_initializer;
    unsigned char *pa = NULL, *pb = NULL;
    uint32_t la = 0, lb = 0;
    PyObject *pairs;
    if (size > UINT32_MAX || sb_props_unpack(data, (uint32_t)size, &a) < 0)
        return;    /* not a packing of ours: refused, nothing leaked (ASan would say) */
    if (sb_props_pack(&a, &pa, &la) < 0)
        die("pack");
    pairs = sb_props_to_pairs(&a);
    if (pairs == NULL)
        die("to_pairs");
    if (sb_props_from_pairs(pairs, &b) < 0) {
        /* the pairs layer checks what paho's unpack does not (e.g. a UTF-8
         * string property that is not UTF-8): refused with an exception */
        PyErr_Clear();
    }
    else {
        if (sb_props_pack(&b, &pb, &lb) < 0)
            die("pack");
        if (strings_are_utf8(&a) && (la != lb || (la > 0 && memcmp(pa, pb, la) != 0)))
            die("properties changed through the Python pairs");
        MQTTProperties_free(&b);
    }
    Py_DECREF(pairs);
    MQTTProperties_free(&a);
    PyMem_RawFree(pa);
    PyMem_RawFree(pb);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (TARGET_IS(json_decode))
        fuzz_json_decode(data, size);
    else if (TARGET_IS(json_roundtrip))
        fuzz_json_roundtrip(data, size);
    else if (TARGET_IS(topics))
        fuzz_topics(data, size);
    else if (TARGET_IS(trie))
        fuzz_trie(data, size);
    else
        fuzz_properties(data, size);
    if (PyErr_Occurred())
        die("an exception was left set");
    return 0;
}
