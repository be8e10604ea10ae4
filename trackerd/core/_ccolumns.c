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

/* --- a columns message, read in place ----------------------------------------------
 *
 * scan_columns() reads a frame body that is exactly [1, "columns", conn_ips, senders]
 * in the forms the library writes: an array of 4, the positive fixint 1, the fixstr
 * "columns", two arrays of 1 to MAX_PAIRS str or nil values of equal length, every
 * str valid UTF-8 (as Python's strict decoder takes it), nothing after. Such a body
 * is one that servertracker.protocol.decode_body() takes, as a RecordColumns of the
 * same values. Any other body (an error, an extra element, another encoding of the
 * same values) gives None, and decode_body() decides: so the verdicts are its own.
 * A Columns keeps the body (a buffer export: it cannot be resized) and where each
 * value starts, until release() overwrites the body's bytes.
 */

/* servertracker.protocol.MAX_PAIRS_PER_MESSAGE */
#define MAX_PAIRS 65536

typedef struct {
    PyObject_HEAD
    Py_buffer body;          /* held from scan_columns() to release() */
    int held;
    Py_ssize_t count;        /* pairs */
    uint32_t *starts[2];     /* per column, the offset of each value's first byte */
    /* values() and look_up_columns() calls running: they read starts and the body
     * around allocations, which may run the collector and so any __del__; a
     * release() meanwhile waits (release_pending) until the last one ends. */
    int busy;
    int release_pending;
} Columns;

static PyTypeObject ColumnsType;

/* Strict UTF-8, as CPython's decoder: no overlong forms, no surrogates, at most
 * U+10FFFF. Sets *ascii. */
/* Whether s[0:n] is ASCII: eight bytes at a time. */
static int
all_ascii(const unsigned char *s, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    uint64_t high = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t word;
        memcpy(&word, s + i, 8);
        high |= word;
    }
    for (; i < n; i++)
        high |= s[i];
    return (high & 0x8080808080808080ULL) == 0;
}

static int
valid_utf8(const unsigned char *s, Py_ssize_t n, int *ascii)
{
    Py_ssize_t i = 0;
    *ascii = 1;
    if (all_ascii(s, n))
        return 1;
    while (i < n) {
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        *ascii = 0;
        Py_ssize_t need;
        unsigned char low = 0x80, high = 0xBF; /* the second byte's range */
        if (c >= 0xC2 && c <= 0xDF)
            need = 1;
        else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            if (c == 0xE0)
                low = 0xA0;
            else if (c == 0xED)
                high = 0x9F;
        }
        else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            if (c == 0xF0)
                low = 0x90;
            else if (c == 0xF4)
                high = 0x8F;
        }
        else
            return 0;
        if (n - i - 1 < need)
            return 0;
        if (s[i + 1] < low || s[i + 1] > high)
            return 0;
        for (Py_ssize_t k = 2; k <= need; k++)
            if ((s[i + k] & 0xC0) != 0x80)
                return 0;
        i += need + 1;
    }
    return 1;
}

static uint32_t
read_be(const unsigned char *p, int bytes)
{
    uint32_t v = 0;
    for (int k = 0; k < bytes; k++)
        v = (v << 8) | p[k];
    return v;
}

/* A str or nil value at s[at:n]: -1 if none (or malformed), else its length in
 * bytes (header and text), with the text's offset and length; nil gives length 0
 * and *text_at -1. */
static Py_ssize_t
value_at(const unsigned char *s, Py_ssize_t n, Py_ssize_t at, Py_ssize_t *text_at,
         Py_ssize_t *text_len)
{
    if (at >= n)
        return -1;
    unsigned char c = s[at];
    Py_ssize_t header, length;
    if (c == 0xC0) {
        *text_at = -1;
        *text_len = 0;
        return 1;
    }
    if (c >= 0xA0 && c <= 0xBF) {
        header = 1;
        length = c & 0x1F;
    }
    else if (c >= 0xD9 && c <= 0xDB) {
        int bytes = c == 0xD9 ? 1 : c == 0xDA ? 2 : 4;
        if (n - at - 1 < bytes)
            return -1;
        header = 1 + bytes;
        length = (Py_ssize_t)read_be(s + at + 1, bytes);
    }
    else
        return -1;
    if (length > n - at - header)
        return -1;
    *text_at = at + header;
    *text_len = length;
    return header + length;
}

