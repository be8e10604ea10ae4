/* The worker library's hot path in C: record_queue.py's RecordQueue, the
 * columns frame of a batch (protocol/encoding.py's encode_columns), and what a
 * worker sends for its senders (sender_split.py's sent_senders).
 *
 * Optional: record_queue.py and protocol/encoding.py use it when it is built and
 * fall back to their pure-Python code otherwise (or when SERVERTRACKER_PURE is
 * set); property tests hold both to the same results, byte for byte on the wire
 * (tests/test_record_queue_c.py). Everything here runs holding the GIL but the
 * flusher's encoding of a batch it took (take_columns): a record is a few pointer
 * writes, and record_server() never waits while a frame is made.
 *
 * RecordQueue keeps the pure version's rules exactly: a value that is neither
 * str nor None goes through value_cut.clean() and a long str through
 * value_cut.cut() (both Python, both rare); a full queue or a spent long-value
 * budget drops the record and counts it; record() never raises an Exception
 * (it swallows them, as the pure version's ``except Exception: pass``).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <string.h>

/* As protocol/messages.py: MAX_MESSAGE_SIZE, MAX_PAIRS_PER_MESSAGE, and
 * record_queue.py's LONG_VALUE; record_queue.py checks that they agree. */
#define MAX_MESSAGE_SIZE (1024 * 1024)
#define MAX_PAIRS 65536
#define MAX_VALUE_LENGTH 512
#define LONG_VALUE 64
#define FIRST_CAPACITY 1024
/* The rings are made for max_buffered records at once, up to this many (64 MiB of
 * address space; a bigger queue grows from there). Growing them in record() doubled
 * and copied them in the recording thread: that one call took 0.4-8.5 ms, growing
 * with the backlog (10^5-10^6 records; docs/performance.md, "2026-11-26
 * (evening), lat"). The kernel maps their pages on first touch, so a queue touches
 * only the slots it has used: take() moves what it leaves to the rings' start
 * whenever that is at most a batch (or what it just took), so a queue that keeps
 * only a few records queued uses the first slots over and over rather than walking
 * round the rings (which mapped all 64 MiB of them within minutes; hostile review
 * of 16:27). A backlog of more than a batch that lasts still walks the rings: the
 * slots it has passed stay mapped (at most 16 bytes a record of max_buffered). */
#define PREALLOCATED (1 << 22)

typedef struct {
    PyObject_HEAD
    /* Two ring buffers of owned references (exact str, or None), len records
     * from head on. */
    PyObject **ips;
    PyObject **senders;
    Py_ssize_t capacity;
    Py_ssize_t head;
    Py_ssize_t len;
    Py_ssize_t max_buffered;
    Py_ssize_t max_long_chars;
    Py_ssize_t batch_size;
    long long recorded;
    long long dropped_full;
    long long dropped_long;
    long long long_queued;
    long long long_sent;
    char sleeping;
    char idle;
    char started;
    PyObject *wake;  /* called when the flusher sleeps and should wake */
    PyObject *start; /* called while started is false: starts the flusher */
    PyObject *clean; /* value_cut.clean */
    PyObject *cut;   /* value_cut.cut */
} RecordQueue;

static int
queue_traverse(RecordQueue *self, visitproc visit, void *arg)
{
    Py_VISIT(self->wake);
    Py_VISIT(self->start);
    Py_VISIT(self->clean);
    Py_VISIT(self->cut);
    return 0; /* the values are str or None: no cycle goes through them */
}

static int
queue_clear(RecordQueue *self)
{
    Py_CLEAR(self->wake);
    Py_CLEAR(self->start);
    Py_CLEAR(self->clean);
    Py_CLEAR(self->cut);
    return 0;
}

static void
release_values(RecordQueue *self)
{
    for (Py_ssize_t i = 0; i < self->len; i++) {
        Py_ssize_t at = (self->head + i) % self->capacity;
        Py_DECREF(self->ips[at]);
        Py_DECREF(self->senders[at]);
    }
    self->len = 0;
    self->head = 0;
}

