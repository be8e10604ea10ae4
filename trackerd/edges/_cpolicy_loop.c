/* The policy thread's common case in C (edges/policy_loop.py; its Python code is
 * the fallback, with the same results): a wait, and every ready connection whose
 * read is one whole request, without the interpreter lock.
 *
 * Loop(epfd, names, max_line, max_attributes, buffer, fast):
 *   serve(timeout_ms) -> (requests, others, pending): one epoll_wait on epfd (the
 *   thread's), then for each ready descriptor fd that the thread marked fast[fd]
 *   (its connection idle: nothing held, nothing to send, reading) and that is only
 *   readable: one recv() into buffer, and the decoder's short way on it
 *   (core/_cpolicy_parse.h). Both run with the interpreter lock released: the
 *   event loop's thread counts meanwhile, and the lock changes hands once a wait,
 *   not around each system call. Then, the lock taken again:
 *     requests: [(fd, values)] of the reads that were one whole request (each
 *       read's bytes overwritten with zeros: only the values, as str, are kept);
 *     others: [(fd, events)] for the Python code: every descriptor not fast, or
 *       with other events, and those not reached;
 *     pending: None, or (fd, offset, count): a read that was not one whole request
 *       (several, a piece, the peer's close: count 0), at buffer[offset:offset +
 *       count], for the connection's Python code to take and overwrite; the
 *       descriptors after it are in others.
 *   reply(fds, data) -> [(fd, sent)]: send(data) to each descriptor, the lock
 *   released; the list names those that did not take it whole (sent: the bytes
 *   taken, or -errno).
 * No request is answered here: the thread hands each pair to the event loop before
 * it replies (reply()), so a status reply reflects every request answered before it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <limits.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include "../core/_cpolicy_parse.h"

/* Events taken from one epoll_wait (level-triggered: the rest come next time). */
#define MAX_EVENTS 64

typedef struct {
    PyObject_HEAD
    int epfd;
    policy_names names;
    PyObject *tuple;  /* holds the names' bytes */
    PyObject *buffer; /* the thread's read buffer (bytearray) */
    PyObject *fast;   /* one byte per descriptor: 1 if it may go the fast way */
} Loop;

typedef struct {
    int fd;
    Py_ssize_t offset;
    Py_ssize_t value_at[POLICY_MAX_NAMES];
    Py_ssize_t value_end[POLICY_MAX_NAMES];
} Read;

static int
Loop_init(Loop *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"epfd", "names", "max_line", "max_attributes", "buffer", "fast",
                               NULL};
    int epfd;
    PyObject *tuple, *buffer, *fast;
    Py_ssize_t max_line, max_attributes;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iOnnOO:Loop", keywords, &epfd, &tuple,
                                     &max_line, &max_attributes, &buffer, &fast))
        return -1;
    /* Once only: serve() reads the names, the buffer and fast with the lock released,
     * so another thread's second call would free them under it. */
    if (self->tuple != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Loop initialised twice");
        return -1;
    }
    if (!PyByteArray_Check(buffer) || !PyByteArray_Check(fast)) {
        PyErr_SetString(PyExc_TypeError, "buffer and fast: bytearrays");
        return -1;
    }
    if (PyByteArray_GET_SIZE(buffer) <= max_line) {
        PyErr_SetString(PyExc_ValueError, "buffer: more than max_line bytes");
        return -1;
    }
    if (policy_names_from(&self->names, tuple, max_line, max_attributes) < 0)
        return -1;
    self->epfd = epfd;
    Py_INCREF(tuple);
    Py_XSETREF(self->tuple, tuple);
    Py_INCREF(buffer);
    Py_XSETREF(self->buffer, buffer);
    Py_INCREF(fast);
    Py_XSETREF(self->fast, fast);
    return 0;
}

