/* The raw-value cache in C: trackerd/core/raw_cache.py's RawCache, for a column at a time.
 *
 * A Table maps a keyed hash of a raw value (as a worker sent it) to what it came to:
 * counted, rejected or ignored. The hash is SipHash-1-3 under a 128-bit key the
 * caller draws from the OS per table (secrets.token_bytes): never Python's hash(),
 * whose secret is fixed when PYTHONHASHSEED is. The key stays in this struct: no
 * method returns it. No text is kept: only 64-bit hashes.
 *
 * A table made with split=1 (the raw senders') keys each usual sender by its domain
 * part: "local@domain", "<local@domain>", "<domain>" and "domain" in ASCII without
 * space, angle brackets or another "@" (servertracker/sender_split.py's usual
 * forms, for which split_sender() returns that part). Every address of a domain is
 * then one entry, found at the first look-up. Any other value is keyed by its whole
 * text, under another key, and the Python code decides it on a miss.
 *
 * Each call does bounded work: a pass over the values given, each hashed once
 * (a value's length is bounded by the frame that carried it). Nothing here
 * allocates a Python object per value: a str's characters are hashed where they
 * lie (CPython keeps every str in its narrowest form, so equal strings have equal
 * bytes and kind).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define WAYS 4
enum { MISS = 0, COUNTED = 1, REJECTED = 2, IGNORED = 3 };
/* A slot holds the key for a counted value, else the key XOR its code's mark
 * (as raw_cache.py's). */
static const uint64_t MARKS[4] = {0, 0, 0x2545F4914F6CDD1DULL, 0x5851F42D4C957F2DULL};
/* servertracker.protocol.MAX_VALUE_LENGTH: a longer sender is never a usual one. */
#define MAX_VALUE_LENGTH 512
/* Rows at most: 2^28 rows of 4 slots, 8 GiB. */
#define MAX_ROWS (1ULL << 28)

#if defined(__GNUC__) || defined(__clang__)
#define PREFETCH(address) __builtin_prefetch(address)
#else
#define PREFETCH(address) ((void)(address))
#endif

/* --- SipHash-1-3 (Aumasson and Bernstein; CPython's choice for str hashes) ---- */

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                              \
    do {                                                                                      \
        v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);                            \
        v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                                               \
        v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                                               \
        v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);                            \
    } while (0)

static uint64_t
load64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, 8); /* no unaligned access; x86 and arm64 are little-endian */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

static uint64_t
siphash13(uint64_t k0, uint64_t k1, const unsigned char *data, size_t len)
{
    uint64_t v0 = k0 ^ 0x736f6d6570736575ULL, v1 = k1 ^ 0x646f72616e646f6dULL;
    uint64_t v2 = k0 ^ 0x6c7967656e657261ULL, v3 = k1 ^ 0x7465646279746573ULL;
    const unsigned char *end = data + (len & ~(size_t)7);
    for (; data != end; data += 8) {
        uint64_t m = load64(data);
        v3 ^= m;
        SIPROUND;
        v0 ^= m;
    }
    uint64_t b = (uint64_t)len << 56;
    switch (len & 7) {
    case 7: b |= (uint64_t)data[6] << 48; /* fall through */
    case 6: b |= (uint64_t)data[5] << 40; /* fall through */
    case 5: b |= (uint64_t)data[4] << 32; /* fall through */
    case 4: b |= (uint64_t)data[3] << 24; /* fall through */
    case 3: b |= (uint64_t)data[2] << 16; /* fall through */
    case 2: b |= (uint64_t)data[1] << 8;  /* fall through */
    case 1: b |= (uint64_t)data[0]; break;
    default: break;
    }
    v3 ^= b;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

/* --- the table ------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    uint64_t *slots; /* rows * WAYS */
    uint64_t mask;   /* rows - 1 */
    uint64_t empty;  /* what an empty slot holds: random, so no key is taken for it */
    uint64_t key[2]; /* whole values */
    uint64_t part_key[2]; /* the domain parts of usual senders */
    int split;
} Table;

