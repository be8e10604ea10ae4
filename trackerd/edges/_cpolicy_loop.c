/* The policy thread's common case in C (edges/policy_loop.py; its Python code is
 * the fallback, with the same results): the waits, and every whole request read on
 * an idle connection, parsed, recorded (queued for the event loop) and answered,
 * all without the interpreter lock and without Python code per request.
 *
 * Loop(epfd, names, max_line, max_attributes, buffer, fast, reply, delay):
 *   names: (client_address, sender, instance) as bytes, the decoder's USED_ATTRIBUTES;
 *   buffer: the thread's read buffer (bytearray); fast: one byte per descriptor, 1
 *   while the thread lets this loop serve it (its connection idle: nothing held,
 *   nothing to send, reading); reply: the answer to each request (DUNNO); delay: the
 *   seconds a queued pair may wait before the thread hands the queue over.
 *
 * serve(timeout_ms, limit) -> (served, others, pending, troubles, pairs): waits
 *   (epoll_wait on epfd) and serves, again and again, until something needs the
 *   Python code, limit pairs are queued, the oldest pair has waited delay seconds,
 *   or timeout_ms is over (0: one look). For each ready descriptor fd marked
 *   fast[fd], opened (open()) and only readable: one recv() into buffer; a read that
 *   is one whole request (core/_cpolicy_parse.h) whose instance is plain ASCII is
 *   served here: unless its instance is one of the last RECENT of that connection
 *   (another recipient of a message recorded already), its client address and
 *   sender are queued; then the reply is sent, and the read overwritten. Then,
 *   with the lock taken again:
 *     served: [(fd, requests, last_read)]: the connections served here and when
 *       (time.monotonic()'s clock) their last request was read;
 *     others: [(fd, events)] for the Python code: every descriptor not fast, or with
 *       other events, and those not reached;
 *     pending: None, or (fd, offset, count): a read that was not served here (several
 *       requests, a piece, the peer's close: count 0; a non-ASCII instance), at
 *       buffer[offset:offset + count], for the connection's Python code to take and
 *       overwrite;
 *     troubles: [(fd, sent)]: a reply not taken whole (sent: the bytes taken, or
 *       -errno); fast[fd] is cleared;
 *     pairs: None, or (conn_ips, senders, since): the pairs queued (str, or None for
 *       an absent attribute; decoded as the Python decoder does) and when the oldest
 *       was; the copies held here are overwritten.
 * open(fd) / close(fd): a connection's memory of instances begins / is freed.
 * first(fd, instance) -> bool: the Python way's check of an instance (str) against
 *   the same memory: True (and remembered) unless it is one of the last RECENT.
 * Every call but the pure bookkeeping runs in the policy thread only.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>

#include "../core/_cpolicy_parse.h"

/* Events taken from one epoll_wait (level-triggered: the rest come next time). */
#define MAX_EVENTS 64
/* The instances a connection remembers (policy_server.py's RECENT_INSTANCES). */
#define RECENT 16
/* The positions of the values in names. */
#define ADDRESS 0
#define SENDER 1
#define INSTANCE 2

typedef struct {
    char *data[RECENT];
    Py_ssize_t size[RECENT];
    int next; /* where the next one goes (the oldest once full) */
    long served;
    double last_read;
} Conn;

typedef struct {
    PyObject_HEAD
    int epfd;
    policy_names names;
    PyObject *tuple; /* holds the names' bytes */
    PyObject *buffer; /* the thread's read buffer (bytearray) */
    PyObject *fast;   /* one byte per descriptor: 1 if it may go the fast way */
    PyObject *reply;  /* bytes */
    double delay;
    Py_ssize_t conn_count; /* the length of conns: fast's */
    Conn **conns;          /* by descriptor; NULL: not opened */
    /* The pairs queued: [int32 size or -1][bytes] twice each, raw (decoded when taken). */
    char *pairs;
    size_t pairs_used, pairs_capacity;
    Py_ssize_t pair_count;
    double since;
    int busy; /* serve() runs, the lock released: no other call may touch conns */
} Loop;

static double
now_monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* An instance's copy overwritten and freed (no bytes a peer sent left in free memory). */
static void
forget(Conn *conn, int i)
{
    if (conn->data[i] != NULL) {
        memset(conn->data[i], 0, (size_t)conn->size[i]);
        PyMem_RawFree(conn->data[i]);
        conn->data[i] = NULL;
    }
}