static void
Loop_dealloc(Loop *self)
{
    Py_XDECREF(self->tuple);
    Py_XDECREF(self->buffer);
    Py_XDECREF(self->fast);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Loop_serve(Loop *self, PyObject *arg)
{
    long wait = PyLong_AsLong(arg);
    if (wait == -1 && PyErr_Occurred())
        return NULL;
    int timeout = wait > INT_MAX ? INT_MAX : wait < 0 ? -1 : (int)wait;
    if (self->tuple == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Loop not initialised");
        return NULL;
    }
    Py_buffer buffer, fast;
    if (PyObject_GetBuffer(self->buffer, &buffer, PyBUF_WRITABLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(self->fast, &fast, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&buffer);
        return NULL;
    }
    unsigned char *b = buffer.buf;
    const unsigned char *is_fast = fast.buf;
    struct epoll_event events[MAX_EVENTS];
    Read reads[MAX_EVENTS];
    int ready, done = 0, taken = 0, wait_errno = 0;
    int pending_fd = -1;
    Py_ssize_t used = 0, pending_count = 0;

    Py_BEGIN_ALLOW_THREADS
    ready = epoll_wait(self->epfd, events, MAX_EVENTS, timeout);
    if (ready < 0) {
        wait_errno = errno;
        ready = 0;
    }
    for (; done < ready; done++) {
        int fd = events[done].data.fd;
        if (events[done].events != EPOLLIN || fd < 0 || fd >= fast.len || !is_fast[fd])
            break; /* this one and the rest: the Python code's */
        if (buffer.len - used <= self->names.max_line)
            break; /* maybe no room for a whole request: next time */
        ssize_t got;
        do {
            got = recv(fd, b + used, (size_t)(buffer.len - used), MSG_DONTWAIT);
        } while (got < 0 && errno == EINTR);
        if (got < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                continue; /* nothing after all */
            break;        /* an error: the Python code reads again and sees it */
        }
        Read *read = &reads[taken];
        if (got > 0 && policy_parse(&self->names, b + used, got, read->value_at, read->value_end)) {
            read->fd = fd;
            read->offset = used;
            taken++;
            used += got;
            continue;
        }
        pending_fd = fd; /* not one whole request: the Python code takes it */
        pending_count = got;
        done++;
        break;
    }
    Py_END_ALLOW_THREADS

    PyObject *requests = NULL, *others = NULL, *pending = NULL, *result = NULL;
    if (wait_errno != 0 && wait_errno != EINTR) {
        errno = wait_errno;
        PyErr_SetFromErrno(PyExc_OSError);
        goto finally;
    }
    requests = PyList_New(taken);
    others = PyList_New(ready - done);
    if (requests == NULL || others == NULL)
        goto finally;
    for (int i = 0; i < taken; i++) {
        Read *read = &reads[i];
        PyObject *values = policy_values(&self->names, b + read->offset, read->value_at,
                                         read->value_end);
        PyObject *item = values == NULL ? NULL : Py_BuildValue("(iN)", read->fd, values);
        if (item == NULL)
            goto finally;
        PyList_SET_ITEM(requests, i, item);
    }
    for (int i = done; i < ready; i++) {
        PyObject *item = Py_BuildValue("(iI)", events[i].data.fd, events[i].events);
        if (item == NULL)
            goto finally;
        PyList_SET_ITEM(others, i - done, item);
    }
    if (pending_fd >= 0)
        pending = Py_BuildValue("(inn)", pending_fd, used, pending_count);
    else {
        Py_INCREF(Py_None);
        pending = Py_None;
    }
    if (pending == NULL)
        goto finally;
    result = PyTuple_Pack(3, requests, others, pending);
finally:
    /* The requests taken: only their values are kept. After an error (no memory),
     * the read handed back too: it is lost, as the requests taken are. */
    memset(b, 0, (size_t)(result == NULL ? used + pending_count : used));
    Py_XDECREF(requests);
    Py_XDECREF(others);
    Py_XDECREF(pending);
    PyBuffer_Release(&fast);
    PyBuffer_Release(&buffer);
    return result;
}

static PyObject *
Loop_reply(Loop *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 2 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "reply(fds: list, data)");
        return NULL;
    }
    PyObject *list = args[0];
    Py_ssize_t count = PyList_GET_SIZE(list);
    int fds[MAX_EVENTS];
    ssize_t sent[MAX_EVENTS];
    if (count > MAX_EVENTS) {
        PyErr_SetString(PyExc_ValueError, "reply: too many descriptors");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        /* Exact ints only: another's __index__ could change the list under this loop. */
        PyObject *item = PyList_GET_ITEM(list, i);
        if (!PyLong_CheckExact(item)) {
            PyErr_SetString(PyExc_TypeError, "reply: the descriptors must be ints");
            return NULL;
        }
        long fd = PyLong_AsLong(item);
        if (fd == -1 && PyErr_Occurred())
            return NULL;
        if (fd < 0 || fd > INT_MAX) {
            PyErr_SetString(PyExc_ValueError, "not a file descriptor");
            return NULL;
        }
        fds[i] = (int)fd;
    }
    Py_buffer data;
    if (PyObject_GetBuffer(args[1], &data, PyBUF_SIMPLE) < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < count; i++) {
        ssize_t n;
        do {
            n = send(fds[i], data.buf, (size_t)data.len, MSG_DONTWAIT | MSG_NOSIGNAL);
        } while (n < 0 && errno == EINTR);
        if (n < 0)
            n = (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -errno;
        sent[i] = n;
    }
    Py_END_ALLOW_THREADS
    Py_ssize_t length = data.len;
    PyBuffer_Release(&data);
    PyObject *troubles = PyList_New(0);
    if (troubles == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (sent[i] == length)
            continue;
        PyObject *item = Py_BuildValue("(in)", fds[i], (Py_ssize_t)sent[i]);
        if (item == NULL || PyList_Append(troubles, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(troubles);
            return NULL;
        }
        Py_DECREF(item);
    }
    return troubles;
}

static PyMethodDef Loop_methods[] = {
    {"serve", (PyCFunction)Loop_serve, METH_O,
     "serve(timeout_ms) -> (requests, others, pending): a wait and the fast reads"},
    {"reply", (PyCFunction)(void (*)(void))Loop_reply, METH_FASTCALL,
     "reply(fds, data) -> [(fd, sent)]: send data to each; those that did not take it whole"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject LoopType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "trackerd.edges._cpolicy_loop.Loop",
    .tp_basicsize = sizeof(Loop),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Loop(epfd, names, max_line, max_attributes, buffer, fast): the policy "
              "thread's common case",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Loop_init,
    .tp_dealloc = (destructor)Loop_dealloc,
    .tp_methods = Loop_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "trackerd.edges._cpolicy_loop",
    .m_doc = "The policy thread's common case in C.",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__cpolicy_loop(void)
{
    if (PyType_Ready(&LoopType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&LoopType);
    if (PyModule_AddObject(m, "Loop", (PyObject *)&LoopType) < 0) {
        Py_DECREF(&LoopType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