static void
queue_dealloc(RecordQueue *self)
{
    PyObject_GC_UnTrack(self);
    if (self->ips != NULL) {
        release_values(self);
    }
    PyMem_Free(self->ips);
    PyMem_Free(self->senders);
    queue_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
queue_init(RecordQueue *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"max_buffered", "max_long_chars", "batch_size", "wake",
                            "start", "clean", "cut", NULL};
    Py_ssize_t max_buffered, max_long_chars, batch_size;
    PyObject *wake, *start, *clean, *cut;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "nnnOOOO", names, &max_buffered,
                                     &max_long_chars, &batch_size, &wake, &start, &clean, &cut)) {
        return -1;
    }
    if (self->wake != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "RecordQueue initialised twice");
        return -1;
    }
    self->max_buffered = max_buffered;
    self->max_long_chars = max_long_chars;
    self->batch_size = batch_size;
    self->wake = Py_NewRef(wake);
    self->start = Py_NewRef(start);
    self->clean = Py_NewRef(clean);
    self->cut = Py_NewRef(cut);
    self->idle = 1;
    Py_ssize_t capacity = max_buffered < PREALLOCATED ? max_buffered : PREALLOCATED;
    if (capacity < FIRST_CAPACITY) {
        capacity = FIRST_CAPACITY;
    }
    self->ips = PyMem_New(PyObject *, capacity);
    self->senders = PyMem_New(PyObject *, capacity);
    if (self->ips == NULL || self->senders == NULL) {
        /* No room for that much address space: grow as records come (grow()). */
        PyMem_Free(self->ips);
        PyMem_Free(self->senders);
        self->ips = self->senders = NULL;
        capacity = 0;
    }
    self->capacity = capacity;
    return 0;
}

/* Room for one more record: the rings doubled (unwrapped) when full; only past
 * PREALLOCATED records, or where queue_init() could not make them. */
static int
grow(RecordQueue *self)
{
    Py_ssize_t capacity = self->capacity ? self->capacity * 2 : FIRST_CAPACITY;
    PyObject **ips = PyMem_New(PyObject *, capacity);
    PyObject **senders = PyMem_New(PyObject *, capacity);
    if (ips == NULL || senders == NULL) {
        PyMem_Free(ips);
        PyMem_Free(senders);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < self->len; i++) {
        Py_ssize_t at = (self->head + i) % self->capacity;
        ips[i] = self->ips[at];
        senders[i] = self->senders[at];
    }
    PyMem_Free(self->ips);
    PyMem_Free(self->senders);
    self->ips = ips;
    self->senders = senders;
    self->capacity = capacity;
    self->head = 0;
    return 0;
}

/* Append one record, taking over both references. */
static int
push(RecordQueue *self, PyObject *ip, PyObject *sender)
{
    if (self->len == self->capacity && grow(self) < 0) {
        return -1;
    }
    Py_ssize_t at = self->head + self->len;
    if (at >= self->capacity) {
        at -= self->capacity;
    }
    self->ips[at] = ip;
    self->senders[at] = sender;
    self->len++;
    return 0;
}

static Py_ssize_t
long_chars(PyObject *value)
{
    if (value == Py_None) {
        return 0;
    }
    Py_ssize_t length = PyUnicode_GET_LENGTH(value);
    return length > LONG_VALUE ? length : 0;
}

/* value, or value_cut.clean(value) unless it is str or None: a new reference. */
static PyObject *
cleaned(RecordQueue *self, PyObject *value)
{
    if (value == Py_None || PyUnicode_CheckExact(value)) {
        Py_INCREF(value);
        return value;
    }
    PyObject *result = PyObject_CallOneArg(self->clean, value);
    if (result != NULL && result != Py_None && !PyUnicode_CheckExact(result)) {
        Py_DECREF(result); /* clean() returns str or None; never trust the other */
        PyErr_SetString(PyExc_TypeError, "clean() returned neither str nor None");
        return NULL;
    }
    return result;
}

/* Replace *value (owned) by value_cut.cut(*value) if it is a str. */
static int
cut_in_place(RecordQueue *self, PyObject **value)
{
    if (*value == Py_None) {
        return 0;
    }
    PyObject *result = PyObject_CallOneArg(self->cut, *value);
    if (result == NULL) {
        return -1;
    }
    if (!PyUnicode_CheckExact(result)) {
        Py_DECREF(result);
        PyErr_SetString(PyExc_TypeError, "cut() returned no str");
        return -1;
    }
    Py_SETREF(*value, result);
    return 0;
}

/* What follows a record queued: wake the flusher, start it. Errors swallowed by
 * the caller. */
static int
after_record(RecordQueue *self)
{
    if (self->sleeping && (self->idle || self->len >= self->batch_size)) {
        self->sleeping = 0;
        PyObject *result = PyObject_CallNoArgs(self->wake);
        if (result == NULL) {
            return -1;
        }
        Py_DECREF(result);
    }
    if (!self->started) {
        PyObject *result = PyObject_CallNoArgs(self->start);
        if (result == NULL) {
            return -1;
        }
        Py_DECREF(result);
    }
    return 0;
}