/* The domain part of a usual sender (see the top), or NULL. */
static const unsigned char *
usual_part(const unsigned char *s, Py_ssize_t n, Py_ssize_t *part_len)
{
    if (n <= 0 || n > MAX_VALUE_LENGTH)
        return NULL;
    Py_ssize_t first = 0, end = n;
    if (s[0] == '<') {
        if (n < 3 || s[n - 1] != '>')
            return NULL;
        first = 1;
        end = n - 1;
    }
    Py_ssize_t at = -1;
    for (Py_ssize_t i = first; i < end; i++) {
        switch (s[i]) {
        case '@':
            if (at >= 0)
                return NULL;
            at = i;
            break;
        /* What str.isspace() takes in ASCII, and the brackets. */
        case '<': case '>': case ' ': case '\t': case '\n': case '\v': case '\f': case '\r':
        case 0x1c: case 0x1d: case 0x1e: case 0x1f:
            return NULL;
        default:
            break;
        }
    }
    if (at < 0) {
        *part_len = end - first;
        return s + first;
    }
    if (at == first || at == end - 1)
        return NULL; /* no local part, or no domain: Python decides (rejected) */
    *part_len = end - at - 1;
    return s + at + 1;
}

/* The key of one value: 0 and a key, or -1 with TypeError for anything but str and None. */
static int
key_of(const Table *self, PyObject *value, uint64_t *key)
{
    if (value == Py_None) {
        /* The tweak 5 is no str kind: None never shares a key with a str. */
        *key = siphash13(self->key[0] ^ 5, self->key[1], NULL, 0);
        return 0;
    }
    if (!PyUnicode_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "values must be str or None");
        return -1;
    }
    if (PyUnicode_READY(value) < 0) /* a legacy string made by the old C API */
        return -1;
    Py_ssize_t length = PyUnicode_GET_LENGTH(value);
    const unsigned char *data = PyUnicode_DATA(value);
    if (PyUnicode_IS_ASCII(value)) {
        if (self->split) {
            Py_ssize_t part_len = 0;
            const unsigned char *part = usual_part(data, length, &part_len);
            if (part != NULL) {
                *key = siphash13(self->part_key[0], self->part_key[1], part, (size_t)part_len);
                return 0;
            }
        }
        *key = siphash13(self->key[0], self->key[1], data, (size_t)length);
        return 0;
    }
    /* Kind 1 (Latin-1 beyond ASCII), 2 or 4 bytes a character: the kind in the key,
     * so that two strings of equal bytes and different kinds differ. */
    int kind = PyUnicode_KIND(value);
    *key = siphash13(self->key[0] ^ (uint64_t)kind, self->key[1], data,
                     (size_t)length * (size_t)kind);
    return 0;
}

static int
code_of(const Table *self, uint64_t key)
{
    const uint64_t *row = self->slots + (key & self->mask) * WAYS;
    for (int way = 0; way < WAYS; way++) {
        uint64_t slot = row[way];
        if (slot == key)
            return COUNTED;
        if (slot == (key ^ MARKS[REJECTED]))
            return REJECTED;
        if (slot == (key ^ MARKS[IGNORED]))
            return IGNORED;
    }
    return MISS;
}

static void
put(Table *self, uint64_t key, int code)
{
    uint64_t *row = self->slots + (key & self->mask) * WAYS;
    uint64_t stored = key ^ MARKS[code];
    int free_way = -1;
    for (int way = 0; way < WAYS; way++) {
        if (row[way] == stored)
            return; /* given twice */
        if (free_way < 0 && row[way] == self->empty)
            free_way = way;
    }
    /* A full row forgets the key in the slot chosen by the new key's upper bits. */
    row[free_way >= 0 ? free_way : (int)((key >> 32) & (WAYS - 1))] = stored;
}

static void
fill_empty(Table *self)
{
    uint64_t count = (self->mask + 1) * WAYS;
    for (uint64_t i = 0; i < count; i++)
        self->slots[i] = self->empty;
}

