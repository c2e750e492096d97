/*
 * pkeyguard._terminal: the controlling terminal with echo off, as a context manager whose
 * entry and exit are each one C call (issue 18, class 12).
 *
 * Secret.from_prompt used to open /dev/tty and turn echo off in Python.  A KeyboardInterrupt
 * raised by a signal handler between a change and the `try` that undoes it, or inside the
 * `finally` before the undo ran, left echo off or the descriptor open.  Here each change and
 * the record of it are made in __enter__, and undone in __exit__: no Python code runs inside
 * either call (a signal that arrives is handled after the call returns), and `with` calls
 * __exit__ for any exception raised once __enter__ has returned.
 *
 * Ownership: a QuietTerminal owns its descriptor from __enter__ until __exit__ (or its
 * deallocation, which restores the settings too).  It is entered at most once.  The GIL is
 * held throughout, so no other thread sees it half-changed.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <termios.h>
#include <unistd.h>

enum { TERM_NEW, TERM_ENTERING, TERM_OPEN, TERM_DONE };

typedef struct {
    PyObject_HEAD
    int fd;               /* the terminal, -1 unless TERM_OPEN */
    int state;
    struct termios saved; /* the settings found at entry, restored at exit */
} QuietTerminal;

/* Slot functions take PyObject * (CPython's style, which UBSan's function-type checks expect). */
#define QuietTerminal_CAST(op) ((QuietTerminal *)(op))

/* Put back the settings found at entry and close the descriptor (after ending the line the
 * user typed without echo, if `newline`); runs no Python code, so nothing can interrupt it.
 * Returns 0, or the errno of a restore that failed (the descriptor is closed either way). */
static int
terminal_restore(QuietTerminal *self, int newline)
{
    int fd = self->fd;
    int failed = 0;
    self->fd = -1;
    self->state = TERM_DONE;
    /* Discard what was typed and not read (as TCSAFLUSH did), then restore at once:
     * TCSANOW never waits for output to drain, so a stopped terminal cannot hang the exit. */
    (void)tcflush(fd, TCIFLUSH);
    for (int tries = 0; tries < 100; tries++) {
        if (tcsetattr(fd, TCSANOW, &self->saved) == 0) {
            failed = 0;
            break;
        }
        failed = errno;
        if (failed != EINTR) {
            break;
        }
    }
    if (newline) {
        /* Non-blocking: dropped if the terminal's output is stuck. */
        ssize_t written = write(fd, "\n", 1);
        (void)written;
    }
    (void)close(fd); /* Linux frees the descriptor even when close reports EINTR */
    return failed;
}

static PyObject *
QuietTerminal_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    if (PyTuple_GET_SIZE(args) != 0 || (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0)) {
        PyErr_SetString(PyExc_TypeError, "QuietTerminal() takes no arguments");
        return NULL;
    }
    QuietTerminal *self = (QuietTerminal *)type->tp_alloc(type, 0);
    if (self != NULL) {
        self->fd = -1;
        self->state = TERM_NEW;
    }
    return (PyObject *)self;
}