/* An array header at s[at:n] of 1 to MAX_PAIRS elements: its length in bytes and
 * *count, else -1. */
static Py_ssize_t
array_at(const unsigned char *s, Py_ssize_t n, Py_ssize_t at, Py_ssize_t *count)
{
    if (at >= n)
        return -1;
    unsigned char c = s[at];
    Py_ssize_t header;
    if (c >= 0x90 && c <= 0x9F) {
        header = 1;
        *count = c & 0x0F;
    }
    else if (c == 0xDC || c == 0xDD) {
        int bytes = c == 0xDC ? 2 : 4;
        if (n - at - 1 < bytes)
            return -1;
        header = 1 + bytes;
        *count = (Py_ssize_t)read_be(s + at + 1, bytes);
    }
    else
        return -1;
    if (*count < 1 || *count > MAX_PAIRS)
        return -1;
    return header;
}

static const char COLUMNS_HEAD[] = "\x94\x01\xa7" "columns";

static void
Columns_free_starts(Columns *self)
{
    PyMem_Free(self->starts[0]);
    PyMem_Free(self->starts[1]);
    self->starts[0] = self->starts[1] = NULL;
}

static void
Columns_release_body(Columns *self)
{
    if (self->held) {
        if (!self->body.readonly)
            memset(self->body.buf, 0, (size_t)self->body.len);
        PyBuffer_Release(&self->body);
        self->held = 0;
    }
    Columns_free_starts(self);
    self->count = 0;
}

/* Around a call that reads the body and starts: release() waits for its end. */
static void
columns_enter(Columns *self)
{
    self->busy++;
}

static void
columns_leave(Columns *self)
{
    if (--self->busy == 0 && self->release_pending) {
        self->release_pending = 0;
        Columns_release_body(self);
    }
}