static int
record_pair(RecordQueue *self, PyObject *ip_arg, PyObject *sender_arg)
{
    PyObject *ip = cleaned(self, ip_arg);
    if (ip == NULL) {
        return -1;
    }
    PyObject *sender = cleaned(self, sender_arg);
    if (sender == NULL) {
        Py_DECREF(ip);
        return -1;
    }
    if (self->len >= self->max_buffered) {
        self->dropped_full++;
        goto drop;
    }
    if ((ip != Py_None && PyUnicode_GET_LENGTH(ip) > LONG_VALUE) ||
        (sender != Py_None && PyUnicode_GET_LENGTH(sender) > LONG_VALUE)) {
        if (cut_in_place(self, &ip) < 0 || cut_in_place(self, &sender) < 0) {
            goto fail;
        }
        long long chars = long_chars(ip) + long_chars(sender);
        if (self->long_queued - self->long_sent + chars > self->max_long_chars) {
            self->dropped_long++;
            goto drop;
        }
        self->long_queued += chars;
    }
    if (push(self, ip, sender) < 0) {
        goto fail;
    }
    self->recorded++;
    return after_record(self);
drop:
    Py_DECREF(ip);
    Py_DECREF(sender);
    return 0;
fail:
    Py_DECREF(ip);
    Py_DECREF(sender);
    return -1;
}

/* 1 if __init__ gave the queue its callbacks (and the collector's tp_clear has not
 * taken them), else 0 with a RuntimeError: a queue made by __new__ alone. */
static int
queue_ready(RecordQueue *self)
{
    if (self->wake == NULL || self->start == NULL || self->clean == NULL || self->cut == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "RecordQueue.__init__ was not called");
        return 0;
    }
    return 1;
}

/* record(conn_ip, sender): queue one pair; never blocks, never raises an Exception
 * (but a RuntimeError on a queue never initialised: a programming error). */
static PyObject *
queue_record(RecordQueue *self, PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames)
{
    if (!queue_ready(self)) {
        return NULL;
    }
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *values[2] = {NULL, NULL};
    if (kwnames == NULL && nargs == 2) {
        values[0] = args[0];
        values[1] = args[1];
    }
    else {
        /* Keywords (conn_ip=, sender=): as the pure version's signature takes them. */
        Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
        if (nargs > 2) {
            PyErr_Format(PyExc_TypeError, "record_server() takes 2 arguments (%zd given)",
                         nargs + nkw);
            return NULL;
        }
        for (Py_ssize_t i = 0; i < nargs; i++) {
            values[i] = args[i];
        }
        for (Py_ssize_t i = 0; i < nkw; i++) {
            PyObject *name = PyTuple_GET_ITEM(kwnames, i);
            int slot = -1;
            if (PyUnicode_CompareWithASCIIString(name, "conn_ip") == 0) {
                slot = 0;
            }
            else if (PyUnicode_CompareWithASCIIString(name, "sender") == 0) {
                slot = 1;
            }
            if (slot < 0 || values[slot] != NULL) {
                PyErr_SetString(PyExc_TypeError,
                                "record_server() takes the arguments conn_ip and sender");
                return NULL;
            }
            values[slot] = args[nargs + i];
        }
        if (values[0] == NULL || values[1] == NULL) {
            PyErr_SetString(PyExc_TypeError, "record_server() takes 2 arguments");
            return NULL;
        }
    }
    if (record_pair(self, values[0], values[1]) < 0) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) {
            return NULL; /* KeyboardInterrupt and the like go on, as in Python */
        }
        PyErr_Clear(); /* recording must never break an SMTP session */
    }
    Py_RETURN_NONE;
}

/* extend(conn_ips, senders): queue two lists of values already cleaned and cut
 * (record_many's), their long values charged to the budget; never drops. */
static PyObject *
queue_extend(RecordQueue *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyList_CheckExact(args[0]) || !PyList_CheckExact(args[1]) ||
        PyList_GET_SIZE(args[0]) != PyList_GET_SIZE(args[1])) {
        PyErr_SetString(PyExc_TypeError, "extend() takes two lists of equal length");
        return NULL;
    }
    PyObject *ips = args[0], *senders = args[1];
    Py_ssize_t count = PyList_GET_SIZE(ips);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *ip = PyList_GET_ITEM(ips, i), *sender = PyList_GET_ITEM(senders, i);
        if ((ip != Py_None && !PyUnicode_CheckExact(ip)) ||
            (sender != Py_None && !PyUnicode_CheckExact(sender))) {
            PyErr_SetString(PyExc_TypeError, "extend() takes str or None values");
            return NULL;
        }
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *ip = PyList_GET_ITEM(ips, i), *sender = PyList_GET_ITEM(senders, i);
        Py_INCREF(ip);
        Py_INCREF(sender);
        if (push(self, ip, sender) < 0) {
            Py_DECREF(ip);
            Py_DECREF(sender);
            return NULL;
        }
        self->long_queued += long_chars(ip) + long_chars(sender);
        self->recorded++;
    }
    Py_RETURN_NONE;
}