static void
QuietTerminal_dealloc(PyObject *op)
{
    QuietTerminal *self = QuietTerminal_CAST(op);
    if (self->state == TERM_OPEN) {
        (void)terminal_restore(self, 1); /* never entered by `with`, or never exited */
    }
    PyTypeObject *type = Py_TYPE(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

/* Open /dev/tty (a description of our own, non-blocking) and turn echo off: one call.
 * On any failure nothing is left changed or open. */
static PyObject *
QuietTerminal_enter(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    QuietTerminal *self = QuietTerminal_CAST(op);
    if (self->state != TERM_NEW) {
        PyErr_SetString(PyExc_RuntimeError, "a QuietTerminal is entered once");
        return NULL;
    }
    /* A signal handler run below (on EINTR) that reaches this object cannot enter it too. */
    self->state = TERM_ENTERING;
    int fd;
    for (;;) {
        fd = open("/dev/tty", O_RDWR | O_NOCTTY | O_CLOEXEC | O_NONBLOCK);
        if (fd >= 0) {
            break;
        }
        if (errno != EINTR) {
            self->state = TERM_NEW;
            return PyErr_SetFromErrnoWithFilename(PyExc_OSError, "/dev/tty");
        }
        if (PyErr_CheckSignals() < 0) { /* nothing is open yet */
            self->state = TERM_NEW;
            return NULL;
        }
    }
    struct termios quiet;
    if (tcgetattr(fd, &self->saved) != 0) {
        int err = errno;
        (void)close(fd);
        self->state = TERM_NEW;
        errno = err;
        return PyErr_SetFromErrnoWithFilename(PyExc_OSError, "/dev/tty");
    }
    quiet = self->saved;
    quiet.c_lflag &= ~(tcflag_t)ECHO; /* canonical mode stays: one line per read */
    for (;;) {
        /* TCSAFLUSH: what was typed before the prompt is not taken as the password. */
        if (tcsetattr(fd, TCSAFLUSH, &quiet) == 0) {
            break;
        }
        int err = errno;
        if (err == EINTR && PyErr_CheckSignals() == 0) {
            continue; /* interrupted while output drained, and no handler raised: again */
        }
        /* Failed or interrupted: put back what was there (it did not change) and close. */
        self->fd = fd;
        (void)terminal_restore(self, 0);
        self->state = TERM_NEW;
        if (err == EINTR) {
            return NULL; /* the handler's exception */
        }
        errno = err;
        return PyErr_SetFromErrnoWithFilename(PyExc_OSError, "/dev/tty");
    }
    self->fd = fd;
    self->state = TERM_OPEN;
    return PyLong_FromLong(fd);
}

/* Restore the settings and close the terminal: one call, whatever ended the block. */
static PyObject *
QuietTerminal_exit(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    QuietTerminal *self = QuietTerminal_CAST(op);
    if (self->state != TERM_OPEN) {
        Py_RETURN_NONE;
    }
    int failed = terminal_restore(self, 1);
    if (failed != 0 && (nargs == 0 || args[0] == Py_None)) {
        /* Only when no other exception is on its way: that one says more. */
        errno = failed;
        return PyErr_SetFromErrnoWithFilename(PyExc_OSError, "/dev/tty");
    }
    Py_RETURN_NONE;
}

static PyObject *
QuietTerminal_get_closed(PyObject *op, void *Py_UNUSED(closure))
{
    QuietTerminal *self = QuietTerminal_CAST(op);
    return PyBool_FromLong(self->state != TERM_OPEN);
}

static PyMethodDef QuietTerminal_methods[] = {
    {"__enter__", QuietTerminal_enter, METH_NOARGS,
     "Open /dev/tty and turn echo off; the descriptor."},
    {"__exit__", (PyCFunction)(void (*)(void))QuietTerminal_exit, METH_FASTCALL,
     "Restore the terminal's settings and close it."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef QuietTerminal_getset[] = {
    {"closed", QuietTerminal_get_closed, NULL, "Whether the terminal is not open.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot QuietTerminal_slots[] = {
    {Py_tp_new, QuietTerminal_new},
    {Py_tp_dealloc, QuietTerminal_dealloc},
    {Py_tp_methods, QuietTerminal_methods},
    {Py_tp_getset, QuietTerminal_getset},
    {Py_tp_doc, "The controlling terminal with echo off: `with QuietTerminal() as fd:`."},
    {0, NULL},
};

static PyType_Spec QuietTerminal_spec = {
    .name = "pkeyguard._terminal.QuietTerminal",
    .basicsize = sizeof(QuietTerminal),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = QuietTerminal_slots,
};

static int
terminal_exec(PyObject *module)
{
    PyObject *type = PyType_FromModuleAndSpec(module, &QuietTerminal_spec, NULL);
    if (type == NULL) {
        return -1;
    }
    int rc = PyModule_AddObjectRef(module, "QuietTerminal", type);
    Py_DECREF(type);
    return rc;
}

static PyModuleDef_Slot terminal_slots[] = {
    {Py_mod_exec, terminal_exec},
    {0, NULL},
};

static struct PyModuleDef terminal_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "pkeyguard._terminal",
    .m_doc = "The controlling terminal with echo off, changed and restored in single C calls.",
    .m_size = 0,
    .m_slots = terminal_slots,
};

PyMODINIT_FUNC
PyInit__terminal(void)
{
    return PyModuleDef_Init(&terminal_module);
}