static void
conn_free(Conn *conn)
{
    if (conn == NULL)
        return;
    for (int i = 0; i < RECENT; i++)
        forget(conn, i);
    PyMem_RawFree(conn);
}

/* 1 if data is one of conn's recent instances; else remembers it (0), or -1 without
 * memory. Runs with or without the interpreter lock. */
static int
conn_seen(Conn *conn, const char *data, Py_ssize_t size)
{
    for (int i = 0; i < RECENT; i++)
        if (conn->data[i] != NULL && conn->size[i] == size && memcmp(conn->data[i], data, (size_t)size) == 0)
            return 1;
    char *copy = PyMem_RawMalloc(size > 0 ? (size_t)size : 1);
    if (copy == NULL)
        return -1;
    memcpy(copy, data, (size_t)size);
    forget(conn, conn->next);
    conn->data[conn->next] = copy;
    conn->size[conn->next] = size;
    conn->next = (conn->next + 1) % RECENT;
    return 0;
}

static int
Loop_init(Loop *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"epfd", "names", "max_line", "max_attributes", "buffer",
                               "fast", "reply", "delay", NULL};
    int epfd;
    PyObject *tuple, *buffer, *fast, *reply;
    Py_ssize_t max_line, max_attributes;
    double delay;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iOnnOOSd:Loop", keywords, &epfd, &tuple,
                                     &max_line, &max_attributes, &buffer, &fast, &reply,
                                     &delay))
        return -1;
    /* Once only: serve() reads the names, the buffer, fast and conns with the lock
     * released, so another thread's second call would free them under it. */
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
    if (!(delay >= 0)) {
        PyErr_SetString(PyExc_ValueError, "delay: 0 seconds or more");
        return -1;
    }
    if (!PyTuple_Check(tuple) || PyTuple_GET_SIZE(tuple) != 3) {
        PyErr_SetString(PyExc_TypeError, "names: (client_address, sender, instance)");
        return -1;
    }
    if (policy_names_from(&self->names, tuple, max_line, max_attributes) < 0)
        return -1;
    /* fast's size is fixed from here on: conns follows it. */
    Py_ssize_t count = PyByteArray_GET_SIZE(fast);
    self->conns = PyMem_RawCalloc(count > 0 ? (size_t)count : 1, sizeof(Conn *));
    if (self->conns == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->conn_count = count;
    self->epfd = epfd;
    self->delay = delay;
    Py_INCREF(tuple);
    Py_XSETREF(self->tuple, tuple);
    Py_INCREF(buffer);
    Py_XSETREF(self->buffer, buffer);
    Py_INCREF(fast);
    Py_XSETREF(self->fast, fast);
    Py_INCREF(reply);
    Py_XSETREF(self->reply, reply);
    return 0;
}

static void
Loop_dealloc(Loop *self)
{
    if (self->conns != NULL) {
        for (Py_ssize_t i = 0; i < self->conn_count; i++)
            conn_free(self->conns[i]);
        PyMem_RawFree(self->conns);
    }
    if (self->pairs != NULL) {
        memset(self->pairs, 0, self->pairs_capacity);
        PyMem_RawFree(self->pairs);
    }
    Py_XDECREF(self->tuple);
    Py_XDECREF(self->buffer);
    Py_XDECREF(self->fast);
    Py_XDECREF(self->reply);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
ready(Loop *self)
{
    if (self->tuple == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Loop not initialised");
        return 0;
    }
    /* Another thread's call while serve() runs without the lock would free or move
     * what it reads. */
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Loop busy: serve() runs in another thread");
        return 0;
    }
    return 1;
}

/* The descriptor argument, checked against conns. */
static int
fd_of(Loop *self, PyObject *arg, int *fd)
{
    long value = PyLong_AsLong(arg);
    if (value == -1 && PyErr_Occurred())
        return 0;
    if (value < 0 || value >= self->conn_count) {
        PyErr_SetString(PyExc_ValueError, "descriptor out of range");
        return 0;
    }
    *fd = (int)value;
    return 1;
}

static PyObject *
Loop_open(Loop *self, PyObject *arg)
{
    int fd;
    if (!ready(self) || !fd_of(self, arg, &fd))
        return NULL;
    Conn *conn = PyMem_RawCalloc(1, sizeof(Conn));
    if (conn == NULL)
        return PyErr_NoMemory();
    conn_free(self->conns[fd]);
    self->conns[fd] = conn;
    Py_RETURN_NONE;
}

