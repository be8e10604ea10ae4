/* First sightings in C: a raw value normalised, classified and hashed in one C loop.
 *
 * trackerd/core/normalise.py stays the reference and decides everything this file is
 * not sure of. Here, only ASCII values of the common forms are decided:
 *
 * - connection IPs: space stripped as str.strip() strips it, "[...]" dropped, a
 *   dotted-quad IPv4 address as glibc's inet_pton() takes it (four decimal octets of
 *   at most 255, no leading zeros); anything with ":" (IPv6) is left to Python;
 * - raw senders: split_sender()'s steps (space, "<...>", the last "@"), then the
 *   domain part; a source route ("@relay:...") is left to Python;
 * - domain parts: "[IPv4]", an all-digit-and-dot IPv4 address, or a name of host
 *   labels as canonical_domain() takes it: case-folded, one trailing dot dropped,
 *   labels of 1 to 63 letters, digits, "_" and inner "-", at most 253 octets, a top
 *   label not all digits. Anything with "xn--" (IDNA) or ":" is left to Python.
 *
 * What such a value comes to (counted in a category, rejected or ignored) is what
 * normalise.py gives it (tests/test_cfirst.py holds the two to it with hypothesis),
 * and a counted value's digest is keyed BLAKE2b of its canonical key, as tracker.py
 * computes it with hashlib (_blake2b.h). Any other value (non-ASCII text, IPv6, IDNA,
 * a source route) comes back UNSURE, and Python decides it as before.
 *
 * Secrets: a FirstSightings holds the salt's key block and the states derived from
 * it (no method returns them), wiped on dealloc. The canonical keys are built in a
 * stack buffer wiped before each call returns; no cleartext outlives the call.
 * Reads are bounded by each str's length; no Python code runs while values are read
 * (the outputs are allocated first), so the list cannot change under the loop.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "_blake2b.h"

/* What a value came to. */
enum {
    UNSURE = 0,     /* Python decides it */
    CONN_IP = 1,    /* counted: 1 + its Category (normalise.py) */
    DOMAIN = 2,
    IP_SERVER = 3,
    REJECTED = 4,
    IGNORED = 5,
};
/* The columns classify() takes. */
enum { CONN_IPS = 0, SENDERS = 1, DOMAIN_PARTS = 2 };
#define CATEGORIES 3

/* servertracker.protocol.MAX_VALUE_LENGTH (split_sender's and classify_conn_ip's bound). */
#define MAX_VALUE_LENGTH 512
/* normalise.py: _MAX_DOMAIN_LENGTH, MAX_DOMAIN_TEXT, a label's length. */
#define MAX_DOMAIN_LENGTH 253
#define MAX_DOMAIN_TEXT 254
#define MAX_LABEL 63
/* The longest canonical key: a domain name. */
#define KEY_BUFFER 256

/* --- the rules ------------------------------------------------------------------ */

/* What str.strip() strips in ASCII text. */
static int
is_space(unsigned char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f);
}

static void
strip(const unsigned char **s, Py_ssize_t *n)
{
    while (*n > 0 && is_space((*s)[0])) {
        (*s)++;
        (*n)--;
    }
    while (*n > 0 && is_space((*s)[*n - 1]))
        (*n)--;
}

static int
has(const unsigned char *s, Py_ssize_t n, unsigned char c)
{
    return n > 0 && memchr(s, c, (size_t)n) != NULL;
}

/* glibc's inet_pton(AF_INET): exactly four decimal octets, each at most 255, no
 * leading zero, nothing else. 1 and the packed address, or 0. */
static int
parse_ipv4(const unsigned char *s, Py_ssize_t n, unsigned char out[4])
{
    int octets = 0, saw_digit = 0;
    unsigned value = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (c >= '0' && c <= '9') {
            if (saw_digit && value == 0)
                return 0; /* a leading zero */
            value = value * 10 + (unsigned)(c - '0');
            if (value > 255)
                return 0;
            if (!saw_digit) {
                if (++octets > 4)
                    return 0;
                saw_digit = 1;
            }
        }
        else if (c == '.' && saw_digit) {
            if (octets == 4)
                return 0;
            out[octets - 1] = (unsigned char)value;
            value = 0;
            saw_digit = 0;
        }
        else
            return 0;
    }
    if (octets < 4)
        return 0;
    out[3] = (unsigned char)value;
    return 1;
}