/* After a take of `taken` records: the records left moved to the rings' start
 * (see PREALLOCATED) when they are at most a batch, or at most what was just taken,
 * so the move costs no more than the take did (the flusher holds the GIL meanwhile,
 * and record_server() may be waiting for it). Pointers moved, no reference changed. */
static void
restart(RecordQueue *self, Py_ssize_t taken)
{
    Py_ssize_t len = self->len, head = self->head;
    if (head == 0 || len > (taken > self->batch_size ? taken : self->batch_size)) {
        return;
    }
    Py_ssize_t first = self->capacity - head; /* slots from head to the rings' end */
    if (len <= first) {                       /* in one piece: [head, head + len) */
        memmove(self->ips, self->ips + head, (size_t)len * sizeof(PyObject *));
        memmove(self->senders, self->senders + head, (size_t)len * sizeof(PyObject *));
    }
    else if (len <= head) {
        /* Wrapped: [head, capacity) then [0, len - first). The second piece moves
         * up to [first, len), which ends before head (len <= head), then the first
         * piece goes in front of it. */
        Py_ssize_t second = len - first;
        memmove(self->ips + first, self->ips, (size_t)second * sizeof(PyObject *));
        memmove(self->senders + first, self->senders, (size_t)second * sizeof(PyObject *));
        memcpy(self->ips, self->ips + head, (size_t)first * sizeof(PyObject *));
        memcpy(self->senders, self->senders + head, (size_t)first * sizeof(PyObject *));
    }
    else {
        return; /* wrapped and more than head slots: left where they are */
    }
    self->head = 0;
}

/* take(n): the first n records (at most all) as two lists, out of the queue. */
static PyObject *
queue_take(RecordQueue *self, PyObject *arg)
{
    Py_ssize_t count = PyLong_AsSsize_t(arg);
    if (count == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t wanted = count < 0 ? 0 : count;
    PyObject *ips, *senders, *pair;
    /* The lists first: making them may run the collector, and so a __del__ that
     * records or takes (or lets another thread do so): the records are counted
     * after, with no Python code run between the count and the handover. */
    for (;;) {
        count = wanted < self->len ? wanted : self->len;
        ips = PyList_New(count);
        senders = PyList_New(count);
        pair = PyTuple_New(2);
        if (ips == NULL || senders == NULL || pair == NULL) {
            Py_XDECREF(ips);
            Py_XDECREF(senders);
            Py_XDECREF(pair);
            return NULL;
        }
        if (count <= self->len) {
            break;
        }
        Py_DECREF(ips); /* fewer records now: again */
        Py_DECREF(senders);
        Py_DECREF(pair);
    }
    int some_long = self->long_sent != self->long_queued;
    long long chars = 0;
    Py_ssize_t head = self->head;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *ip = self->ips[head], *sender = self->senders[head];
        PyList_SET_ITEM(ips, i, ip); /* the queue's references, handed over */
        PyList_SET_ITEM(senders, i, sender);
        if (some_long) {
            chars += long_chars(ip) + long_chars(sender);
        }
        if (++head == self->capacity) {
            head = 0;
        }
    }
    self->len -= count;
    self->head = head;
    restart(self, count);
    self->long_sent += chars;
    PyTuple_SET_ITEM(pair, 0, ips);
    PyTuple_SET_ITEM(pair, 1, senders);
    return pair;
}

static void free_frame(char *frame, Py_ssize_t size);
static int columns_frame(PyObject *const *ips, PyObject *const *senders, Py_ssize_t count,
                         char **frame, Py_ssize_t *size);

/* take_columns(n): as take(n), and the columns frame of what it took (bytes; None
 * where the Python code decides, as encode_columns() or none taken): (conn_ips,
 * senders, frame). The frame is made without the GIL, so that record_server() in
 * another thread never waits behind it: the lists are new, held by nothing but
 * the pair and the pair by nothing but this call (checked: the collector run by
 * take()'s allocations could have handed them to another thread's
 * gc.get_objects()), and they are kept out of the collector's sight meanwhile,
 * so no other thread can reach them (nor change them); their values are exact
 * str or None (record() and extend() queue nothing else), whose characters
 * never change while referenced. Only pointers are moved holding the GIL: the
 * values are first read, a cache miss each, without it. */
