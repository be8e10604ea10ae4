/* The Postfix policy decoder's short way (core/policy_protocol.py's
 * PolicyDecoder._whole) in one pass, shared by trackerd/core/_cpolicy.c (the
 * decoder's) and trackerd/edges/_cpolicy_loop.c (the policy thread's): when a read
 * is one whole request of at most max_line bytes whose every line is name=value,
 * where each of the names' values lies (the last line of a name given twice; -1: the
 * name is absent); else no (the decoder's general way looks, and names the errors).
 * Same results as the Python code, tested against it. No Python object is touched,
 * so it may run with the interpreter lock released.
 */
#ifndef TRACKERD_CPOLICY_PARSE_H
#define TRACKERD_CPOLICY_PARSE_H

#include <Python.h>
#include <string.h>

/* At most this many names kept (trackerd keeps three). */
#define POLICY_MAX_NAMES 8

typedef struct {
    int count;
    const char *name[POLICY_MAX_NAMES];
    Py_ssize_t size[POLICY_MAX_NAMES];
    /* MAX_LINE, and the decoder's _MAX_SHAPE (2 * MAX_ATTRIBUTES + 1). */
    Py_ssize_t max_line;
    Py_ssize_t max_shape;
} policy_names;

/* 1 if b[0:end] is one whole request for the short way (value_at/value_end filled:
 * a value is b[value_at:value_end], its trailing "\r" already taken off), else 0. */
static int
policy_parse(const policy_names *names, const unsigned char *b, Py_ssize_t end,
             Py_ssize_t *value_at, Py_ssize_t *value_end)
{
    for (int k = 0; k < names->count; k++)
        value_at[k] = value_end[k] = -1;
    /* At most MAX_LINE bytes (so neither a line nor the request is too long),
     * ending with "\n\n" or "\n\r\n". */
    if (!(3 < end && end <= names->max_line && b[end - 1] == '\n'
          && (b[end - 2] == '\n' || (b[end - 2] == '\r' && b[end - 3] == '\n'))))
        return 0;
    /* The last line: "" or "\r" (the request's end); the line before it ends with
     * the newline at last - 1. */
    Py_ssize_t last = b[end - 2] == '\n' ? end - 1 : end - 2;
    /* Every line before it: name=value, that is an "=" that is not its first byte.
     * The "=" and newlines are counted as the decoder's shape is, so that the same
     * requests go the short way: a longer shape may have too many lines. */
    Py_ssize_t shape = 1; /* the last line's newline */
    Py_ssize_t at = 0;
    while (at < last) {
        const unsigned char *line = b + at;
        const unsigned char *newline = memchr(line, '\n', (size_t)(last - at));
        Py_ssize_t size = newline - line;
        if (size == 0 || line[0] == '=')
            return 0; /* an empty line before the end (two requests), or no name */
        Py_ssize_t equals = 0;
        for (Py_ssize_t i = 1; i < size; i++)
            equals += line[i] == '=';
        if (equals == 0)
            return 0; /* no "=" */
        shape += equals + 1;
        if (shape > names->max_shape)
            return 0;
        for (int k = 0; k < names->count; k++) {
            Py_ssize_t n = names->size[k];
            if (size > n && line[n] == '=' && memcmp(line, names->name[k], (size_t)n) == 0) {
                value_at[k] = at + n + 1;
                value_end[k] = at + size;
            }
        }
        at += size + 1;
    }
    for (int k = 0; k < names->count; k++)
        if (value_end[k] > value_at[k] && b[value_end[k] - 1] == '\r')
            value_end[k]--;
    return 1;
}

/* The values as a tuple of str or None (the interpreter lock held). SMTPUTF8
 * addresses are UTF-8; undecodable bytes become U+FFFD, which no valid address
 * contains, so such a sender counts as rejected. */
static PyObject *
policy_values(const policy_names *names, const unsigned char *b, const Py_ssize_t *value_at,
              const Py_ssize_t *value_end)
{
    PyObject *result = PyTuple_New(names->count);
    if (result == NULL)
        return NULL;
    for (int k = 0; k < names->count; k++) {
        PyObject *value;
        if (value_at[k] < 0) {
            Py_INCREF(Py_None);
            value = Py_None;
        } else {
            value = PyUnicode_DecodeUTF8((const char *)b + value_at[k],
                                         value_end[k] - value_at[k], "replace");
            if (value == NULL) {
                Py_DECREF(result);
                return NULL;
            }
        }
        PyTuple_SET_ITEM(result, k, value);
    }
    return result;
}

/* names from a tuple of bytes and the limits; -1 with an exception set, and *names
 * untouched (everything is checked before it is written). The bytes must outlive
 * the struct (the caller keeps the tuple). */
static int
policy_names_from(policy_names *names, PyObject *tuple, Py_ssize_t max_line,
                  Py_ssize_t max_attributes)
{
    if (!PyTuple_Check(tuple) || PyTuple_GET_SIZE(tuple) > POLICY_MAX_NAMES) {
        PyErr_SetString(PyExc_TypeError, "names: a tuple of at most 8 bytes");
        return -1;
    }
    /* max_shape is 2 * max_attributes + 1: it must not overflow. */
    if (max_line < 4 || max_attributes < 1 || max_attributes > (PY_SSIZE_T_MAX - 1) / 2) {
        PyErr_SetString(PyExc_ValueError, "limits out of range");
        return -1;
    }
    policy_names made;
    made.count = (int)PyTuple_GET_SIZE(tuple);
    for (int k = 0; k < made.count; k++) {
        PyObject *item = PyTuple_GET_ITEM(tuple, k);
        if (!PyBytes_Check(item)) {
            PyErr_SetString(PyExc_TypeError, "names: a tuple of at most 8 bytes");
            return -1;
        }
        made.name[k] = PyBytes_AS_STRING(item);
        made.size[k] = PyBytes_GET_SIZE(item);
    }
    made.max_line = max_line;
    made.max_shape = 2 * max_attributes + 1;
    *names = made;
    return 0;
}

#endif