static int
Table_init(Table *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"slots", "key", "empty", "split", NULL};
    Py_ssize_t slots;
    Py_buffer key;
    unsigned long long empty;
    int split = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "ny*K|p", kwlist, &slots, &key, &empty, &split))
        return -1;
    if (key.len != 32) {
        PyBuffer_Release(&key);
        PyErr_SetString(PyExc_ValueError, "the key must be 32 bytes");
        return -1;
    }
    uint64_t words[4];
    memcpy(words, key.buf, sizeof words);
    PyBuffer_Release(&key);
    if (slots < 1) {
        PyErr_SetString(PyExc_ValueError, "slots must be positive");
        return -1;
    }
    /* Rows: slots / WAYS rounded up, then up to a power of two (as raw_cache.py's). */
    uint64_t rows = ((uint64_t)slots + WAYS - 1) / WAYS;
    if (rows > MAX_ROWS) {
        PyErr_SetString(PyExc_ValueError, "too many slots");
        return -1;
    }
    uint64_t power = 1;
    while (power < rows)
        power <<= 1;
    uint64_t *table = PyMem_Calloc((size_t)(power * WAYS), sizeof(uint64_t));
    if (table == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    PyMem_Free(self->slots);
    self->slots = table;
    self->mask = power - 1;
    self->key[0] = words[0];
    self->key[1] = words[1];
    self->part_key[0] = words[2];
    self->part_key[1] = words[3];
    self->empty = empty;
    memset(words, 0, sizeof words);
    self->split = split;
    fill_empty(self);
    return 0;
}

static void
Table_dealloc(Table *self)
{
    if (self->slots != NULL)
        memset(self->slots, 0, (size_t)((self->mask + 1) * WAYS * sizeof(uint64_t)));
    PyMem_Free(self->slots);
    memset(self->key, 0, sizeof self->key);
    memset(self->part_key, 0, sizeof self->part_key);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
ready(const Table *self)
{
    if (self->slots == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Table.__init__ was not called");
        return 0;
    }
    return 1;
}

static int
int64_arg(PyObject *arg, uint64_t *out)
{
    long long value = PyLong_AsLongLong(arg);
    if (value == -1 && PyErr_Occurred())
        return 0;
    *out = (uint64_t)value;
    return 1;
}

PyDoc_STRVAR(Table_look_up_doc,
"look_up(values) -> (keys, codes): each value's key (8 bytes, native order) and its\n"
"code (1 byte: 0 miss, 1 counted, 2 rejected, 3 ignored). values: a list or tuple of\n"
"str or None.");

static PyObject *
Table_look_up(Table *self, PyObject *values)
{
    if (!ready(self))
        return NULL;
    PyObject *seq = PySequence_Fast(values, "values must be a list or a tuple");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    PyObject *keys = PyBytes_FromStringAndSize(NULL, n * 8);
    PyObject *codes = PyByteArray_FromStringAndSize(NULL, n);
    if (keys == NULL || codes == NULL)
        goto fail;
    unsigned char *key_bytes = (unsigned char *)PyBytes_AS_STRING(keys);
    char *code_bytes = PyByteArray_AS_STRING(codes);
    /* Two passes: the keys first, each one's row asked of memory at once (a row is
     * one random access into MiBs, mostly a cache miss), then the rows read; the
     * misses overlap instead of following one another. */
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t key;
        if (key_of(self, items[i], &key) < 0)
            goto fail;
        memcpy(key_bytes + 8 * i, &key, 8);
        PREFETCH(self->slots + (key & self->mask) * WAYS);
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t key;
        memcpy(&key, key_bytes + 8 * i, 8);
        code_bytes[i] = (char)code_of(self, key);
    }
    Py_DECREF(seq);
    PyObject *result = PyTuple_Pack(2, keys, codes);
    Py_DECREF(keys);
    Py_DECREF(codes);
    return result;
fail:
    Py_DECREF(seq);
    Py_XDECREF(keys);
    Py_XDECREF(codes);
    return NULL;
}

PyDoc_STRVAR(Table_remember_doc,
"remember(keys, codes): enter keys (a buffer of native int64) with their codes (a\n"
"buffer of int8, each 1, 2 or 3), as look_up() gave them; a full row forgets one.");

static PyObject *
Table_remember(Table *self, PyObject *args)
{
    Py_buffer keys, codes;
    if (!ready(self))
        return NULL;
    if (!PyArg_ParseTuple(args, "y*y*", &keys, &codes))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = codes.len;
    if (keys.len != n * 8) {
        PyErr_SetString(PyExc_ValueError, "one key (8 bytes) for each code (1 byte)");
        goto done;
    }
    const unsigned char *code_bytes = codes.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (code_bytes[i] < COUNTED || code_bytes[i] > IGNORED) {
            PyErr_SetString(PyExc_ValueError, "a code must be 1, 2 or 3");
            goto done;
        }
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t key;
        memcpy(&key, (const unsigned char *)keys.buf + 8 * i, 8);
        put(self, key, code_bytes[i]);
    }
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&keys);
    PyBuffer_Release(&codes);
    return result;
}