static PyObject *
Loop_close(Loop *self, PyObject *arg)
{
    int fd;
    if (!ready(self) || !fd_of(self, arg, &fd))
        return NULL;
    conn_free(self->conns[fd]);
    self->conns[fd] = NULL;
    Py_RETURN_NONE;
}

static PyObject *
Loop_first(Loop *self, PyObject *const *args, Py_ssize_t nargs)
{
    int fd;
    if (nargs != 2 || !PyUnicode_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "first(fd, instance: str)");
        return NULL;
    }
    if (!ready(self) || !fd_of(self, args[0], &fd))
        return NULL;
    if (self->conns[fd] == NULL) {
        PyErr_SetString(PyExc_ValueError, "first: descriptor not opened");
        return NULL;
    }
    /* As UTF-8: the fast way's instances are ASCII, their own UTF-8, so equal bytes
     * are equal strings either way. */
    PyObject *bytes = PyUnicode_AsEncodedString(args[1], "utf-8", "surrogatepass");
    if (bytes == NULL)
        return NULL;
    int seen = conn_seen(self->conns[fd], PyBytes_AS_STRING(bytes), PyBytes_GET_SIZE(bytes));
    Py_DECREF(bytes);
    if (seen < 0)
        return PyErr_NoMemory();
    return PyBool_FromLong(!seen);
}

/* Room for one more pair of values of at most max_line bytes each; 0 without memory. */
static int
reserve_pair(Loop *self)
{
    size_t need = self->pairs_used + 2 * ((size_t)self->names.max_line + sizeof(int32_t));
    if (need <= self->pairs_capacity)
        return 1;
    size_t capacity = self->pairs_capacity ? self->pairs_capacity : 65536;
    while (capacity < need)
        capacity *= 2;
    /* Not realloc: the old block is overwritten before it is freed. */
    char *grown = PyMem_RawMalloc(capacity);
    if (grown == NULL)
        return 0;
    if (self->pairs != NULL) {
        memcpy(grown, self->pairs, self->pairs_used);
        memset(self->pairs, 0, self->pairs_capacity);
        PyMem_RawFree(self->pairs);
    }
    self->pairs = grown;
    self->pairs_capacity = capacity;
    return 1;
}

static void
put_value(Loop *self, const unsigned char *b, Py_ssize_t at, Py_ssize_t end)
{
    int32_t size = at < 0 ? -1 : (int32_t)(end - at);
    memcpy(self->pairs + self->pairs_used, &size, sizeof size);
    self->pairs_used += sizeof size;
    if (size > 0) {
        memcpy(self->pairs + self->pairs_used, b + at, (size_t)size);
        self->pairs_used += (size_t)size;
    }
}

/* The queued pairs as (conn_ips, senders, since), or NULL with an exception. The
 * queue is left as it is: forget_pairs() once what carries them is built, so that a
 * failure (no memory) on the way keeps them for the next call. */
static PyObject *
take_pairs(Loop *self)
{
    PyObject *lists[2] = {PyList_New(self->pair_count), PyList_New(self->pair_count)};
    PyObject *result = NULL;
    if (lists[0] == NULL || lists[1] == NULL)
        goto finally;
    size_t at = 0;
    for (Py_ssize_t i = 0; i < self->pair_count; i++) {
        for (int k = 0; k < 2; k++) {
            int32_t size;
            memcpy(&size, self->pairs + at, sizeof size);
            at += sizeof size;
            PyObject *value;
            if (size < 0) {
                Py_INCREF(Py_None);
                value = Py_None;
            } else {
                value = PyUnicode_DecodeUTF8(self->pairs + at, size, "replace");
                if (value == NULL)
                    goto finally;
                at += (size_t)size;
            }
            PyList_SET_ITEM(lists[k], i, value);
        }
    }
    result = Py_BuildValue("(OOd)", lists[0], lists[1], self->since);
finally:
    Py_XDECREF(lists[0]);
    Py_XDECREF(lists[1]);
    return result;
}

/* The queued pairs are in Python's hands now: their copies here overwritten. */
static void
forget_pairs(Loop *self)
{
    if (self->pairs != NULL)
        memset(self->pairs, 0, self->pairs_used);
    self->pairs_used = 0;
    self->pair_count = 0;
}

/* Whether b[at:end] is all ASCII (so its UTF-8 is itself). */
static int
ascii(const unsigned char *b, Py_ssize_t at, Py_ssize_t end)
{
    for (Py_ssize_t i = at; i < end; i++)
        if (b[i] & 0x80)
            return 0;
    return 1;
}

typedef struct {
    int fd;
    long served;
    double last_read;
} Served;