/* classify_conn_ip() of ASCII text. */
static int
conn_ip(const unsigned char *s, Py_ssize_t n, unsigned char *key, Py_ssize_t *key_len)
{
    strip(&s, &n);
    if (n == 0)
        return IGNORED;
    if (n > MAX_VALUE_LENGTH)
        return REJECTED;
    if (s[0] == '[' && s[n - 1] == ']') { /* n >= 2: "[" is no "]" */
        s++;
        n -= 2;
    }
    if (has(s, n, ':'))
        return UNSURE; /* IPv6 */
    if (!parse_ipv4(s, n, key))
        return REJECTED;
    *key_len = 4;
    return CONN_IP;
}

static int
is_label_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
}

/* classify_domain_part() of ASCII text. */
static int
domain_part(const unsigned char *s, Py_ssize_t n, unsigned char *key, Py_ssize_t *key_len)
{
    if (n == 0)
        return UNSURE; /* split_sender() never gives it */
    if (s[0] == '[') {
        if (n < 2 || s[n - 1] != ']')
            return REJECTED;
        if (has(s + 1, n - 2, ':'))
            return UNSURE; /* [IPv6:...] */
        if (!parse_ipv4(s + 1, n - 2, key))
            return REJECTED;
        *key_len = 4;
        return IP_SERVER;
    }
    if (has(s, n, ':'))
        return UNSURE; /* an IPv6 address, or a name that is none */
    /* _looks_like_ip(): digits once the dots are gone */
    int digits = 0, others = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (s[i] >= '0' && s[i] <= '9')
            digits = 1;
        else if (s[i] != '.') {
            others = 1;
            break;
        }
    }
    if (digits && !others && parse_ipv4(s, n, key)) {
        *key_len = 4;
        return IP_SERVER;
    }
    /* canonical_domain() */
    if (n > MAX_DOMAIN_TEXT)
        return REJECTED;
    Py_ssize_t m = s[n - 1] == '.' ? n - 1 : n;
    if (m > MAX_DOMAIN_LENGTH || m == 0)
        return REJECTED;
    int valid = 1;
    for (Py_ssize_t i = 0; i < m; i++) {
        unsigned char c = s[i];
        if (c >= 'A' && c <= 'Z')
            c = (unsigned char)(c + ('a' - 'A'));
        key[i] = c;
    }
    /* "xn--" anywhere (one trailing dot or not): an IDNA label, idna_linear decides */
    for (Py_ssize_t i = 0; i + 4 <= m; i++)
        if (key[i] == 'x' && key[i + 1] == 'n' && key[i + 2] == '-' && key[i + 3] == '-')
            return UNSURE;
    /* Host labels: [a-z0-9_] or [a-z0-9_][a-z0-9_-]{0,61}[a-z0-9_], joined by dots. */
    Py_ssize_t start = 0;
    int all_digits = 1; /* the current label's */
    for (Py_ssize_t i = 0; i <= m && valid; i++) {
        if (i == m || key[i] == '.') {
            Py_ssize_t length = i - start;
            if (length < 1 || length > MAX_LABEL || key[start] == '-' || key[i - 1] == '-')
                valid = 0;
            else if (i < m) {
                start = i + 1;
                all_digits = 1;
            }
        }
        else if (!is_label_char(key[i]))
            valid = 0;
        else if (key[i] < '0' || key[i] > '9')
            all_digits = 0;
    }
    if (!valid || all_digits)
        return REJECTED; /* all_digits: the top label's, a mangled IP address */
    *key_len = m;
    return DOMAIN;
}

/* split_sender() of ASCII text, then classify_domain_part() of the part. */
static int
sender(const unsigned char *s, Py_ssize_t n, unsigned char *key, Py_ssize_t *key_len)
{
    strip(&s, &n);
    if (n > MAX_VALUE_LENGTH)
        return REJECTED;
    if (n > 0 && s[n - 1] == '>') {
        if (s[0] != '<')
            return REJECTED;
        s++;
        n -= 2;
        strip(&s, &n);
    }
    else if (n > 0 && s[0] == '<')
        return REJECTED;
    if (n == 0)
        return IGNORED;
    if (s[0] == '@')
        return UNSURE; /* a source route */
    Py_ssize_t at = n - 1;
    while (at >= 0 && s[at] != '@')
        at--;
    if (at == n - 1)
        return REJECTED; /* no domain */
    return domain_part(s + at + 1, n - at - 1, key, key_len);
}