static PyObject *
Table_key(Table *self, PyObject *value)
{
    uint64_t key;
    if (!ready(self) || key_of(self, value, &key) < 0)
        return NULL;
    return PyLong_FromLongLong((long long)key);
}

static PyObject *
Table_code(Table *self, PyObject *arg)
{
    uint64_t key;
    if (!ready(self) || !int64_arg(arg, &key))
        return NULL;
    return PyLong_FromLong(code_of(self, key));
}

static PyObject *
Table_put(Table *self, PyObject *args)
{
    PyObject *key_arg;
    int code;
    uint64_t key;
    if (!ready(self) || !PyArg_ParseTuple(args, "Oi", &key_arg, &code) || !int64_arg(key_arg, &key))
        return NULL;
    if (code < COUNTED || code > IGNORED) {
        PyErr_SetString(PyExc_ValueError, "a code must be 1, 2 or 3");
        return NULL;
    }
    put(self, key, code);
    Py_RETURN_NONE;
}

static PyObject *
Table_clear(Table *self, PyObject *Py_UNUSED(ignored))
{
    if (!ready(self))
        return NULL;
    fill_empty(self);
    Py_RETURN_NONE;
}

static PyObject *
Table_held(Table *self, PyObject *Py_UNUSED(ignored))
{
    if (!ready(self))
        return NULL;
    uint64_t count = (self->mask + 1) * WAYS, held = 0;
    for (uint64_t i = 0; i < count; i++)
        held += self->slots[i] != self->empty;
    return PyLong_FromUnsignedLongLong(held);
}

static PyObject *
Table_contents(Table *self, PyObject *Py_UNUSED(ignored))
{
    if (!ready(self))
        return NULL;
    return PyBytes_FromStringAndSize((const char *)self->slots,
                                     (Py_ssize_t)((self->mask + 1) * WAYS * sizeof(uint64_t)));
}

static PyObject *
Table_slots(Table *self, void *Py_UNUSED(closure))
{
    if (!ready(self))
        return NULL;
    return PyLong_FromUnsignedLongLong((self->mask + 1) * WAYS);
}

static PyMethodDef Table_methods[] = {
    {"look_up", (PyCFunction)Table_look_up, METH_O, Table_look_up_doc},
    {"remember", (PyCFunction)Table_remember, METH_VARARGS, Table_remember_doc},
    {"key", (PyCFunction)Table_key, METH_O, "key(value): the key look_up() gives value."},
    {"code", (PyCFunction)Table_code, METH_O, "code(key): look_up() for one key."},
    {"put", (PyCFunction)Table_put, METH_VARARGS, "put(key, code): remember() for one key."},
    {"clear", (PyCFunction)Table_clear, METH_NOARGS, "Forget every key."},
    {"held", (PyCFunction)Table_held, METH_NOARGS, "Keys held (a pass over the table)."},
    {"contents", (PyCFunction)Table_contents, METH_NOARGS,
     "The slots' bytes: what the table holds (for tests: 64-bit keys only)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Table_getset[] = {
    {"slots", (getter)Table_slots, NULL, "slots in the table", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject TableType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "trackerd.core._ccolumns.Table",
    .tp_doc = PyDoc_STR("Table(slots, key, empty, split=False): keyed hash of a raw value -> its code.\n"
                       "key: 32 random bytes (two SipHash keys); empty: a random 64-bit mark."),
    .tp_basicsize = sizeof(Table),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Table_init,
    .tp_dealloc = (destructor)Table_dealloc,
    .tp_methods = Table_methods,
    .tp_getset = Table_getset,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "trackerd.core._ccolumns",
    .m_doc = PyDoc_STR("The raw-value cache in C (trackerd/core/raw_cache.py's twin)."),
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__ccolumns(void)
{
    if (PyType_Ready(&TableType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Table", (PyObject *)&TableType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