static void
Columns_dealloc(Columns *self)
{
    Columns_release_body(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

PyDoc_STRVAR(scan_columns_doc,
"scan_columns(body) -> Columns | None: the body of a plain columns message read in\n"
"place (see _ccolumns.c), or None: let decode_body() decide. body: a bytearray,\n"
"overwritten with zeros by Columns.release().");

static PyObject *
scan_columns(PyObject *Py_UNUSED(module), PyObject *arg)
{
    Py_buffer body;
    if (PyObject_GetBuffer(arg, &body, PyBUF_SIMPLE) < 0)
        return NULL;
    const unsigned char *s = body.buf;
    Py_ssize_t n = body.len, at = (Py_ssize_t)sizeof COLUMNS_HEAD - 1;
    uint32_t *starts[2] = {NULL, NULL};
    Py_ssize_t counts[2] = {0, 0};
    if (n > UINT32_MAX || n < at || memcmp(s, COLUMNS_HEAD, (size_t)at) != 0)
        goto not_plain;
    for (int column = 0; column < 2; column++) {
        Py_ssize_t header = array_at(s, n, at, &counts[column]);
        if (header < 0 || (column == 1 && counts[1] != counts[0]))
            goto not_plain;
        at += header;
        starts[column] = PyMem_Malloc((size_t)counts[column] * sizeof(uint32_t));
        if (starts[column] == NULL) {
            PyErr_NoMemory();
            goto fail;
        }
        for (Py_ssize_t i = 0; i < counts[column]; i++) {
            Py_ssize_t text_at, text_len;
            int ascii;
            Py_ssize_t size = value_at(s, n, at, &text_at, &text_len);
            if (size < 0 || (text_at >= 0 && !valid_utf8(s + text_at, text_len, &ascii)))
                goto not_plain;
            starts[column][i] = (uint32_t)at;
            at += size;
        }
    }
    if (at != n)
        goto not_plain;
    Columns *columns = PyObject_New(Columns, &ColumnsType);
    if (columns == NULL)
        goto fail;
    columns->body = body;
    columns->held = 1;
    columns->count = counts[0];
    columns->starts[0] = starts[0];
    columns->starts[1] = starts[1];
    columns->busy = 0;
    columns->release_pending = 0;
    return (PyObject *)columns;
not_plain:
    PyMem_Free(starts[0]);
    PyMem_Free(starts[1]);
    PyBuffer_Release(&body);
    Py_RETURN_NONE;
fail:
    PyMem_Free(starts[0]);
    PyMem_Free(starts[1]);
    PyBuffer_Release(&body);
    return NULL;
}

/* Checks a (column, start, stop) request against a Columns: 1, or 0 with an error. */
static int
columns_range(Columns *self, int column, Py_ssize_t start, Py_ssize_t stop)
{
    if (!self->held) {
        PyErr_SetString(PyExc_ValueError, "the columns were released");
        return 0;
    }
    if (column < 0 || column > 1 || start < 0 || stop < start || stop > self->count) {
        PyErr_SetString(PyExc_IndexError, "column 0 or 1, and 0 <= start <= stop <= len");
        return 0;
    }
    return 1;
}

/* The value at index i of a column: a new str, or None (a new reference). */
static PyObject *
columns_value(Columns *self, int column, Py_ssize_t i)
{
    const unsigned char *s = self->body.buf;
    Py_ssize_t text_at, text_len;
    value_at(s, self->body.len, self->starts[column][i], &text_at, &text_len);
    if (text_at < 0)
        Py_RETURN_NONE;
    return PyUnicode_DecodeUTF8((const char *)s + text_at, text_len, "strict");
}

static PyObject *
Columns_values(Columns *self, PyObject *args)
{
    int column;
    Py_ssize_t start, stop;
    if (!PyArg_ParseTuple(args, "inn", &column, &start, &stop) ||
        !columns_range(self, column, start, stop))
        return NULL;
    columns_enter(self);
    PyObject *values = PyList_New(stop - start);
    if (values != NULL) {
        for (Py_ssize_t i = start; i < stop; i++) {
            PyObject *value = columns_value(self, column, i);
            if (value == NULL) {
                Py_CLEAR(values);
                break;
            }
            PyList_SET_ITEM(values, i - start, value);
        }
    }
    columns_leave(self);
    return values;
}

static PyObject *
Columns_release(Columns *self, PyObject *Py_UNUSED(ignored))
{
    if (self->busy)
        self->release_pending = 1; /* from a __del__ amid a call: at its end */
    else
        Columns_release_body(self);
    Py_RETURN_NONE;
}

static Py_ssize_t
Columns_len(Columns *self)
{
    return self->count;
}

/* Where a column's values lie in a held Columns' body: [*lo, *hi). */
static void
column_span(const Columns *self, int column, Py_ssize_t *lo, Py_ssize_t *hi)
{
    Py_ssize_t text_at, text_len, last = self->starts[column][self->count - 1];
    *lo = self->starts[column][0];
    /* scan_columns() checked every value: the last one's size is >= 1. */
    *hi = last + value_at(self->body.buf, self->body.len, last, &text_at, &text_len);
}

PyDoc_STRVAR(join_columns_doc,
"join_columns(parts) -> Columns: the pairs of parts (a non-empty list of Columns,\n"
"none released) in order, as one Columns whose values are copied into a body of its\n"
"own, overwritten by its release(). The parts are left as they are: the caller\n"
"releases them.");

static PyObject *
join_columns(PyObject *Py_UNUSED(module), PyObject *arg)
{
    if (!PyList_CheckExact(arg) || PyList_GET_SIZE(arg) < 1) {
        PyErr_SetString(PyExc_TypeError, "join_columns() takes a non-empty list of Columns");
        return NULL;
    }
    /* A reference to the list: nothing below may shrink it under us. */
    PyObject *list = PyList_GetSlice(arg, 0, PyList_GET_SIZE(arg));
    if (list == NULL)
        return NULL;
    Py_ssize_t parts = PyList_GET_SIZE(list);
    for (Py_ssize_t p = 0; p < parts; p++) {
        PyObject *item = PyList_GET_ITEM(list, p);
        if (!Py_IS_TYPE(item, &ColumnsType)) {
            PyErr_SetString(PyExc_TypeError, "join_columns() takes a non-empty list of Columns");
            Py_DECREF(list);
            return NULL;
        }
        if (!((Columns *)item)->held || ((Columns *)item)->count < 1) {
            PyErr_SetString(PyExc_ValueError, "the columns were released");
            Py_DECREF(list);
            return NULL;
        }
    }
    /* From here no part's body goes until columns_leave(), whatever an allocation runs. */
    for (Py_ssize_t p = 0; p < parts; p++)
        columns_enter((Columns *)PyList_GET_ITEM(list, p));
    PyObject *result = NULL, *storage = NULL;
    uint32_t *starts[2] = {NULL, NULL};
    Py_ssize_t count = 0, size = 0;
    for (Py_ssize_t p = 0; p < parts; p++) {
        const Columns *part = (const Columns *)PyList_GET_ITEM(list, p);
        for (int column = 0; column < 2; column++) {
            Py_ssize_t lo, hi;
            column_span(part, column, &lo, &hi);
            size += hi - lo; /* each < UINT32_MAX: no overflow before the check below */
            if (size > UINT32_MAX)
                break;
        }
        count += part->count; /* each <= MAX_PAIRS */
        if (size > UINT32_MAX || count > UINT32_MAX) {
            PyErr_SetString(PyExc_ValueError, "too many values to join");
            goto done;
        }
    }
    for (int column = 0; column < 2; column++) {
        starts[column] = PyMem_Malloc((size_t)count * sizeof(uint32_t));
        if (starts[column] == NULL) {
            PyErr_NoMemory();
            goto done;
        }
    }
    storage = PyByteArray_FromStringAndSize(NULL, size);
    if (storage == NULL)
        goto done;
    unsigned char *out = (unsigned char *)PyByteArray_AS_STRING(storage);
    Py_ssize_t at = 0, k[2] = {0, 0};
    for (int column = 0; column < 2; column++) {
        for (Py_ssize_t p = 0; p < parts; p++) {
            const Columns *part = (const Columns *)PyList_GET_ITEM(list, p);
            Py_ssize_t lo, hi;
            column_span(part, column, &lo, &hi);
            memcpy(out + at, (const unsigned char *)part->body.buf + lo, (size_t)(hi - lo));
            for (Py_ssize_t i = 0; i < part->count; i++)
                starts[column][k[column]++] = (uint32_t)(at + (part->starts[column][i] - lo));
            at += hi - lo;
        }
    }
    Columns *joined = PyObject_New(Columns, &ColumnsType);
    if (joined == NULL)
        goto done;
    if (PyObject_GetBuffer(storage, &joined->body, PyBUF_SIMPLE) < 0) {
        joined->held = 0;
        joined->starts[0] = joined->starts[1] = NULL;
        joined->count = 0;
        joined->busy = joined->release_pending = 0;
        Py_DECREF(joined);
        goto done;
    }
    joined->held = 1;
    joined->count = count;
    joined->starts[0] = starts[0];
    joined->starts[1] = starts[1];
    starts[0] = starts[1] = NULL; /* the joined Columns owns them */
    joined->busy = 0;
    joined->release_pending = 0;
    result = (PyObject *)joined;
done:
    PyMem_Free(starts[0]);
    PyMem_Free(starts[1]);
    if (storage != NULL && result == NULL)
        memset(PyByteArray_AS_STRING(storage), 0, (size_t)size); /* copies of the values */
    Py_XDECREF(storage); /* the joined Columns' body holds it */
    for (Py_ssize_t p = 0; p < parts; p++)
        columns_leave((Columns *)PyList_GET_ITEM(list, p));
    Py_DECREF(list);
    return result;
}

static PyMethodDef Columns_methods[] = {
    {"values", (PyCFunction)Columns_values, METH_VARARGS,
     "values(column, start, stop): the values as decode_body() gives them."},
    {"release", (PyCFunction)Columns_release, METH_NOARGS,
     "Overwrite the body with zeros and let it go (the values are gone)."},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods Columns_as_sequence = {
    .sq_length = (lenfunc)Columns_len,
};

static PyTypeObject ColumnsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "trackerd.core._ccolumns.Columns",
    .tp_doc = PyDoc_STR("A columns message's body, read in place (scan_columns())."),
    .tp_basicsize = sizeof(Columns),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)Columns_dealloc,
    .tp_methods = Columns_methods,
    .tp_as_sequence = &Columns_as_sequence,
};

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

/* The key of a value given as its UTF-8 bytes (a columns message's string). ASCII is
 * keyed as key_of() keys the equal str; other text under its own tweak (8: no str
 * kind), so it may have two keys, one a path: each is a valid entry, and costs one
 * more miss at most. */
static uint64_t
key_of_utf8(const Table *self, const unsigned char *data, Py_ssize_t length, int ascii)
{
    if (ascii) {
        if (self->split) {
            Py_ssize_t part_len = 0;
            const unsigned char *part = usual_part(data, length, &part_len);
            if (part != NULL)
                return siphash13(self->part_key[0], self->part_key[1], part, (size_t)part_len);
        }
        return siphash13(self->key[0], self->key[1], data, (size_t)length);
    }
    return siphash13(self->key[0] ^ 8, self->key[1], data, (size_t)length);
}

static uint64_t
key_of_none(const Table *self)
{
    /* The tweak 5 is no str kind: None never shares a key with a str. */
    return siphash13(self->key[0] ^ 5, self->key[1], NULL, 0);
}

/* The key of one value: 0 and a key, or -1 with TypeError for anything but str and None. */
static int
key_of(const Table *self, PyObject *value, uint64_t *key)
{
    if (value == Py_None) {
        *key = key_of_none(self);
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
        *key = key_of_utf8(self, data, length, 1);
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

PyDoc_STRVAR(Table_look_up_columns_doc,
"look_up_columns(columns, column, start, stop) -> (keys, codes, values): look_up()\n"
"of the values start to stop of one column of a Columns (0: connection IPs, 1:\n"
"senders), with values: a list holding each value whose code is 0 (a miss), as\n"
"decode_body() gives it, and None for the others (no object is made for a hit).");

static PyObject *
Table_look_up_columns(Table *self, PyObject *args)
{
    PyObject *columns_arg;
    int column;
    Py_ssize_t start, stop;
    if (!ready(self) ||
        !PyArg_ParseTuple(args, "O!inn", &ColumnsType, &columns_arg, &column, &start, &stop))
        return NULL;
    Columns *columns = (Columns *)columns_arg;
    if (!columns_range(columns, column, start, stop))
        return NULL;
    Py_ssize_t n = stop - start;
    columns_enter(columns);
    const unsigned char *s = columns->body.buf;
    const uint32_t *starts = columns->starts[column] + start;
    PyObject *keys = PyBytes_FromStringAndSize(NULL, n * 8);
    PyObject *codes = PyByteArray_FromStringAndSize(NULL, n);
    PyObject *values = PyList_New(n);
    if (keys == NULL || codes == NULL || values == NULL)
        goto fail;
    unsigned char *key_bytes = (unsigned char *)PyBytes_AS_STRING(keys);
    char *code_bytes = PyByteArray_AS_STRING(codes);
    /* As look_up(): keys and prefetches first, then the rows. */
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t text_at, text_len;
        int ascii = 1;
        value_at(s, columns->body.len, starts[i], &text_at, &text_len);
        uint64_t key;
        if (text_at < 0)
            key = key_of_none(self);
        else {
            ascii = all_ascii(s + text_at, text_len);
            key = key_of_utf8(self, s + text_at, text_len, ascii);
        }
        memcpy(key_bytes + 8 * i, &key, 8);
        PREFETCH(self->slots + (key & self->mask) * WAYS);
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t key;
        memcpy(&key, key_bytes + 8 * i, 8);
        int code = code_of(self, key);
        code_bytes[i] = (char)code;
        PyObject *value = code == MISS ? columns_value(columns, column, start + i)
                                       : Py_NewRef(Py_None);
        if (value == NULL)
            goto fail;
        PyList_SET_ITEM(values, i, value);
    }
    columns_leave(columns);
    PyObject *result = PyTuple_Pack(3, keys, codes, values);
    Py_DECREF(keys);
    Py_DECREF(codes);
    Py_DECREF(values);
    return result;
fail:
    columns_leave(columns);
    Py_XDECREF(keys);
    Py_XDECREF(codes);
    Py_XDECREF(values);
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
    {"look_up_columns", (PyCFunction)Table_look_up_columns, METH_VARARGS,
     Table_look_up_columns_doc},
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

static PyMethodDef module_methods[] = {
    {"scan_columns", (PyCFunction)scan_columns, METH_O, scan_columns_doc},
    {"join_columns", (PyCFunction)join_columns, METH_O, join_columns_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_methods = module_methods,
    .m_name = "trackerd.core._ccolumns",
    .m_doc = PyDoc_STR("The raw-value cache in C (trackerd/core/raw_cache.py's twin), and "
                       "columns messages read in place."),
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__ccolumns(void)
{
    if (PyType_Ready(&TableType) < 0 || PyType_Ready(&ColumnsType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Table", (PyObject *)&TableType) < 0 ||
        PyModule_AddObjectRef(m, "Columns", (PyObject *)&ColumnsType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