/* What one value of a column came to, and its canonical key; -1 with TypeError for
 * anything but str and None. Reads the str where it lies; runs no Python code. */
static int
classify_value(int column, PyObject *value, unsigned char *key, Py_ssize_t *key_len)
{
    if (value == Py_None)
        return column == DOMAIN_PARTS ? UNSURE : IGNORED;
    if (!PyUnicode_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "values must be str or None");
        return -1;
    }
    if (PyUnicode_READY(value) < 0)
        return -1;
    if (!PyUnicode_IS_ASCII(value))
        return UNSURE; /* Unicode space, IDNA, ...: the reference decides */
    const unsigned char *s = PyUnicode_DATA(value);
    Py_ssize_t n = PyUnicode_GET_LENGTH(value);
    switch (column) {
    case CONN_IPS:
        return n == 0 ? IGNORED : conn_ip(s, n, key, key_len);
    case SENDERS:
        return n == 0 ? IGNORED : sender(s, n, key, key_len);
    default:
        return domain_part(s, n, key, key_len);
    }
}

static int
column_arg(int column)
{
    if (column < CONN_IPS || column > DOMAIN_PARTS) {
        PyErr_SetString(PyExc_ValueError, "column: 0 (connection IPs), 1 (senders) or 2 "
                                          "(domain parts)");
        return 0;
    }
    return 1;
}

/* --- FirstSightings: the keyed hashes and the loop -------------------------------- */

typedef struct {
    PyObject_HEAD
    b2_keyed hashers[CATEGORIES];
    int ready;
} FirstSightings;

static int
FirstSightings_init(FirstSightings *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"key", "persons", "digest_size", NULL};
    Py_buffer key;
    PyObject *persons;
    Py_ssize_t digest_size;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*On", kwlist, &key, &persons, &digest_size))
        return -1;
    int result = -1;
    PyObject *seq = PySequence_Fast(persons, "persons must be a list or a tuple");
    if (seq == NULL)
        goto done;
    if (PySequence_Fast_GET_SIZE(seq) != CATEGORIES) {
        PyErr_SetString(PyExc_ValueError, "one person for each of the three categories");
        goto done;
    }
    b2_keyed made[CATEGORIES];
    for (int c = 0; c < CATEGORIES; c++) {
        PyObject *person = PySequence_Fast_GET_ITEM(seq, c);
        if (!PyBytes_Check(person)) {
            PyErr_SetString(PyExc_TypeError, "a person must be bytes");
            b2_wipe(made, sizeof made);
            goto done;
        }
        if (b2_init(&made[c], key.buf, (size_t)key.len, (const uint8_t *)PyBytes_AS_STRING(person),
                    (size_t)PyBytes_GET_SIZE(person), (size_t)digest_size) < 0) {
            PyErr_SetString(PyExc_ValueError,
                            "key <= 64 bytes, person <= 16 bytes, 1 <= digest_size <= 64");
            b2_wipe(made, sizeof made);
            goto done;
        }
    }
    memcpy(self->hashers, made, sizeof made);
    b2_wipe(made, sizeof made);
    self->ready = 1;
    result = 0;
done:
    Py_XDECREF(seq);
    PyBuffer_Release(&key); /* the caller's bytes: it drops them (tracker.py) */
    return result;
}