static PyObject *
queue_take_columns(RecordQueue *self, PyObject *arg)
{
    PyObject *pair = queue_take(self, arg);
    if (pair == NULL) {
        return NULL;
    }
    PyObject *ips = PyTuple_GET_ITEM(pair, 0), *senders = PyTuple_GET_ITEM(pair, 1);
    Py_ssize_t count = PyList_GET_SIZE(ips);
    char *frame = NULL;
    Py_ssize_t size = 0;
    int made = 0;
    if (count >= 1 && count <= MAX_PAIRS) {
        PyObject *const *ip_items = &PyList_GET_ITEM(ips, 0);
        PyObject *const *sender_items = &PyList_GET_ITEM(senders, 0);
        /* Out of the collector's lists meanwhile, so that no other thread can get
         * at them either (gc.get_objects(), gc.get_referrers()) and change them
         * under the encoder; each was tracked (PyList_New, PyTuple_New). */
        if (Py_REFCNT(pair) != 1 || Py_REFCNT(ips) != 1 || Py_REFCNT(senders) != 1) {
            /* Someone else holds one (see above): made holding the GIL, so that
             * nobody changes them meanwhile. */
            made = columns_frame(ip_items, sender_items, count, &frame, &size);
        }
        else {
            PyObject_GC_UnTrack(pair);
            PyObject_GC_UnTrack(ips);
            PyObject_GC_UnTrack(senders);
            Py_BEGIN_ALLOW_THREADS
            made = columns_frame(ip_items, sender_items, count, &frame, &size);
            Py_END_ALLOW_THREADS
            PyObject_GC_Track(ips);
            PyObject_GC_Track(senders);
            PyObject_GC_Track(pair);
        }
    }
    PyObject *bytes = Py_None;
    if (made) {
        bytes = PyBytes_FromStringAndSize(frame, size);
        free_frame(frame, size);
        if (bytes == NULL) {
            Py_DECREF(pair);
            return NULL;
        }
    }
    else {
        Py_INCREF(bytes);
    }
    PyObject *result = PyTuple_Pack(3, ips, senders, bytes);
    Py_DECREF(bytes);
    Py_DECREF(pair);
    return result;
}

/* snapshot(): copies of the queued values as two lists (tests, and nothing else). */
static PyObject *
queue_snapshot(RecordQueue *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *ips, *senders;
    Py_ssize_t count;
    /* As take(): the lists made, then the records counted (a __del__ run by the
     * collector meanwhile may have recorded). */
    for (;;) {
        count = self->len;
        ips = PyList_New(count);
        senders = PyList_New(count);
        if (ips == NULL || senders == NULL) {
            Py_XDECREF(ips);
            Py_XDECREF(senders);
            return NULL;
        }
        if (count == self->len) {
            break;
        }
        Py_DECREF(ips);
        Py_DECREF(senders);
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t at = (self->head + i) % self->capacity;
        Py_INCREF(self->ips[at]);
        PyList_SET_ITEM(ips, i, self->ips[at]);
        Py_INCREF(self->senders[at]);
        PyList_SET_ITEM(senders, i, self->senders[at]);
    }
    return Py_BuildValue("(NN)", ips, senders);
}

static Py_ssize_t
queue_length(RecordQueue *self)
{
    return self->len;
}

static PyObject *
queue_get_dropped(RecordQueue *self, void *Py_UNUSED(closure))
{
    return PyLong_FromLongLong(self->dropped_full + self->dropped_long);
}

