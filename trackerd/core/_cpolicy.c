/* The Postfix policy decoder's short way in C: core/policy_protocol.py's
 * PolicyDecoder._whole, the pure-Python code it speeds up (and the reference: the
 * tests hold both to the same results). Built optional (setup.py); loaded through
 * servertracker/accel.py.
 *
 * Parser(names, max_line, max_attributes).parse(data): when data (any buffer) is one
 * whole request of at most max_line bytes whose every line is name=value, a tuple of
 * the values of the lines that begin with each of names (the last of a name given
 * twice; None for one absent), decoded as UTF-8 with U+FFFD for undecodable bytes;
 * else None, and the decoder's general way looks (and raises the errors). Only the
 * values returned are copied; nothing is kept. Pure, no I/O.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "_cpolicy_parse.h"

typedef struct {
    PyObject_HEAD
    policy_names names;
    PyObject *tuple; /* holds the names' bytes */
} Parser;

static int
Parser_init(Parser *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"names", "max_line", "max_attributes", NULL};
    PyObject *tuple;
    Py_ssize_t max_line, max_attributes;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "Onn:Parser", keywords, &tuple, &max_line,
                                     &max_attributes))
        return -1;
    /* Once only: a second call would swap the names under a caller that holds them. */
    if (self->tuple != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Parser initialised twice");
        return -1;
    }
    if (policy_names_from(&self->names, tuple, max_line, max_attributes) < 0)
        return -1;
    Py_INCREF(tuple);
    Py_XSETREF(self->tuple, tuple);
    return 0;
}

static void
Parser_dealloc(Parser *self)
{
    Py_XDECREF(self->tuple);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Parser_parse(Parser *self, PyObject *data)
{
    if (self->tuple == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Parser not initialised");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    Py_ssize_t value_at[POLICY_MAX_NAMES], value_end[POLICY_MAX_NAMES];
    PyObject *result;
    if (policy_parse(&self->names, view.buf, view.len, value_at, value_end))
        result = policy_values(&self->names, view.buf, value_at, value_end);
    else {
        Py_INCREF(Py_None);
        result = Py_None;
    }
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef Parser_methods[] = {
    {"parse", (PyCFunction)Parser_parse, METH_O,
     "parse(data) -> tuple | None: the values of data if it is one whole request, else None"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ParserType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "trackerd.core._cpolicy.Parser",
    .tp_basicsize = sizeof(Parser),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Parser(names, max_line, max_attributes): the policy decoder's short way",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Parser_init,
    .tp_dealloc = (destructor)Parser_dealloc,
    .tp_methods = Parser_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "trackerd.core._cpolicy",
    .m_doc = "The Postfix policy decoder's short way in C.",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__cpolicy(void)
{
    if (PyType_Ready(&ParserType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&ParserType);
    if (PyModule_AddObject(m, "Parser", (PyObject *)&ParserType) < 0) {
        Py_DECREF(&ParserType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