static void
FirstSightings_dealloc(FirstSightings *self)
{
    b2_wipe(self->hashers, sizeof self->hashers);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
ready(FirstSightings *self)
{
    if (!self->ready) {
        PyErr_SetString(PyExc_RuntimeError, "FirstSightings.__init__ was not called");
        return 0;
    }
    return 1;
}

PyDoc_STRVAR(digest_doc,
"digest(category, key) -> bytes: the keyed digest of a canonical key of a category\n"
"(0, 1 or 2), as hashlib.blake2b(key, key=salt, person=persons[category]) gives it.");

static PyObject *
FirstSightings_digest(FirstSightings *self, PyObject *args)
{
    int category;
    Py_buffer data;
    if (!ready(self) || !PyArg_ParseTuple(args, "iy*", &category, &data))
        return NULL;
    if (category < 0 || category >= CATEGORIES) {
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_ValueError, "category: 0, 1 or 2");
        return NULL;
    }
    uint8_t out[B2_MAX_OUT];
    b2_digest(&self->hashers[category], data.buf, (size_t)data.len, out);
    PyBuffer_Release(&data);
    return PyBytes_FromStringAndSize((const char *)out,
                                     (Py_ssize_t)self->hashers[category].out_length);
}

PyDoc_STRVAR(classify_doc,
"classify(column, values) -> (codes, digests, queued): each value's code (1 byte: 0\n"
"unsure, 1 + Category when counted, 4 rejected, 5 ignored) and digest (digest_size\n"
"bytes, zeros unless counted), and per category the digests of the counted values\n"
"joined, in order. column: 0 connection IPs, 1 raw senders, 2 domain parts; values:\n"
"a list or tuple of str or None.");

static PyObject *
FirstSightings_classify(FirstSightings *self, PyObject *args)
{
    int column;
    PyObject *values;
    if (!ready(self) || !PyArg_ParseTuple(args, "iO", &column, &values) || !column_arg(column))
        return NULL;
    PyObject *seq = PySequence_Fast(values, "values must be a list or a tuple");
    if (seq == NULL)
        return NULL;
    Py_ssize_t size = (Py_ssize_t)self->hashers[0].out_length;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject *result = NULL, *queued[CATEGORIES] = {NULL, NULL, NULL};
    /* Allocated before the values are read: no Python code runs while they are. */
    PyObject *codes = PyBytes_FromStringAndSize(NULL, n);
    PyObject *digests = n > PY_SSIZE_T_MAX / size ? PyErr_NoMemory()
                                                   : PyBytes_FromStringAndSize(NULL, n * size);
    if (codes == NULL || digests == NULL)
        goto done;
    n = PySequence_Fast_GET_SIZE(seq); /* again: allocating may have run a finaliser */
    if (PyBytes_GET_SIZE(codes) < n) {
        PyErr_SetString(PyExc_RuntimeError, "the values changed while being read");
        goto done;
    }
    PyObject **items = PySequence_Fast_ITEMS(seq);
    unsigned char *code_bytes = (unsigned char *)PyBytes_AS_STRING(codes);
    uint8_t *digest_bytes = (uint8_t *)PyBytes_AS_STRING(digests);
    Py_ssize_t counted[CATEGORIES] = {0, 0, 0};
    unsigned char key[KEY_BUFFER];
    int failed = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t key_len = 0;
        int code = classify_value(column, items[i], key, &key_len);
        if (code < 0) {
            failed = 1;
            break;
        }
        code_bytes[i] = (unsigned char)code;
        if (code >= CONN_IP && code <= IP_SERVER) {
            b2_digest(&self->hashers[code - 1], key, (size_t)key_len, digest_bytes + i * size);
            counted[code - 1]++;
        }
        else
            memset(digest_bytes + i * size, 0, (size_t)size);
    }
    b2_wipe(key, sizeof key);
    if (failed)
        goto done;
    for (int c = 0; c < CATEGORIES; c++) {
        queued[c] = PyBytes_FromStringAndSize(NULL, counted[c] * size);
        if (queued[c] == NULL)
            goto done;
    }
    /* From our own buffers only: the values are not read again. */
    Py_ssize_t filled[CATEGORIES] = {0, 0, 0};
    for (Py_ssize_t i = 0; i < n; i++) {
        int code = code_bytes[i];
        if (code >= CONN_IP && code <= IP_SERVER) {
            int c = code - 1;
            memcpy(PyBytes_AS_STRING(queued[c]) + filled[c] * size, digest_bytes + i * size,
                   (size_t)size);
            filled[c]++;
        }
    }
    if (n < PyBytes_GET_SIZE(codes)) { /* shrunk meanwhile: only what was read counts */
        if (_PyBytes_Resize(&codes, n) < 0 || _PyBytes_Resize(&digests, n * size) < 0)
            goto done;
    }
    result = Py_BuildValue("(OO(OOO))", codes, digests, queued[0], queued[1], queued[2]);