static PyMethodDef queue_methods[] = {
    {"record", (PyCFunction)(void (*)(void))queue_record, METH_FASTCALL | METH_KEYWORDS,
     "record(conn_ip, sender): queue one pair. Never blocks, never raises."},
    {"extend", (PyCFunction)(void (*)(void))queue_extend, METH_FASTCALL,
     "extend(conn_ips, senders): queue values already cleaned and cut (record_many)."},
    {"take", (PyCFunction)queue_take, METH_O,
     "take(n): the first n records (at most all) as two lists, out of the queue."},
    {"take_columns", (PyCFunction)queue_take_columns, METH_O,
     "take_columns(n): take(n) and their columns frame (None: the Python code decides)."},
    {"snapshot", (PyCFunction)queue_snapshot, METH_NOARGS,
     "snapshot(): copies of the queued values as two lists (for tests)."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef queue_members[] = {
    {"max_buffered", T_PYSSIZET, offsetof(RecordQueue, max_buffered), READONLY, NULL},
    {"max_long_chars", T_PYSSIZET, offsetof(RecordQueue, max_long_chars), READONLY, NULL},
    {"capacity", T_PYSSIZET, offsetof(RecordQueue, capacity), READONLY,
     "records the rings hold before they grow (for tests)"},
    {"head", T_PYSSIZET, offsetof(RecordQueue, head), READONLY,
     "the slot of the first record queued (for tests)"},
    {"batch_size", T_PYSSIZET, offsetof(RecordQueue, batch_size), 0, NULL},
    {"recorded", T_LONGLONG, offsetof(RecordQueue, recorded), READONLY, NULL},
    {"dropped_full", T_LONGLONG, offsetof(RecordQueue, dropped_full), READONLY, NULL},
    {"dropped_long", T_LONGLONG, offsetof(RecordQueue, dropped_long), READONLY, NULL},
    {"long_queued", T_LONGLONG, offsetof(RecordQueue, long_queued), READONLY, NULL},
    {"long_sent", T_LONGLONG, offsetof(RecordQueue, long_sent), READONLY, NULL},
    {"sleeping", T_BOOL, offsetof(RecordQueue, sleeping), 0, NULL},
    {"idle", T_BOOL, offsetof(RecordQueue, idle), 0, NULL},
    {"started", T_BOOL, offsetof(RecordQueue, started), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef queue_getset[] = {
    {"dropped", (getter)queue_get_dropped, NULL, "dropped_full + dropped_long", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods queue_as_sequence = {
    .sq_length = (lenfunc)queue_length,
};

static PyTypeObject RecordQueueType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "servertracker._record_queue.RecordQueue",
    .tp_doc = "record_queue.py's RecordQueue, in C.",
    .tp_basicsize = sizeof(RecordQueue),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)queue_init,
    .tp_dealloc = (destructor)queue_dealloc,
    .tp_traverse = (traverseproc)queue_traverse,
    .tp_clear = (inquiry)queue_clear,
    .tp_methods = queue_methods,
    .tp_members = queue_members,
    .tp_getset = queue_getset,
    .tp_as_sequence = &queue_as_sequence,
};

/* --- the columns frame --------------------------------------------------------- */

static Py_ssize_t
header_size(Py_ssize_t length, int is_array)
{
    if (length < (is_array ? 16 : 32)) {
        return 1;
    }
    if (!is_array && length < 256) {
        return 2;
    }
    return length < 65536 ? 3 : 5;
}

static char *
put_header(char *at, Py_ssize_t length, int is_array)
{
    if (length < (is_array ? 16 : 32)) {
        *at++ = (char)((is_array ? 0x90 : 0xa0) | length);
    }
    else if (!is_array && length < 256) {
        *at++ = (char)0xd9;
        *at++ = (char)length;
    }
    else if (length < 65536) {
        *at++ = (char)(is_array ? 0xdc : 0xda);
        *at++ = (char)(length >> 8);
        *at++ = (char)length;
    }
    else {
        *at++ = (char)(is_array ? 0xdd : 0xdb);
        *at++ = (char)(length >> 24);
        *at++ = (char)(length >> 16);
        *at++ = (char)(length >> 8);
        *at++ = (char)length;
    }
    return at;
}

/* The UTF-8 bytes of a str's characters, read from its own (immutable) canonical
 * data, or -1 for one that has none (a lone surrogate) or a str not ready (made by
 * the legacy C API). Neither calls into Python nor allocates: it runs without the
 * GIL (take_columns), on a str the caller holds a reference to. */
static Py_ssize_t
utf8_size(PyObject *value)
{
#if PY_VERSION_HEX < 0x030C0000
    if (!PyUnicode_IS_READY(value)) {
        return -1;
    }
#endif
    Py_ssize_t length = PyUnicode_GET_LENGTH(value);
    if (PyUnicode_IS_ASCII(value)) {
        return length;
    }
    int kind = PyUnicode_KIND(value);
    const void *data = PyUnicode_DATA(value);
    Py_ssize_t size = 0;
    for (Py_ssize_t i = 0; i < length; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c < 0x80) {
            size += 1;
        }
        else if (c < 0x800) {
            size += 2;
        }
        else if (c >= 0xd800 && c <= 0xdfff) {
            return -1;
        }
        else {
            size += c < 0x10000 ? 3 : 4;
        }
    }
    return size;
}

/* Write a str's UTF-8 (utf8_size() said it has some): as strict UTF-8 encoding,
 * and so msgpack, makes it. */
static char *
put_utf8(char *at, PyObject *value)
{
    Py_ssize_t length = PyUnicode_GET_LENGTH(value);
    if (PyUnicode_IS_ASCII(value)) {
        memcpy(at, PyUnicode_DATA(value), (size_t)length);
        return at + length;
    }
    int kind = PyUnicode_KIND(value);
    const void *data = PyUnicode_DATA(value);
    for (Py_ssize_t i = 0; i < length; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c < 0x80) {
            *at++ = (char)c;
        }
        else if (c < 0x800) {
            *at++ = (char)(0xc0 | (c >> 6));
            *at++ = (char)(0x80 | (c & 0x3f));
        }
        else if (c < 0x10000) {
            *at++ = (char)(0xe0 | (c >> 12));
            *at++ = (char)(0x80 | ((c >> 6) & 0x3f));
            *at++ = (char)(0x80 | (c & 0x3f));
        }
        else {
            *at++ = (char)(0xf0 | (c >> 18));
            *at++ = (char)(0x80 | ((c >> 12) & 0x3f));
            *at++ = (char)(0x80 | ((c >> 6) & 0x3f));
            *at++ = (char)(0x80 | (c & 0x3f));
        }
    }
    return at;
}

/* The encoded size of a column's values, or -1 for one that is neither an exact
 * str nor None (a subclass may encode its own way: msgpack decides) or has no
 * UTF-8 (a lone surrogate), or that grows past the largest message. Without the
 * GIL (see utf8_size): values is an array the caller owns, of references it holds. */
static Py_ssize_t
column_size(PyObject *const *values, Py_ssize_t count)
{
    Py_ssize_t size = header_size(count, 1);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *value = values[i];
        if (value == Py_None) {
            size += 1;
            continue;
        }
        if (!PyUnicode_CheckExact(value)) {
            return -1;
        }
        /* UTF-8 takes at least a byte a character: a str too long for any message
         * is refused before its characters are read. */
        if (PyUnicode_GET_LENGTH(value) > MAX_MESSAGE_SIZE - size) {
            return -1;
        }
        Py_ssize_t length = utf8_size(value);
        if (length < 0) {
            return -1;
        }
        size += header_size(length, 0) + length;
        if (size > MAX_MESSAGE_SIZE) {
            return -1;
        }
    }
    return size;
}

static char *
put_column(char *at, PyObject *const *values, Py_ssize_t count)
{
    at = put_header(at, count, 1);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *value = values[i];
        if (value == Py_None) {
            *at++ = (char)0xc0;
            continue;
        }
        /* Measured again: the same immutable characters as column_size() read. */
        at = put_header(at, utf8_size(value), 0);
        at = put_utf8(at, value);
    }
    return at;
}