static PyObject *
Loop_serve(Loop *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "serve(timeout_ms, limit)");
        return NULL;
    }
    long wait = PyLong_AsLong(args[0]);
    if (wait == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t limit = PyLong_AsSsize_t(args[1]);
    if (limit == -1 && PyErr_Occurred())
        return NULL;
    if (!ready(self))
        return NULL;
    if (limit < 1)
        limit = 1;
    Py_buffer buffer, fast, reply;
    if (PyObject_GetBuffer(self->buffer, &buffer, PyBUF_WRITABLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(self->fast, &fast, PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&buffer);
        return NULL;
    }
    if (PyObject_GetBuffer(self->reply, &reply, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&fast);
        PyBuffer_Release(&buffer);
        return NULL;
    }
    unsigned char *b = buffer.buf;
    unsigned char *is_fast = fast.buf;
    /* fast may not have been resized (a bytearray with a buffer exported cannot be),
     * but conns follows fast's size at init: the smaller bounds both. */
    Py_ssize_t fds = fast.len < self->conn_count ? fast.len : self->conn_count;
    struct epoll_event events[MAX_EVENTS];
    Served served[MAX_EVENTS];
    struct {
        int fd;
        ssize_t sent;
    } troubles[MAX_EVENTS];
    int served_count = 0, trouble_count = 0, wait_errno = 0;
    int ready_count = 0, done = 0;
    int pending_fd = -1;
    Py_ssize_t pending_count = 0;
    int no_memory = 0;
    double start = now_monotonic();
    double deadline = wait < 0 ? INFINITY : start + (double)wait / 1000.0;

    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    for (;;) {
        double now = now_monotonic();
        double until = deadline;
        if (self->pair_count && self->since + self->delay < until)
            until = self->since + self->delay;
        int timeout;
        if (until == INFINITY)
            timeout = -1;
        else if (until <= now)
            timeout = 0;
        else {
            double ms = ceil((until - now) * 1000.0);
            timeout = ms > INT_MAX ? INT_MAX : (int)ms;
        }
        ready_count = epoll_wait(self->epfd, events, MAX_EVENTS, timeout);
        if (ready_count < 0) {
            wait_errno = errno;
            ready_count = 0;
            break;
        }
        now = now_monotonic();
        for (done = 0; done < ready_count; done++) {
            int fd = events[done].data.fd;
            if (events[done].events != EPOLLIN || fd < 0 || fd >= fds || !is_fast[fd]
                || self->conns[fd] == NULL)
                break; /* this one and the rest: the Python code's */
            if (served_count == MAX_EVENTS || trouble_count == MAX_EVENTS)
                break; /* no room to report it: next time */
            if (!reserve_pair(self)) {
                no_memory = 1;
                break;
            }
            ssize_t got;
            do {
                got = recv(fd, b, (size_t)buffer.len, MSG_DONTWAIT);
            } while (got < 0 && errno == EINTR);
            if (got < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    continue; /* nothing after all */
                break;        /* an error: the Python code reads again and sees it */
            }
            Py_ssize_t at[POLICY_MAX_NAMES], end[POLICY_MAX_NAMES];
            Conn *conn = self->conns[fd];
            int whole = got > 0 && policy_parse(&self->names, b, got, at, end)
                        && (at[INSTANCE] < 0 || ascii(b, at[INSTANCE], end[INSTANCE]));
            int seen = 0;
            if (whole && at[INSTANCE] >= 0 && end[INSTANCE] > at[INSTANCE]) {
                seen = conn_seen(conn, (const char *)b + at[INSTANCE], end[INSTANCE] - at[INSTANCE]);
                if (seen < 0) {
                    no_memory = 1;
                    whole = 0; /* the Python code's (and its MemoryError) */
                }
            }
            if (!whole) {
                pending_fd = fd; /* not served here: the Python code takes it */
                pending_count = got;
                done++;
                break;
            }
            if (!seen) {
                if (self->pair_count == 0)
                    self->since = now;
                put_value(self, b, at[ADDRESS], end[ADDRESS]);
                put_value(self, b, at[SENDER], end[SENDER]);
                self->pair_count++;
            }
            memset(b, 0, (size_t)got);
            /* Its request is queued: a status from now on counts it. */
            ssize_t sent;
            do {
                sent = send(fd, reply.buf, (size_t)reply.len, MSG_DONTWAIT | MSG_NOSIGNAL);
            } while (sent < 0 && errno == EINTR);
            if (sent < 0)
                sent = (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -errno;
            int i = 0;
            while (i < served_count && served[i].fd != fd)
                i++;
            if (i == served_count) {
                served[i].fd = fd;
                served[i].served = 0;
                served_count++;
            }
            served[i].served++;
            served[i].last_read = now;
            if (sent != reply.len) {
                is_fast[fd] = 0; /* the Python code keeps the rest and waits */
                troubles[trouble_count].fd = fd;
                troubles[trouble_count].sent = sent;
                trouble_count++;
            }
        }
        if (done < ready_count || pending_fd >= 0 || trouble_count || no_memory
            || served_count == MAX_EVENTS || self->pair_count >= limit)
            break;
        now = now_monotonic();
        if (now >= deadline || (self->pair_count && now >= self->since + self->delay))
            break;
    }
    Py_END_ALLOW_THREADS
    /* busy until the end: building the results may run Python (a collection's
     * finalisers), which must not call back in while the pairs are being taken. */

    PyObject *served_list = NULL, *others = NULL, *pending = NULL, *trouble_list = NULL;
    PyObject *pairs = NULL, *result = NULL;
    if (wait_errno != 0 && wait_errno != EINTR) {
        errno = wait_errno;
        PyErr_SetFromErrno(PyExc_OSError);
        goto finally;
    }
    served_list = PyList_New(served_count);
    others = PyList_New(ready_count - done);
    trouble_list = PyList_New(trouble_count);
    if (served_list == NULL || others == NULL || trouble_list == NULL)
        goto finally;
    for (int i = 0; i < served_count; i++) {
        PyObject *item = Py_BuildValue("(ild)", served[i].fd, served[i].served,
                                       served[i].last_read);
        if (item == NULL)
            goto finally;
        PyList_SET_ITEM(served_list, i, item);
    }
    for (int i = done; i < ready_count; i++) {
        PyObject *item = Py_BuildValue("(iI)", events[i].data.fd, events[i].events);
        if (item == NULL)
            goto finally;
        PyList_SET_ITEM(others, i - done, item);
    }
    for (int i = 0; i < trouble_count; i++) {
        PyObject *item = Py_BuildValue("(in)", troubles[i].fd, (Py_ssize_t)troubles[i].sent);
        if (item == NULL)
            goto finally;
        PyList_SET_ITEM(trouble_list, i, item);
    }
    if (pending_fd >= 0)
        pending = Py_BuildValue("(inn)", pending_fd, (Py_ssize_t)0, pending_count);
    else {
        Py_INCREF(Py_None);
        pending = Py_None;
    }
    if (pending == NULL)
        goto finally;
    if (self->pair_count)
        pairs = take_pairs(self);
    else {
        Py_INCREF(Py_None);
        pairs = Py_None;
    }
    if (pairs == NULL)
        goto finally;
    result = PyTuple_Pack(5, served_list, others, pending, trouble_list, pairs);
    /* The last step that can fail: only now are the pairs handed over. */
    if (result != NULL && pairs != Py_None)
        forget_pairs(self);
finally:
    /* After an error (no memory), the read handed back is lost: overwritten. The
     * pairs stay queued for the next call, whichever step failed. */
    if (result == NULL && pending_count > 0)
        memset(b, 0, (size_t)pending_count);
    self->busy = 0;
    Py_XDECREF(served_list);
    Py_XDECREF(others);
    Py_XDECREF(pending);
    Py_XDECREF(trouble_list);
    Py_XDECREF(pairs);
    PyBuffer_Release(&reply);
    PyBuffer_Release(&fast);
    PyBuffer_Release(&buffer);
    return result;
}

static PyMethodDef Loop_methods[] = {
    {"serve", (PyCFunction)(void (*)(void))Loop_serve, METH_FASTCALL,
     "serve(timeout_ms, limit) -> (served, others, pending, troubles, pairs): wait and "
     "serve the whole requests of idle connections"},
    {"open", (PyCFunction)Loop_open, METH_O, "open(fd): a connection's memory of instances"},
    {"close", (PyCFunction)Loop_close, METH_O, "close(fd): its memory freed"},
    {"first", (PyCFunction)(void (*)(void))Loop_first, METH_FASTCALL,
     "first(fd, instance) -> bool: False if instance is one of the connection's last"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject LoopType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "trackerd.edges._cpolicy_loop.Loop",
    .tp_basicsize = sizeof(Loop),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Loop(epfd, names, max_line, max_attributes, buffer, fast, reply, delay): "
              "the policy thread's common case",
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