done:
    Py_DECREF(seq);
    Py_XDECREF(codes);
    Py_XDECREF(digests);
    for (int c = 0; c < CATEGORIES; c++)
        Py_XDECREF(queued[c]);
    return result;
}

static PyMethodDef FirstSightings_methods[] = {
    {"digest", (PyCFunction)FirstSightings_digest, METH_VARARGS, digest_doc},
    {"classify", (PyCFunction)FirstSightings_classify, METH_VARARGS, classify_doc},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject FirstSightingsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "trackerd.core._cfirst.FirstSightings",
    .tp_doc = PyDoc_STR("FirstSightings(key, persons, digest_size): keyed BLAKE2b per category\n"
                       "(persons: three bytes), and first sightings classified and hashed."),
    .tp_basicsize = sizeof(FirstSightings),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)FirstSightings_init,
    .tp_dealloc = (destructor)FirstSightings_dealloc,
    .tp_methods = FirstSightings_methods,
};

/* --- for tests: the rules and the hash alone ----------------------------------------- */

PyDoc_STRVAR(canonical_doc,
"canonical(column, value) -> (code, key | None): what classify() decides for one value,\n"
"with the canonical key (bytes) of a counted one. For tests: the daemon never asks.");

static PyObject *
canonical(PyObject *Py_UNUSED(module), PyObject *args)
{
    int column;
    PyObject *value;
    if (!PyArg_ParseTuple(args, "iO", &column, &value) || !column_arg(column))
        return NULL;
    unsigned char key[KEY_BUFFER];
    Py_ssize_t key_len = 0;
    int code = classify_value(column, value, key, &key_len);
    PyObject *result = NULL;
    if (code >= 0) {
        if (code >= CONN_IP && code <= IP_SERVER)
            result = Py_BuildValue("(iy#)", code, (const char *)key, key_len);
        else
            result = Py_BuildValue("(iO)", code, Py_None);
    }
    b2_wipe(key, sizeof key);
    return result;
}

PyDoc_STRVAR(blake2b_doc,
"blake2b(data, key, person, digest_size) -> bytes: as hashlib.blake2b(data, key=key,\n"
"person=person, digest_size=digest_size).digest(). For tests.");

static PyObject *
blake2b(PyObject *Py_UNUSED(module), PyObject *args)
{
    Py_buffer data, key, person;
    Py_ssize_t digest_size;
    if (!PyArg_ParseTuple(args, "y*y*y*n", &data, &key, &person, &digest_size))
        return NULL;
    PyObject *result = NULL;
    b2_keyed hasher;
    if (b2_init(&hasher, key.buf, (size_t)key.len, person.buf, (size_t)person.len,
                (size_t)digest_size) < 0)
        PyErr_SetString(PyExc_ValueError,
                        "key <= 64 bytes, person <= 16 bytes, 1 <= digest_size <= 64");
    else {
        uint8_t out[B2_MAX_OUT];
        b2_digest(&hasher, data.buf, (size_t)data.len, out);
        result = PyBytes_FromStringAndSize((const char *)out, digest_size);
    }
    b2_clear(&hasher);
    PyBuffer_Release(&data);
    PyBuffer_Release(&key);
    PyBuffer_Release(&person);
    return result;
}

static PyMethodDef module_methods[] = {
    {"canonical", (PyCFunction)canonical, METH_VARARGS, canonical_doc},
    {"blake2b", (PyCFunction)blake2b, METH_VARARGS, blake2b_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_methods = module_methods,
    .m_name = "trackerd.core._cfirst",
    .m_doc = PyDoc_STR("First sightings in C: the common forms normalised, classified and "
                       "hashed (keyed BLAKE2b); normalise.py decides the rest."),
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__cfirst(void)
{
    if (PyType_Ready(&FirstSightingsType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "FirstSightings", (PyObject *)&FirstSightingsType) < 0 ||
        PyModule_AddIntConstant(m, "UNSURE", UNSURE) < 0 ||
        PyModule_AddIntConstant(m, "REJECTED", REJECTED) < 0 ||
        PyModule_AddIntConstant(m, "IGNORED", IGNORED) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