static const char COLUMNS_START[] = "\x94\x01\xa7" "columns";

/* Frees a frame from columns_frame() after overwriting it: it holds the batch's
 * senders, which live no longer than the batch (as the daemon's buffers; the
 * memset cannot be dropped as a dead store: the compiler must assume the asm reads
 * it). The bytes object copied from it and handed to Python cannot be wiped: the
 * caller lets go of it with the batch. */
static void
free_frame(char *frame, Py_ssize_t size)
{
#if defined(__GNUC__) || defined(__clang__)
    memset(frame, 0, (size_t)size);
    __asm__ __volatile__("" : : "r"(frame) : "memory");
#else
    volatile char *v = frame;
    for (Py_ssize_t i = 0; i < size; i++) {
        v[i] = 0;
    }
#endif
    PyMem_RawFree(frame);
}

/* The frame of [1, "columns", ips, senders] (count of each, 1 to MAX_PAIRS) into a
 * buffer from PyMem_RawMalloc (*frame, *size), or 0 where the Python code decides
 * (a value neither str nor None, or without UTF-8, or a message over the limit) or
 * there is no memory. Touches no Python state but the values' immutable parts:
 * runs with or without the GIL. */
static int
columns_frame(PyObject *const *ips, PyObject *const *senders, Py_ssize_t count, char **frame,
              Py_ssize_t *size)
{
    Py_ssize_t ip_size = column_size(ips, count);
    Py_ssize_t sender_size = ip_size < 0 ? -1 : column_size(senders, count);
    if (sender_size < 0) {
        return 0;
    }
    Py_ssize_t body = (Py_ssize_t)sizeof(COLUMNS_START) - 1 + ip_size + sender_size;
    if (body > MAX_MESSAGE_SIZE) {
        return 0;
    }
    char *start = PyMem_RawMalloc((size_t)(4 + body));
    if (start == NULL) {
        return 0;
    }
    char *at = start;
    *at++ = (char)(body >> 24);
    *at++ = (char)(body >> 16);
    *at++ = (char)(body >> 8);
    *at++ = (char)body;
    memcpy(at, COLUMNS_START, sizeof(COLUMNS_START) - 1);
    at += sizeof(COLUMNS_START) - 1;
    at = put_column(at, ips, count);
    at = put_column(at, senders, count);
    (void)at;
    *frame = start;
    *size = 4 + body;
    return 1;
}

/* encode_columns(conn_ips, senders): the frame of [1, "columns", conn_ips,
 * senders] exactly as msgpack encodes it (protocol/encoding.py), or None where
 * the Python code must decide (not two lists of 1 to 65,536 str or None, a value
 * not UTF-8, a message over the limit): it raises the error or encodes what this
 * does not. Holds the GIL throughout (the lists are the caller's). */
static PyObject *
encode_columns(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "encode_columns() takes 2 arguments");
        return NULL;
    }
    PyObject *ips = args[0], *senders = args[1];
    /* Exact lists: a subclass's __len__ and __iter__, which msgpack goes through, may
     * differ from its items. */
    if (!PyList_CheckExact(ips) || !PyList_CheckExact(senders)) {
        Py_RETURN_NONE;
    }
    Py_ssize_t count = PyList_GET_SIZE(ips);
    if (count != PyList_GET_SIZE(senders) || count < 1 || count > MAX_PAIRS) {
        Py_RETURN_NONE;
    }
    char *frame;
    Py_ssize_t size;
    /* Nothing below runs Python code: the lists stay as they are. */
    if (!columns_frame(&PyList_GET_ITEM(ips, 0), &PyList_GET_ITEM(senders, 0), count, &frame,
                       &size)) {
        Py_RETURN_NONE;
    }
    PyObject *result = PyBytes_FromStringAndSize(frame, size);
    free_frame(frame, size);
    return result;
}

/* --- what a worker sends for a sender ------------------------------------------ */

/* Not space, "<", ">" nor "@": the pattern's [^\s<>@] (re's \s is str.isspace()). */
static int
plain(Py_UCS4 c)
{
    return c != '<' && c != '>' && c != '@' && !Py_UNICODE_ISSPACE(c);
}

/* sender_split.sent_sender(value) for a str: the domain part of "local@domain" or
 * "<local@domain>" (no space, angle bracket or other "@" in them, within
 * MAX_VALUE_LENGTH), else the value itself. A new reference. */
static PyObject *
sent_sender(PyObject *value)
{
    Py_ssize_t length = PyUnicode_GET_LENGTH(value);
    if (length == 0 || length > MAX_VALUE_LENGTH) {
        return Py_NewRef(value);
    }
    int kind = PyUnicode_KIND(value);
    const void *data = PyUnicode_DATA(value);
    Py_ssize_t start = 0, end = length, at = -1;
    if (PyUnicode_READ(kind, data, 0) == '<') {
        if (length < 2 || PyUnicode_READ(kind, data, length - 1) != '>') {
            return Py_NewRef(value);
        }
        start = 1;
        end = length - 1;
    }
    for (Py_ssize_t i = start; i < end; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c == '@') {
            if (at >= 0) {
                return Py_NewRef(value);
            }
            at = i;
        }
        else if (!plain(c)) {
            return Py_NewRef(value);
        }
    }
    if (at <= start || at >= end - 1) { /* no "@", or no local part, or no domain */
        return Py_NewRef(value);
    }
    return PyUnicode_Substring(value, at + 1, end);
}

/* sent_senders(values): [sent_sender(v) if v else v for v in values] for a list of
 * str or None, or None for anything else (the Python code decides). */
static PyObject *
sent_senders(PyObject *Py_UNUSED(module), PyObject *values)
{
    if (!PyList_CheckExact(values)) {
        Py_RETURN_NONE;
    }
    Py_ssize_t count = PyList_GET_SIZE(values);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *value = PyList_GET_ITEM(values, i);
        if (value != Py_None && !PyUnicode_CheckExact(value)) {
            Py_RETURN_NONE;
        }
    }
    PyObject *sent = PyList_New(count);
    if (sent == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        /* Checked again: making sent may have run the collector, and a __del__
         * that changed the list. Nothing in this loop runs Python code. */
        PyObject *value = i < PyList_GET_SIZE(values) ? PyList_GET_ITEM(values, i) : NULL;
        if (PyList_GET_SIZE(values) != count ||
            (value != Py_None && !PyUnicode_CheckExact(value))) {
            Py_DECREF(sent);
            Py_RETURN_NONE;
        }
        PyObject *part = value == Py_None ? Py_NewRef(value) : sent_sender(value);
        if (part == NULL) {
            Py_DECREF(sent);
            return NULL;
        }
        PyList_SET_ITEM(sent, i, part);
    }
    return sent;
}

static PyMethodDef module_methods[] = {
    {"encode_columns", (PyCFunction)(void (*)(void))encode_columns, METH_FASTCALL,
     "encode_columns(conn_ips, senders): a columns frame, or None (see the source)."},
    {"sent_senders", (PyCFunction)sent_senders, METH_O,
     "sent_senders(values): sender_split.sent_senders() for a list of str or None, or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "servertracker._record_queue",
    .m_doc = "The worker library's hot path in C (record_queue.py, protocol/encoding.py).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__record_queue(void)
{
    if (PyType_Ready(&RecordQueueType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "LONG_VALUE", LONG_VALUE) < 0 ||
        PyModule_AddIntConstant(m, "MAX_MESSAGE_SIZE", MAX_MESSAGE_SIZE) < 0 ||
        PyModule_AddIntConstant(m, "MAX_PAIRS", MAX_PAIRS) < 0 ||
        PyModule_AddIntConstant(m, "MAX_VALUE_LENGTH", MAX_VALUE_LENGTH) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&RecordQueueType);
    if (PyModule_AddObject(m, "RecordQueue", (PyObject *)&RecordQueueType) < 0) {
        Py_DECREF(&RecordQueueType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
