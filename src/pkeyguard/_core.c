/*
 * pkeyguard._core: the part of pkeyguard that must be native.
 *
 *   - thin wrappers for mmap/munmap/mprotect/madvise/mlock and the pkey syscalls
 *     (one syscall each; policy lives in Python);
 *   - CPUID feature probe, RDPKRU/WRPKRU;
 *   - Key:   per-key bookkeeping the hot path needs (hardware key number, or the list of
 *            regions an mprotect-backend "key" must re-protect on every switch);
 *   - Guard: the context manager that switches this thread's rights for one key;
 *   - View:  typed/bytes access to a region, valid only while its guard is active on
 *            this thread; exports the buffer protocol with an export counter.
 *
 * Each thread keeps a stack of its active guards (a C11 thread-local pointer), so exits
 * can be checked for LIFO order and thread ownership without touching Python state.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <pythread.h>

#include <errno.h>
#include <signal.h>
#include <ucontext.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "_pkru.h"

#ifndef SYS_pkey_mprotect
#define SYS_pkey_mprotect 329
#endif
#ifndef SYS_pkey_alloc
#define SYS_pkey_alloc 330
#endif
#ifndef SYS_pkey_free
#define SYS_pkey_free 331
#endif

/* Modes of a Key: how a Guard applies rights. */
enum { MODE_NOP = 0, MODE_PKU = 1, MODE_MPROTECT = 2 };
/* Rights levels, ordered from least to most permissive (the mprotect backend grants the
 * union of all threads' current rights, i.e. the maximum level). */
enum { LEVEL_NONE = 0, LEVEL_READ = 1, LEVEL_WRITE = 2 };
/* PKRU bits per key, as pkey_alloc(2) takes them. */
#define PKRU_AD 1u /* access disable */
#define PKRU_WD 2u /* write disable */

static const unsigned level_to_bits[3] = {PKRU_AD, PKRU_WD, 0u};

static int pku_enabled = 0; /* set once Python has proved OSPKE and a working pkey_alloc */

/* Exception classes, installed by pkeyguard._errors at import (so C raises the same
 * classes users catch).  Until then, RuntimeError/ValueError stand in. */
static PyObject *ErrGuardState, *ErrGuardOrder, *ErrGuardThread, *ErrView, *ErrAccess,
    *ErrPkuUnavailable, *ErrMprotect, *ErrRegion;

static PyObject *
err_or(PyObject *cls, PyObject *fallback)
{
    return cls ? cls : fallback;
}

/* Raise ErrMprotect(errno, "<strerror> (originated from <syscall>)"), psutil-style. */
static PyObject *
raise_errno(int err, const char *syscall_name)
{
    PyObject *cls = err_or(ErrMprotect, PyExc_OSError);
    PyObject *args = Py_BuildValue("(is)", err, strerror(err));
    if (args == NULL) {
        return NULL;
    }
    PyObject *exc = PyObject_Call(cls, args, NULL);
    Py_DECREF(args);
    if (exc == NULL) {
        return NULL;
    }
    PyObject *name = PyUnicode_FromString(syscall_name);
    if (name == NULL || PyObject_SetAttrString(exc, "syscall", name) < 0) {
        Py_XDECREF(name);
        Py_DECREF(exc);
        return NULL;
    }
    Py_DECREF(name);
    PyErr_SetObject(cls, exc);
    Py_DECREF(exc);
    return NULL;
}

/* ------------------------------------------------------------------------------------ */
/* RDPKRU / WRPKRU                                                                      */

/* pkru_read / pkru_write (the asm) and pkru_cpuid live in _pkru.h, shared with
 * _benchfloor.c. */

static int
require_pku(void)
{
    if (!pku_enabled) {
        PyErr_SetString(err_or(ErrPkuUnavailable, PyExc_RuntimeError),
                        "RDPKRU/WRPKRU are not enabled: this process runs on the mprotect "
                        "backend (the CPU or kernel lacks PKU); see pkeyguard.backend()");
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------------------ */
/* Key                                                                                  */

typedef struct {
    uintptr_t addr;
    size_t len;
    int prot; /* the region's own page rights; the key's rights are intersected with it */
} RegionEnt;

typedef struct {
    PyObject_HEAD
    int pkey;             /* hardware key (MODE_PKU), else a logical number */
    int mode;
    int base_level;       /* rights when no guard is active (mprotect) */
    int effective_level;  /* rights currently applied to the pages (mprotect) */
    Py_ssize_t counts[3]; /* per level: threads whose innermost guard on this key has it */
    Py_ssize_t active;    /* active guards on this key, all threads */
    RegionEnt *regions;
    Py_ssize_t nregions, cap;
    int closed;
} KeyObject;

static PyTypeObject Key_Type;

static int
prot_for_level(int prot, int level)
{
    switch (level) {
    case LEVEL_NONE:
        /* pkeys never restrict instruction fetch; keep PROT_EXEC to mirror that. */
        return prot & PROT_EXEC;
    case LEVEL_READ:
        return prot & ~PROT_WRITE;
    default:
        return prot;
    }
}

static int
key_apply_level(KeyObject *k, int level)
{
    for (Py_ssize_t i = 0; i < k->nregions; i++) {
        RegionEnt *r = &k->regions[i];
        if (mprotect((void *)r->addr, r->len, prot_for_level(r->prot, level)) != 0) {
            int err = errno;
            /* Put back what was already changed, so the pages agree with one level. */
            for (Py_ssize_t j = 0; j < i; j++) {
                RegionEnt *q = &k->regions[j];
                (void)mprotect((void *)q->addr, q->len,
                               prot_for_level(q->prot, k->effective_level));
            }
            raise_errno(err, "mprotect");
            return -1;
        }
    }
    k->effective_level = level;
    return 0;
}

static int
key_wanted_level(KeyObject *k)
{
    for (int lv = LEVEL_WRITE; lv >= LEVEL_NONE; lv--) {
        if (k->counts[lv] > 0) {
            return lv;
        }
    }
    return k->base_level;
}

static PyObject *
Key_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"pkey", "mode", "base_level", NULL};
    int pkey, mode, base_level;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iii", kwlist, &pkey, &mode, &base_level)) {
        return NULL;
    }
    if (mode < MODE_NOP || mode > MODE_MPROTECT) {
        PyErr_Format(PyExc_ValueError, "unknown key mode %d", mode);
        return NULL;
    }
    if (base_level < LEVEL_NONE || base_level > LEVEL_WRITE) {
        PyErr_Format(PyExc_ValueError, "unknown rights level %d", base_level);
        return NULL;
    }
    if (mode == MODE_PKU && require_pku() < 0) {
        return NULL;
    }
    KeyObject *k = (KeyObject *)type->tp_alloc(type, 0);
    if (k == NULL) {
        return NULL;
    }
    k->pkey = pkey;
    k->mode = mode;
    k->base_level = base_level;
    k->effective_level = base_level;
    return (PyObject *)k;
}

static void
Key_dealloc(KeyObject *k)
{
    PyMem_Free(k->regions);
    Py_TYPE(k)->tp_free((PyObject *)k);
}

static int
key_check_open(KeyObject *k)
{
    if (k->closed) {
        PyErr_SetString(err_or(ErrGuardState, PyExc_ValueError), "the key is closed");
        return -1;
    }
    return 0;
}

/* add_region(addr, len, prot): the mprotect backend re-protects these pages on every
 * switch; they are protected to prot ∩ the key's current rights right away. */
static PyObject *
Key_add_region(KeyObject *k, PyObject *args)
{
    unsigned long long addr, len;
    int prot;
    if (!PyArg_ParseTuple(args, "KKi", &addr, &len, &prot)) {
        return NULL;
    }
    if (key_check_open(k) < 0) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < k->nregions; i++) {
        if (k->regions[i].addr == (uintptr_t)addr) {
            PyErr_SetString(PyExc_ValueError, "region already added to this key");
            return NULL;
        }
    }
    if (k->mode == MODE_MPROTECT &&
        mprotect((void *)(uintptr_t)addr, (size_t)len, prot_for_level(prot, k->effective_level)) != 0) {
        return raise_errno(errno, "mprotect");
    }
    if (k->nregions == k->cap) {
        Py_ssize_t cap = k->cap ? k->cap * 2 : 4;
        RegionEnt *p = PyMem_Realloc(k->regions, (size_t)cap * sizeof(RegionEnt));
        if (p == NULL) {
            return PyErr_NoMemory();
        }
        k->regions = p;
        k->cap = cap;
    }
    k->regions[k->nregions++] = (RegionEnt){(uintptr_t)addr, (size_t)len, prot};
    Py_RETURN_NONE;
}

/* The Python layer checks first, for a clear message; this is the check that holds.  A guard
 * is entered only with the GIL held and none of these calls releases it, so no guard on the
 * key can become active between this test and the change its caller makes. */
static int
key_refuse_while_active(KeyObject *k, const char *action)
{
    if (k->active > 0) {
        PyErr_Format(err_or(ErrRegion, PyExc_RuntimeError),
                     "cannot %s: %zd guard(s) on key %d are still active; leave their "
                     "'with' blocks first",
                     action, k->active, k->pkey);
        return -1;
    }
    return 0;
}

/* remove_region(addr, restore): forget a region; restore=True gives it back its own page
 * rights (skip when it is about to be unmapped).  Refused while a guard is active. */
static PyObject *
Key_remove_region(KeyObject *k, PyObject *args)
{
    unsigned long long addr;
    int restore;
    if (!PyArg_ParseTuple(args, "Kp", &addr, &restore)) {
        return NULL;
    }
    if (key_refuse_while_active(k, "detach a region from its key") < 0) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < k->nregions; i++) {
        RegionEnt r = k->regions[i];
        if (r.addr == (uintptr_t)addr) {
            if (restore && k->mode == MODE_MPROTECT &&
                mprotect((void *)r.addr, r.len, r.prot) != 0) {
                return raise_errno(errno, "mprotect");
            }
            memmove(&k->regions[i], &k->regions[i + 1],
                    (size_t)(k->nregions - i - 1) * sizeof(RegionEnt));
            k->nregions--;
            Py_RETURN_NONE;
        }
    }
    PyErr_SetString(PyExc_ValueError, "region is not associated with this key");
    return NULL;
}

/* set_region_prot(addr, prot): the region's own page rights changed (RegionGuard.protect).
 * Refused while a guard is active: views taken inside it were checked against the old
 * rights. */
static PyObject *
Key_set_region_prot(KeyObject *k, PyObject *args)
{
    unsigned long long addr;
    int prot;
    if (!PyArg_ParseTuple(args, "Ki", &addr, &prot)) {
        return NULL;
    }
    if (key_refuse_while_active(k, "change the page rights of a region") < 0) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < k->nregions; i++) {
        RegionEnt *r = &k->regions[i];
        if (r->addr == (uintptr_t)addr) {
            int applied = k->mode == MODE_MPROTECT ? prot_for_level(prot, k->effective_level) : prot;
            if (mprotect((void *)r->addr, r->len, applied) != 0) {
                return raise_errno(errno, "mprotect");
            }
            r->prot = prot;
            Py_RETURN_NONE;
        }
    }
    PyErr_SetString(PyExc_ValueError, "region is not associated with this key");
    return NULL;
}

static PyObject *
Key_close(KeyObject *k, PyObject *Py_UNUSED(ignored))
{
    if (k->active > 0) {
        PyErr_Format(err_or(ErrGuardState, PyExc_RuntimeError),
                     "cannot close key %d: %zd guard(s) on it are still active; leave their "
                     "'with' blocks first",
                     k->pkey, k->active);
        return NULL;
    }
    k->closed = 1;
    Py_RETURN_NONE;
}

static PyObject *
Key_get_regions(KeyObject *k, void *Py_UNUSED(closure))
{
    PyObject *out = PyList_New(k->nregions);
    if (out == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < k->nregions; i++) {
        PyObject *t = Py_BuildValue("(KKi)", (unsigned long long)k->regions[i].addr,
                                    (unsigned long long)k->regions[i].len, k->regions[i].prot);
        if (t == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, t);
    }
    return out;
}

static PyObject *
Key_repr(KeyObject *k)
{
    static const char *modes[] = {"nop", "pku", "mprotect"};
    return PyUnicode_FromFormat("<_core.Key %d mode=%s active=%zd regions=%zd%s>", k->pkey,
                                modes[k->mode], k->active, k->nregions,
                                k->closed ? " closed" : "");
}

static PyMethodDef Key_methods[] = {
    {"add_region", (PyCFunction)Key_add_region, METH_VARARGS, NULL},
    {"remove_region", (PyCFunction)Key_remove_region, METH_VARARGS, NULL},
    {"set_region_prot", (PyCFunction)Key_set_region_prot, METH_VARARGS, NULL},
    {"close", (PyCFunction)Key_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Key_members[] = {
    {"pkey", T_INT, offsetof(KeyObject, pkey), READONLY, NULL},
    {"mode", T_INT, offsetof(KeyObject, mode), READONLY, NULL},
    {"base_level", T_INT, offsetof(KeyObject, base_level), READONLY, NULL},
    {"effective_level", T_INT, offsetof(KeyObject, effective_level), READONLY, NULL},
    {"active", T_PYSSIZET, offsetof(KeyObject, active), READONLY, NULL},
    {"closed", T_BOOL, offsetof(KeyObject, closed), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef Key_getset[] = {
    {"regions", (getter)Key_get_regions, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject Key_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pkeyguard._core.Key",
    .tp_basicsize = sizeof(KeyObject),
    .tp_dealloc = (destructor)Key_dealloc,
    .tp_repr = (reprfunc)Key_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Per-key state for the guard hot path (internal).",
    .tp_methods = Key_methods,
    .tp_members = Key_members,
    .tp_getset = Key_getset,
    .tp_new = Key_new,
};

/* ------------------------------------------------------------------------------------ */
/* Guard                                                                                */

typedef struct GuardObject {
    PyObject_HEAD
    KeyObject *key;            /* strong */
    PyObject *owner;           /* strong: the associated region (for views), or None */
    int level;                 /* rights this guard grants while active */
    int active;
    int abandoned;             /* popped by an out-of-order exit of an outer guard */
    int saved_bits;            /* MODE_PKU: this key's PKRU bits before entry */
    int saved_level;           /* MODE_MPROTECT: previous innermost level, -1 if none */
    unsigned long thread;      /* owner thread while active */
    uint64_t generation;       /* bumped on each entry; views remember it */
    Py_ssize_t exports;        /* live buffer exports of this guard's views */
    struct GuardObject *prev;  /* next-outer guard of the same thread (the stack owns refs) */
} GuardObject;

static PyTypeObject Guard_Type;
/* initial-exec: one %fs-relative load instead of a __tls_get_addr call per access; the
 * extension needs only a pointer of the static TLS surplus glibc reserves for dlopen. */
static _Thread_local GuardObject *tls_top __attribute__((tls_model("initial-exec"))) = NULL;

static PyObject *
Guard_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"key", "level", "owner", NULL};
    PyObject *key, *owner = Py_None;
    int level;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!i|O", kwlist, &Key_Type, &key, &level,
                                     &owner)) {
        return NULL;
    }
    if (level < LEVEL_NONE || level > LEVEL_WRITE) {
        PyErr_Format(PyExc_ValueError, "unknown rights level %d", level);
        return NULL;
    }
    GuardObject *g = (GuardObject *)type->tp_alloc(type, 0);
    if (g == NULL) {
        return NULL;
    }
    Py_INCREF(key);
    g->key = (KeyObject *)key;
    Py_INCREF(owner);
    g->owner = owner;
    g->level = level;
    g->saved_level = -1;
    return (PyObject *)g;
}

static int
Guard_traverse(GuardObject *g, visitproc visit, void *arg)
{
    Py_VISIT(g->owner);
    return 0;
}

static int
Guard_clear(GuardObject *g)
{
    Py_CLEAR(g->owner);
    return 0;
}

static void
Guard_dealloc(GuardObject *g)
{
    /* Python subclasses go through subtype_dealloc, which drops the type's reference. */
    PyObject_GC_UnTrack(g);
    Guard_clear(g);
    Py_CLEAR(g->key);
    Py_TYPE(g)->tp_free((PyObject *)g);
}

/* Apply this guard's rights for its key on entry. */
static int
guard_apply(GuardObject *g)
{
    KeyObject *k = g->key;
    if (k->mode == MODE_PKU) {
        unsigned shift = 2u * (unsigned)k->pkey;
        uint32_t pkru = pkru_read();
        uint32_t want = (pkru & ~(3u << shift)) | (level_to_bits[g->level] << shift);
        g->saved_bits = (int)((pkru >> shift) & 3u);
        if (want != pkru) {
            pkru_write(want);
        }
        return 0;
    }
    if (k->mode == MODE_MPROTECT) {
        GuardObject *outer = tls_top;
        while (outer != NULL && outer->key != k) {
            outer = outer->prev;
        }
        g->saved_level = outer ? outer->level : -1;
        if (outer) {
            k->counts[outer->level]--;
        }
        k->counts[g->level]++;
        int want = key_wanted_level(k);
        if (want != k->effective_level && key_apply_level(k, want) < 0) {
            k->counts[g->level]--;
            if (outer) {
                k->counts[outer->level]++;
            }
            return -1;
        }
    }
    return 0;
}

/* Undo this guard's rights on exit: restore exactly the bits/level it changed. */
static int
guard_restore(GuardObject *g)
{
    KeyObject *k = g->key;
    if (k->mode == MODE_PKU) {
        unsigned shift = 2u * (unsigned)k->pkey;
        uint32_t pkru = pkru_read();
        uint32_t want = (pkru & ~(3u << shift)) | ((uint32_t)g->saved_bits << shift);
        if (want != pkru) {
            pkru_write(want);
        }
        return 0;
    }
    if (k->mode == MODE_MPROTECT) {
        k->counts[g->level]--;
        if (g->saved_level >= 0) {
            k->counts[g->saved_level]++;
        }
        int want = key_wanted_level(k);
        if (want != k->effective_level) {
            return key_apply_level(k, want);
        }
    }
    return 0;
}

static PyObject *
Guard_enter(GuardObject *g, PyObject *Py_UNUSED(ignored))
{
    if (g->active) {
        PyErr_Format(err_or(ErrGuardState, PyExc_RuntimeError),
                     "%R is already active (entered on thread %lu); a guard is entered once "
                     "at a time: call set_access_rights() again for a second one",
                     (PyObject *)g, g->thread);
        return NULL;
    }
    if (g->key->closed) {
        PyErr_Format(err_or(ErrGuardState, PyExc_RuntimeError),
                     "cannot enter %R: its key is closed", (PyObject *)g);
        return NULL;
    }
    if (guard_apply(g) < 0) {
        return NULL;
    }
    g->thread = PyThread_get_thread_ident();
    g->active = 1;
    g->abandoned = 0;
    g->generation++;
    g->key->active++;
    g->prev = tls_top;
    Py_INCREF(g); /* the thread's stack holds a reference while active */
    tls_top = g;
    Py_INCREF(g);
    return (PyObject *)g;
}

/* Pop g (the top of this thread's stack) and restore its rights. */
static int
guard_pop(GuardObject *g)
{
    int rc = guard_restore(g);
    tls_top = g->prev;
    g->prev = NULL;
    g->active = 0;
    g->key->active--;
    Py_DECREF(g);
    return rc;
}

static PyObject *
Guard_exit(GuardObject *g, PyObject *const *Py_UNUSED(args), Py_ssize_t Py_UNUSED(nargs))
{
    if (!g->active) {
        if (g->abandoned) {
            g->abandoned = 0;
            PyErr_Format(err_or(ErrGuardOrder, PyExc_RuntimeError),
                         "%R was already exited: an outer guard left its 'with' block first "
                         "and restored the rights this guard had changed",
                         (PyObject *)g);
        }
        else {
            PyErr_Format(err_or(ErrGuardState, PyExc_RuntimeError),
                         "%R is not active: __exit__ without a matching __enter__",
                         (PyObject *)g);
        }
        return NULL;
    }
    unsigned long me = PyThread_get_thread_ident();
    if (g->thread != me) {
        PyErr_Format(err_or(ErrGuardThread, PyExc_RuntimeError),
                     "%R was entered on thread %lu and cannot be exited on thread %lu: PKRU "
                     "is per thread, so a guard must be left by the thread that entered it",
                     (PyObject *)g, g->thread, me);
        return NULL;
    }
    if (tls_top != g) {
        /* Out of order: unwind every guard above g and g itself, so this thread's rights are
         * exactly what they were before g was entered, then report it. */
        GuardObject *top = tls_top;
        Py_INCREF(top);
        int rc = 0;
        while (tls_top != g) {
            GuardObject *inner = tls_top;
            inner->abandoned = 1;
            rc |= guard_pop(inner);
        }
        rc |= guard_pop(g);
        if (rc < 0) {
            PyErr_Clear();
        }
        PyErr_Format(err_or(ErrGuardOrder, PyExc_RuntimeError),
                     "guards exited out of order: %R was exited while %R, entered after it, "
                     "was still active. Both are now exited and this thread's rights are as "
                     "before %R. Common causes: a generator or coroutine suspended inside a "
                     "'with' block, manual __enter__/__exit__ calls, an ExitStack closed in the "
                     "wrong order.",
                     (PyObject *)g, (PyObject *)top, (PyObject *)g);
        Py_DECREF(top);
        return NULL;
    }
    Py_ssize_t exports = g->exports;
    if (guard_pop(g) < 0) {
        return NULL;
    }
    if (exports > 0) {
        PyErr_Format(err_or(ErrView, PyExc_BufferError),
                     "%zd buffer export(s) of a view (a memoryview or slice of it) outlived %R; "
                     "the rights were restored, so touching them now faults. Release them "
                     "before the block ends ('with memoryview(view) as m:')",
                     exports, (PyObject *)g);
        return NULL;
    }
    Py_RETURN_FALSE;
}

static PyObject *
Guard_get_thread(GuardObject *g, void *Py_UNUSED(closure))
{
    if (!g->active) {
        Py_RETURN_NONE;
    }
    return PyLong_FromUnsignedLong(g->thread);
}

static PyObject *
Guard_repr(GuardObject *g)
{
    static const char *names[] = {"NoAccess", "ReadOnly", "ReadWrite"};
    return PyUnicode_FromFormat("<%s key=%d rights=%s %s>", Py_TYPE(g)->tp_name, g->key->pkey,
                                names[g->level], g->active ? "active" : "inactive");
}

static PyMethodDef Guard_methods[] = {
    {NULL, NULL, 0, NULL},
};

/* __enter__/__exit__ without CPython's bound-method objects: those are GC-tracked, so
 * each 'with' paid an allocation plus GC track/untrack twice.  Here the type's slots are
 * descriptors whose __get__ returns a small untracked callable holding a strong reference
 * to the guard (no cycle: the guard never points back), recycled through a freelist. */
typedef struct BoundSlotObject {
    PyObject_HEAD
    GuardObject *guard; /* strong */
    int which;          /* 0: __enter__, 1: __exit__ */
    vectorcallfunc vectorcall;
    struct BoundSlotObject *next_free;
} BoundSlotObject;

#define BOUNDSLOT_FREELIST_MAX 16
static BoundSlotObject *boundslot_free = NULL; /* protected by the GIL */
static int boundslot_nfree = 0;

static PyObject *
BoundSlot_vectorcall(BoundSlotObject *b, PyObject *const *args, size_t nargsf,
                     PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0) {
        PyErr_SetString(PyExc_TypeError, "guard methods take no keyword arguments");
        return NULL;
    }
    if (b->which == 0) {
        if (nargs != 0) {
            PyErr_SetString(PyExc_TypeError, "__enter__() takes no arguments");
            return NULL;
        }
        return Guard_enter(b->guard, NULL);
    }
    return Guard_exit(b->guard, args, nargs);
}

static void
BoundSlot_dealloc(BoundSlotObject *b)
{
    Py_CLEAR(b->guard);
    if (boundslot_nfree < BOUNDSLOT_FREELIST_MAX) {
        b->next_free = boundslot_free;
        boundslot_free = b;
        boundslot_nfree++;
        return;
    }
    PyObject_Free(b);
}

static PyObject *
BoundSlot_repr(BoundSlotObject *b)
{
    return PyUnicode_FromFormat("<%s of %R>", b->which ? "__exit__" : "__enter__",
                                (PyObject *)b->guard);
}

static PyTypeObject BoundSlot_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pkeyguard._core.guard_method",
    .tp_basicsize = sizeof(BoundSlotObject),
    .tp_dealloc = (destructor)BoundSlot_dealloc,
    .tp_repr = (reprfunc)BoundSlot_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(BoundSlotObject, vectorcall),
    .tp_call = PyVectorcall_Call,
};

typedef struct {
    PyObject_HEAD
    int which;
    vectorcallfunc vectorcall;
} SlotDescrObject;

static PyObject *
SlotDescr_get(SlotDescrObject *d, PyObject *obj, PyObject *Py_UNUSED(type))
{
    if (obj == NULL || obj == Py_None) {
        Py_INCREF(d);
        return (PyObject *)d;
    }
    if (!PyObject_TypeCheck(obj, &Guard_Type)) {
        PyErr_Format(PyExc_TypeError, "guard method bound to a non-guard %.200s",
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    BoundSlotObject *b = boundslot_free;
    if (b != NULL) {
        boundslot_free = b->next_free;
        boundslot_nfree--;
        (void)PyObject_Init((PyObject *)b, &BoundSlot_Type);
    }
    else {
        b = PyObject_New(BoundSlotObject, &BoundSlot_Type);
        if (b == NULL) {
            return NULL;
        }
    }
    Py_INCREF(obj);
    b->guard = (GuardObject *)obj;
    b->which = d->which;
    b->vectorcall = (vectorcallfunc)BoundSlot_vectorcall;
    b->next_free = NULL;
    return (PyObject *)b;
}

static PyObject *
SlotDescr_vectorcall(SlotDescrObject *d, PyObject *const *args, size_t nargsf,
                     PyObject *Py_UNUSED(kwnames))
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs < 1 || !PyObject_TypeCheck(args[0], &Guard_Type)) {
        PyErr_SetString(PyExc_TypeError, "unbound guard method needs a guard");
        return NULL;
    }
    GuardObject *g = (GuardObject *)args[0];
    if (d->which == 0) {
        if (nargs != 1) {
            PyErr_SetString(PyExc_TypeError, "__enter__() takes no arguments");
            return NULL;
        }
        return Guard_enter(g, NULL);
    }
    return Guard_exit(g, args + 1, nargs - 1);
}

static PyTypeObject SlotDescr_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pkeyguard._core.guard_slot",
    .tp_basicsize = sizeof(SlotDescrObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(SlotDescrObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_descr_get = (descrgetfunc)SlotDescr_get,
};

static int
guard_install_slots(void)
{
    static const char *names[2] = {"__enter__", "__exit__"};
    if (PyType_Ready(&BoundSlot_Type) < 0 || PyType_Ready(&SlotDescr_Type) < 0) {
        return -1;
    }
    for (int i = 0; i < 2; i++) {
        SlotDescrObject *d = PyObject_New(SlotDescrObject, &SlotDescr_Type);
        if (d == NULL) {
            return -1;
        }
        d->which = i;
        d->vectorcall = (vectorcallfunc)SlotDescr_vectorcall;
        int rc = PyDict_SetItemString(Guard_Type.tp_dict, names[i], (PyObject *)d);
        Py_DECREF(d);
        if (rc < 0) {
            return -1;
        }
    }
    PyType_Modified(&Guard_Type);
    return 0;
}

static PyMemberDef Guard_members[] = {
    {"key", T_OBJECT, offsetof(GuardObject, key), READONLY, NULL},
    {"owner", T_OBJECT, offsetof(GuardObject, owner), READONLY, NULL},
    {"level", T_INT, offsetof(GuardObject, level), READONLY, NULL},
    {"active", T_BOOL, offsetof(GuardObject, active), READONLY, NULL},
    {"exports", T_PYSSIZET, offsetof(GuardObject, exports), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef Guard_getset[] = {
    {"thread", (getter)Guard_get_thread, NULL, "ident of the thread that holds it, or None",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject Guard_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pkeyguard._core.Guard",
    .tp_basicsize = sizeof(GuardObject),
    .tp_dealloc = (destructor)Guard_dealloc,
    .tp_repr = (reprfunc)Guard_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Switches this thread's rights for one key while active (internal base).",
    .tp_traverse = (traverseproc)Guard_traverse,
    .tp_clear = (inquiry)Guard_clear,
    .tp_methods = Guard_methods,
    .tp_members = Guard_members,
    .tp_getset = Guard_getset,
    .tp_new = Guard_new,
};

/* ------------------------------------------------------------------------------------ */
/* View                                                                                 */

typedef struct {
    PyObject_HEAD
    GuardObject *guard; /* strong */
    uint64_t generation;
    char *addr;
    Py_ssize_t size;
    char fmt; /* struct code of a scalar, or 's' for a byte view */
    int writable;
    Py_ssize_t exports;
} ViewObject;

static PyTypeObject View_Type;

static Py_ssize_t
fmt_size(char fmt)
{
    switch (fmt) {
    case 'b': case 'B': case '?': case 'c': return 1;
    case 'h': case 'H': return 2;
    case 'i': case 'I': case 'f': return 4;
    case 'l': case 'L': case 'q': case 'Q': case 'd': case 'P': return 8;
    default: return -1;
    }
}

static int
view_check(ViewObject *v, int write)
{
    GuardObject *g = v->guard;
    if (!g->active || g->generation != v->generation) {
        PyErr_SetString(err_or(ErrView, PyExc_ValueError),
                        "view used after its guard exited: views are valid only inside the "
                        "'with' block that created them");
        return -1;
    }
    if (g->thread != PyThread_get_thread_ident()) {
        PyErr_Format(err_or(ErrView, PyExc_ValueError),
                     "view used from another thread: its guard belongs to thread %lu, and "
                     "rights are per thread",
                     g->thread);
        return -1;
    }
    if (write && !v->writable) {
        PyErr_SetString(err_or(ErrAccess, PyExc_PermissionError),
                        "this view is read-only: use mut_ref_guard() under a ReadWrite guard");
        return -1;
    }
    if (tls_top != g) {
        /* A guard entered later on this thread for the same key rules this thread's rights
         * now (e.g. a ReadOnly block nested in a ReadWrite one): honour it, instead of
         * letting the access fault. */
        GuardObject *inner = tls_top;
        while (inner != g && inner->key != g->key) {
            inner = inner->prev;
        }
        if (inner != g && inner->level < (write ? LEVEL_WRITE : LEVEL_READ)) {
            PyErr_Format(err_or(ErrAccess, PyExc_PermissionError),
                         "%s through this view is not allowed now: %R, entered after the view's "
                         "guard, restricts this thread's rights to the key",
                         write ? "writing" : "reading", (PyObject *)inner);
            return -1;
        }
    }
    return 0;
}

static PyObject *
View_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"guard", "address", "size", "format", "writable", NULL};
    PyObject *guard;
    unsigned long long addr;
    Py_ssize_t size;
    int fmt, writable;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!KnCp", kwlist, &Guard_Type, &guard, &addr,
                                     &size, &fmt, &writable)) {
        return NULL;
    }
    GuardObject *g = (GuardObject *)guard;
    if (size <= 0) {
        PyErr_SetString(PyExc_ValueError, "view size must be positive");
        return NULL;
    }
    if (fmt != 's' && fmt_size((char)fmt) != size) {
        PyErr_Format(PyExc_ValueError, "format %c does not fit a %zd-byte value", fmt, size);
        return NULL;
    }
    if (!g->active) {
        PyErr_SetString(err_or(ErrView, PyExc_ValueError),
                        "the guard is not active: take views inside its 'with' block");
        return NULL;
    }
    if (g->thread != PyThread_get_thread_ident()) {
        PyErr_SetString(err_or(ErrView, PyExc_ValueError),
                        "the guard belongs to another thread");
        return NULL;
    }
    if (writable && g->level != LEVEL_WRITE) {
        PyErr_SetString(err_or(ErrAccess, PyExc_PermissionError),
                        "a write view needs a ReadWrite guard");
        return NULL;
    }
    if (g->level == LEVEL_NONE) {
        PyErr_SetString(err_or(ErrAccess, PyExc_PermissionError),
                        "a NoAccess guard grants no view");
        return NULL;
    }
    ViewObject *v = (ViewObject *)type->tp_alloc(type, 0);
    if (v == NULL) {
        return NULL;
    }
    Py_INCREF(g);
    v->guard = g;
    v->generation = g->generation;
    v->addr = (char *)(uintptr_t)addr;
    v->size = size;
    v->fmt = (char)fmt;
    v->writable = writable;
    return (PyObject *)v;
}

static void
View_dealloc(ViewObject *v)
{
    Py_CLEAR(v->guard);
    Py_TYPE(v)->tp_free((PyObject *)v);
}

static PyObject *
View_get_value(ViewObject *v, void *Py_UNUSED(closure))
{
    if (view_check(v, 0) < 0) {
        return NULL;
    }
    char *p = v->addr;
    switch (v->fmt) {
    case 'b': return PyLong_FromLong(*(volatile int8_t *)p);
    case 'B': return PyLong_FromLong(*(volatile uint8_t *)p);
    case 's': return PyBytes_FromStringAndSize(p, v->size);
    case '?': return PyBool_FromLong(*(volatile uint8_t *)p != 0);
    case 'c': return PyBytes_FromStringAndSize(p, 1);
    case 'h': return PyLong_FromLong(*(volatile int16_t *)p);
    case 'H': return PyLong_FromLong(*(volatile uint16_t *)p);
    case 'i': return PyLong_FromLong(*(volatile int32_t *)p);
    case 'I': return PyLong_FromUnsignedLong(*(volatile uint32_t *)p);
    case 'l': case 'q': return PyLong_FromLongLong(*(volatile int64_t *)p);
    case 'L': case 'Q': case 'P': return PyLong_FromUnsignedLongLong(*(volatile uint64_t *)p);
    case 'f': return PyFloat_FromDouble(*(volatile float *)p);
    case 'd': return PyFloat_FromDouble(*(volatile double *)p);
    }
    PyErr_SetString(PyExc_TypeError, "unsupported view format");
    return NULL;
}

static int
store_int(char *p, PyObject *obj, int bytes, int is_signed)
{
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "an int is required, not %.200s", Py_TYPE(obj)->tp_name);
        return -1;
    }
    if (is_signed) {
        long long x = PyLong_AsLongLong(obj);
        if (x == -1 && PyErr_Occurred()) {
            return -1;
        }
        long long lo = bytes == 8 ? INT64_MIN : -(1LL << (bytes * 8 - 1));
        long long hi = bytes == 8 ? INT64_MAX : (1LL << (bytes * 8 - 1)) - 1;
        if (x < lo || x > hi) {
            goto overflow;
        }
        switch (bytes) {
        case 1: *(volatile int8_t *)p = (int8_t)x; break;
        case 2: *(volatile int16_t *)p = (int16_t)x; break;
        case 4: *(volatile int32_t *)p = (int32_t)x; break;
        default: *(volatile int64_t *)p = (int64_t)x; break;
        }
        return 0;
    }
    unsigned long long x = PyLong_AsUnsignedLongLong(obj);
    if (x == (unsigned long long)-1 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            goto overflow;
        }
        return -1;
    }
    if (bytes < 8 && x >> (bytes * 8)) {
        goto overflow;
    }
    switch (bytes) {
    case 1: *(volatile uint8_t *)p = (uint8_t)x; break;
    case 2: *(volatile uint16_t *)p = (uint16_t)x; break;
    case 4: *(volatile uint32_t *)p = (uint32_t)x; break;
    default: *(volatile uint64_t *)p = (uint64_t)x; break;
    }
    return 0;
overflow:
    PyErr_Format(PyExc_OverflowError, "%R does not fit a %s %d-byte integer", obj,
                 is_signed ? "signed" : "unsigned", bytes);
    return -1;
}

static int
View_set_value(ViewObject *v, PyObject *value, void *Py_UNUSED(closure))
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete a view's value");
        return -1;
    }
    if (view_check(v, 1) < 0) {
        return -1;
    }
    char *p = v->addr;
    switch (v->fmt) {
    case 'b': return store_int(p, value, 1, 1);
    case 'B': return store_int(p, value, 1, 0);
    case '?': {
        int t = PyObject_IsTrue(value);
        if (t < 0) {
            return -1;
        }
        *(volatile uint8_t *)p = (uint8_t)t;
        return 0;
    }
    case 'c':
        if (!PyBytes_Check(value) || PyBytes_GET_SIZE(value) != 1) {
            PyErr_SetString(PyExc_TypeError, "a single byte (bytes of length 1) is required");
            return -1;
        }
        *p = PyBytes_AS_STRING(value)[0];
        return 0;
    case 'h': return store_int(p, value, 2, 1);
    case 'H': return store_int(p, value, 2, 0);
    case 'i': return store_int(p, value, 4, 1);
    case 'I': return store_int(p, value, 4, 0);
    case 'l': case 'q': return store_int(p, value, 8, 1);
    case 'L': case 'Q': case 'P': return store_int(p, value, 8, 0);
    case 'f': case 'd': {
        double d = PyFloat_AsDouble(value);
        if (d == -1.0 && PyErr_Occurred()) {
            return -1;
        }
        if (v->fmt == 'f') {
            *(volatile float *)p = (float)d;
        }
        else {
            *(volatile double *)p = d;
        }
        return 0;
    }
    }
    /* Byte views: whole-content assignment from a bytes-like object of the same size. */
    Py_buffer src;
    if (PyObject_GetBuffer(value, &src, PyBUF_SIMPLE) < 0) {
        return -1;
    }
    if (src.len != v->size) {
        PyErr_Format(PyExc_ValueError, "need exactly %zd bytes, got %zd", v->size, src.len);
        PyBuffer_Release(&src);
        return -1;
    }
    memmove(p, src.buf, (size_t)src.len);
    PyBuffer_Release(&src);
    return 0;
}

static Py_ssize_t
View_length(ViewObject *v)
{
    return v->size;
}

static int
view_slice(ViewObject *v, PyObject *item, Py_ssize_t *start, Py_ssize_t *len)
{
    if (PyIndex_Check(item)) {
        Py_ssize_t i = PyNumber_AsSsize_t(item, PyExc_IndexError);
        if (i == -1 && PyErr_Occurred()) {
            return -1;
        }
        if (i < 0) {
            i += v->size;
        }
        if (i < 0 || i >= v->size) {
            PyErr_SetString(PyExc_IndexError, "view index out of range");
            return -1;
        }
        *start = i;
        *len = -1; /* single item */
        return 0;
    }
    if (PySlice_Check(item)) {
        Py_ssize_t stop, step;
        if (PySlice_Unpack(item, start, &stop, &step) < 0) {
            return -1;
        }
        if (step != 1) {
            PyErr_SetString(PyExc_ValueError, "views take contiguous slices only (step 1)");
            return -1;
        }
        *len = PySlice_AdjustIndices(v->size, start, &stop, step);
        return 0;
    }
    PyErr_Format(PyExc_TypeError, "view indices must be integers or slices, not %.200s",
                 Py_TYPE(item)->tp_name);
    return -1;
}

static PyObject *
View_subscript(ViewObject *v, PyObject *item)
{
    Py_ssize_t start, len;
    if (view_check(v, 0) < 0 || view_slice(v, item, &start, &len) < 0) {
        return NULL;
    }
    if (len < 0) {
        return PyLong_FromLong(((volatile uint8_t *)v->addr)[start]);
    }
    return PyBytes_FromStringAndSize(v->addr + start, len);
}

static int
View_ass_subscript(ViewObject *v, PyObject *item, PyObject *value)
{
    Py_ssize_t start, len;
    if (value == NULL) {
        PyErr_SetString(PyExc_TypeError, "cannot delete view items");
        return -1;
    }
    if (view_check(v, 1) < 0 || view_slice(v, item, &start, &len) < 0) {
        return -1;
    }
    if (len < 0) {
        return store_int(v->addr + start, value, 1, 0);
    }
    Py_buffer src;
    if (PyObject_GetBuffer(value, &src, PyBUF_SIMPLE) < 0) {
        return -1;
    }
    if (src.len != len) {
        PyErr_Format(PyExc_ValueError, "slice assignment must keep the size: %zd != %zd",
                     src.len, len);
        PyBuffer_Release(&src);
        return -1;
    }
    memmove(v->addr + start, src.buf, (size_t)len);
    PyBuffer_Release(&src);
    return 0;
}

static int
View_getbuffer(ViewObject *v, Py_buffer *view, int flags)
{
    if (view_check(v, 0) < 0) {
        view->obj = NULL;
        return -1;
    }
    if ((flags & PyBUF_WRITABLE) && !v->writable) {
        PyErr_SetString(PyExc_BufferError,
                        "read-only view: a writable buffer needs mut_ref_guard()");
        view->obj = NULL;
        return -1;
    }
    if (PyBuffer_FillInfo(view, (PyObject *)v, v->addr, v->size, !v->writable, flags) < 0) {
        return -1;
    }
    v->exports++;
    v->guard->exports++;
    return 0;
}

static void
View_releasebuffer(ViewObject *v, Py_buffer *Py_UNUSED(view))
{
    v->exports--;
    v->guard->exports--;
}

static PyObject *
View_tobytes(ViewObject *v, PyObject *Py_UNUSED(ignored))
{
    if (view_check(v, 0) < 0) {
        return NULL;
    }
    return PyBytes_FromStringAndSize(v->addr, v->size);
}

static PyObject *
View_check(ViewObject *v, PyObject *write)
{
    int w = PyObject_IsTrue(write);
    if (w < 0 || view_check(v, w) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
View_get_valid(ViewObject *v, void *Py_UNUSED(closure))
{
    GuardObject *g = v->guard;
    return PyBool_FromLong(g->active && g->generation == v->generation &&
                           g->thread == PyThread_get_thread_ident());
}

static PyObject *
View_repr(ViewObject *v)
{
    return PyUnicode_FromFormat("<%s %zd bytes format=%c %s%s>", Py_TYPE(v)->tp_name, v->size,
                                v->fmt, v->writable ? "read-write" : "read-only",
                                (v->guard->active && v->guard->generation == v->generation)
                                    ? "" : " (expired)");
}

static PyMethodDef View_methods[] = {
    {"tobytes", (PyCFunction)View_tobytes, METH_NOARGS, "Copy the bytes out."},
    {"check", (PyCFunction)View_check, METH_O, "Raise unless usable (write=True: writable)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef View_getset[] = {
    {"value", (getter)View_get_value, (setter)View_set_value, "the value", NULL},
    {"valid", (getter)View_get_valid, NULL, "usable now, on this thread", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef View_members[] = {
    {"writable", T_BOOL, offsetof(ViewObject, writable), READONLY, NULL},
    {"guard", T_OBJECT, offsetof(ViewObject, guard), READONLY, NULL},
    {"exports", T_PYSSIZET, offsetof(ViewObject, exports), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyMappingMethods View_as_mapping = {
    .mp_length = (lenfunc)View_length,
    .mp_subscript = (binaryfunc)View_subscript,
    .mp_ass_subscript = (objobjargproc)View_ass_subscript,
};

static PySequenceMethods View_as_sequence = {
    .sq_length = (lenfunc)View_length,
};

static PyBufferProcs View_as_buffer = {
    .bf_getbuffer = (getbufferproc)View_getbuffer,
    .bf_releasebuffer = (releasebufferproc)View_releasebuffer,
};

static PyTypeObject View_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pkeyguard._core.View",
    .tp_basicsize = sizeof(ViewObject),
    .tp_dealloc = (destructor)View_dealloc,
    .tp_repr = (reprfunc)View_repr,
    .tp_as_sequence = &View_as_sequence,
    .tp_as_mapping = &View_as_mapping,
    .tp_as_buffer = &View_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Access to a region, valid only while its guard is active on this thread.",
    .tp_methods = View_methods,
    .tp_members = View_members,
    .tp_getset = View_getset,
    .tp_new = View_new,
};

/* ------------------------------------------------------------------------------------ */
/* Module functions                                                                     */

static PyObject *
core_cpuid_flags(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    int pku, ospke;
    pkru_cpuid(&pku, &ospke);
    return Py_BuildValue("(OO)", pku ? Py_True : Py_False, ospke ? Py_True : Py_False);
}

/* Only called by Python after OSPKE was seen and pkey_alloc worked: before that, RDPKRU
 * would raise SIGILL. */
static PyObject *
core_enable_pku(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    int pku, ospke;
    pkru_cpuid(&pku, &ospke);
    if (ospke) {
        pku_enabled = 1;
        Py_RETURN_TRUE;
    }
    PyErr_SetString(err_or(ErrPkuUnavailable, PyExc_RuntimeError),
                    "cannot enable RDPKRU/WRPKRU: CPUID reports OSPKE off");
    return NULL;
}

static PyObject *
core_pku_enabled(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(pku_enabled);
}

static PyObject *
core_rdpkru(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    if (require_pku() < 0) {
        return NULL;
    }
    return PyLong_FromUnsignedLong(pkru_read());
}

static PyObject *
core_wrpkru(PyObject *Py_UNUSED(m), PyObject *arg)
{
    unsigned long v = PyLong_AsUnsignedLong(arg);
    if (v == (unsigned long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    if (v > 0xffffffffUL) {
        PyErr_SetString(PyExc_OverflowError, "PKRU is a 32-bit register");
        return NULL;
    }
    if (require_pku() < 0) {
        return NULL;
    }
    pkru_write((uint32_t)v);
    Py_RETURN_NONE;
}

static PyObject *
core_pkey_alloc(PyObject *Py_UNUSED(m), PyObject *args)
{
    unsigned int flags, rights;
    if (!PyArg_ParseTuple(args, "II", &flags, &rights)) {
        return NULL;
    }
    long k = syscall(SYS_pkey_alloc, flags, rights);
    if (k < 0) {
        return raise_errno(errno, "pkey_alloc");
    }
    return PyLong_FromLong(k);
}

static PyObject *
core_pkey_free(PyObject *Py_UNUSED(m), PyObject *arg)
{
    long k = PyLong_AsLong(arg);
    if (k == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (syscall(SYS_pkey_free, k) != 0) {
        return raise_errno(errno, "pkey_free");
    }
    Py_RETURN_NONE;
}

static PyObject *
core_pkey_mprotect(PyObject *Py_UNUSED(m), PyObject *args)
{
    unsigned long long addr, len;
    int prot, pkey;
    if (!PyArg_ParseTuple(args, "KKii", &addr, &len, &prot, &pkey)) {
        return NULL;
    }
    if (syscall(SYS_pkey_mprotect, (uintptr_t)addr, (size_t)len, prot, pkey) != 0) {
        return raise_errno(errno, "pkey_mprotect");
    }
    Py_RETURN_NONE;
}

static PyObject *
core_mprotect(PyObject *Py_UNUSED(m), PyObject *args)
{
    unsigned long long addr, len;
    int prot;
    if (!PyArg_ParseTuple(args, "KKi", &addr, &len, &prot)) {
        return NULL;
    }
    if (mprotect((void *)(uintptr_t)addr, (size_t)len, prot) != 0) {
        return raise_errno(errno, "mprotect");
    }
    Py_RETURN_NONE;
}

static PyObject *
core_mmap_anon(PyObject *Py_UNUSED(m), PyObject *args)
{
    unsigned long long len;
    int prot;
    if (!PyArg_ParseTuple(args, "Ki", &len, &prot)) {
        return NULL;
    }
    void *p = mmap(NULL, (size_t)len, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        return raise_errno(errno, "mmap");
    }
    return PyLong_FromUnsignedLongLong((unsigned long long)(uintptr_t)p);
}

static PyObject *
core_munmap(PyObject *Py_UNUSED(m), PyObject *args)
{
    unsigned long long addr, len;
    if (!PyArg_ParseTuple(args, "KK", &addr, &len)) {
        return NULL;
    }
    if (munmap((void *)(uintptr_t)addr, (size_t)len) != 0) {
        return raise_errno(errno, "munmap");
    }
    Py_RETURN_NONE;
}

static PyObject *
core_madvise(PyObject *Py_UNUSED(m), PyObject *args)
{
    unsigned long long addr, len;
    int advice;
    if (!PyArg_ParseTuple(args, "KKi", &addr, &len, &advice)) {
        return NULL;
    }
    if (madvise((void *)(uintptr_t)addr, (size_t)len, advice) != 0) {
        return raise_errno(errno, "madvise");
    }
    Py_RETURN_NONE;
}

static PyObject *
core_mlock(PyObject *Py_UNUSED(m), PyObject *args)
{
    unsigned long long addr, len;
    int lock;
    if (!PyArg_ParseTuple(args, "KKp", &addr, &len, &lock)) {
        return NULL;
    }
    /* The raw syscalls rather than libc's wrappers: ASan intercepts mlock()/munlock() and
     * makes them no-ops, which would hide the locking from the sanitizer run's tests. */
    long rc = syscall(lock ? SYS_mlock : SYS_munlock, (void *)(uintptr_t)addr, (size_t)len);
    if (rc != 0) {
        return raise_errno(errno, lock ? "mlock" : "munlock");
    }
    Py_RETURN_NONE;
}

static PyObject *
core_thread_guards(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    /* This thread's active guards, innermost first. */
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        return NULL;
    }
    for (GuardObject *g = tls_top; g != NULL; g = g->prev) {
        if (PyList_Append(out, (PyObject *)g) < 0) {
            Py_DECREF(out);
            return NULL;
        }
    }
    return out;
}


/* ------------------------------------------------------------------------------------ */
/* Fault reports                                                                        */
/*
 * An opt-in SIGSEGV handler that explains protection faults on pkeyguard regions, then
 * hands the signal to the handler installed before it (faulthandler, for the Python
 * traceback) or to the default action.  Everything it touches is a fixed-size static table
 * and write(2): it is async-signal-safe.  The table is written under the GIL; a handler
 * racing an update may miss a name, never crash.
 */

#define FAULT_MAX_REGIONS 1024
#define FAULT_NAME_LEN 64

typedef struct {
    volatile uintptr_t addr; /* 0: free slot */
    volatile size_t len;
    volatile int pkey;       /* -1: not associated */
    char name[FAULT_NAME_LEN];
} FaultRegion;

static FaultRegion fault_regions[FAULT_MAX_REGIONS];
static struct sigaction fault_prev;
static int fault_installed = 0;
static unsigned fault_pkru_offset = 0; /* PKRU's offset in the XSAVE area, 0 if unknown */

static void
fault_put(const char *s)
{
    size_t n = strlen(s);
    while (n > 0) {
        ssize_t w = write(2, s, n);
        if (w <= 0) {
            return;
        }
        s += w;
        n -= (size_t)w;
    }
}

static void
fault_put_uint(unsigned long long v, int base)
{
    char buf[32];
    int i = (int)sizeof(buf) - 1;
    buf[i] = '\0';
    do {
        buf[--i] = "0123456789abcdef"[v % (unsigned)base];
        v /= (unsigned)base;
    } while (v && i > 0);
    if (base == 16) {
        buf[--i] = 'x';
        buf[--i] = '0';
    }
    fault_put(&buf[i]);
}

static const char *
fault_rights_name(unsigned bits)
{
    if (bits & PKRU_AD) {
        return "no-access";
    }
    if (bits & PKRU_WD) {
        return "read-only";
    }
    return "read-write";
}

static void
fault_handler(int sig, siginfo_t *si, void *ctx)
{
    int saved_errno = errno;
    uintptr_t a = (uintptr_t)si->si_addr;
    const FaultRegion *hit = NULL;
    for (int i = 0; i < FAULT_MAX_REGIONS; i++) {
        uintptr_t start = fault_regions[i].addr;
        if (start && a >= start && a < start + fault_regions[i].len) {
            hit = &fault_regions[i];
            break;
        }
    }
#ifdef SEGV_PKUERR
    int pkuerr = si->si_code == SEGV_PKUERR;
#else
    int pkuerr = 0;
#endif
    if (pkuerr || (hit && si->si_code == SEGV_ACCERR)) {
        ucontext_t *uc = (ucontext_t *)ctx;
        int is_write = -1;
        uint32_t pkru = 0;
        int have_pkru = 0;
#if defined(__x86_64__)
        if (uc != NULL) {
            is_write = (uc->uc_mcontext.gregs[REG_ERR] & 2) != 0;
            if (fault_pkru_offset && uc->uc_mcontext.fpregs != NULL) {
                /* The interrupted thread's PKRU, saved by the kernel in the XSAVE area. */
                pkru = *(uint32_t *)((char *)uc->uc_mcontext.fpregs + fault_pkru_offset);
                have_pkru = 1;
            }
        }
#endif
        int key = -1;
#ifdef SEGV_PKUERR
        if (pkuerr) {
            key = (int)si->si_pkey;
        }
#endif
        if (key < 0 && hit) {
            key = hit->pkey;
        }
        fault_put("\npkeyguard: protection fault: ");
        fault_put(is_write == 1 ? "write" : is_write == 0 ? "read" : "access");
        fault_put(" at ");
        fault_put_uint(a, 16);
        fault_put(pkuerr ? " (SEGV_PKUERR: denied by the thread's protection-key rights)\n"
                         : " (SEGV_ACCERR: denied by the page rights)\n");
        if (hit) {
            fault_put("  region: '");
            fault_put(hit->name);
            fault_put("' [");
            fault_put_uint(hit->addr, 16);
            fault_put(", ");
            fault_put_uint(hit->addr + hit->len, 16);
            fault_put(") offset ");
            fault_put_uint(a - hit->addr, 10);
            fault_put("\n");
        }
        else {
            fault_put("  region: not a pkeyguard region\n");
        }
        if (key >= 0) {
            fault_put("  key: ");
            fault_put_uint((unsigned)key, 10);
            fault_put("\n");
            if (have_pkru && key < 16) {
                fault_put("  thread rights for the key: ");
                fault_put(fault_rights_name((pkru >> (2 * key)) & 3u));
                fault_put(" (PKRU ");
                fault_put_uint(pkru, 16);
                fault_put(")\n");
            }
        }
        fault_put("  thread: ");
        fault_put_uint((unsigned long long)syscall(SYS_gettid), 10);
        fault_put("\n  hint: access it inside 'with associated.set_access_rights(...)' on this "
                  "thread; see the Python traceback below\n");
    }
    errno = saved_errno;
    /* Chain: faulthandler (or whoever came before) prints the Python traceback and ends
     * the process; with nobody before us, restore the default action and return, so the
     * access runs again and the kernel ends the process as it would have. */
    if (fault_prev.sa_flags & SA_SIGINFO) {
        if (fault_prev.sa_sigaction != NULL) {
            fault_prev.sa_sigaction(sig, si, ctx);
        }
    }
    else if (fault_prev.sa_handler != SIG_DFL && fault_prev.sa_handler != SIG_IGN) {
        fault_prev.sa_handler(sig);
    }
    signal(sig, SIG_DFL);
}

static PyObject *
core_faults_install(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    if (fault_installed) {
        Py_RETURN_FALSE;
    }
#if PKRU_X86
    unsigned eax, ebx, ecx, edx;
    if (__get_cpuid_max(0, NULL) >= 0xd) {
        __cpuid_count(0xd, 9, eax, ebx, ecx, edx);
        fault_pkru_offset = eax >= 4 ? ebx : 0; /* EAX: size of the PKRU component */
    }
#endif
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = fault_handler;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGSEGV, &sa, &fault_prev) != 0) {
        return raise_errno(errno, "sigaction");
    }
    fault_installed = 1;
    Py_RETURN_TRUE;
}

static PyObject *
core_faults_uninstall(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    if (!fault_installed) {
        Py_RETURN_FALSE;
    }
    if (sigaction(SIGSEGV, &fault_prev, NULL) != 0) {
        return raise_errno(errno, "sigaction");
    }
    fault_installed = 0;
    Py_RETURN_TRUE;
}

static PyObject *
core_faults_installed(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(fault_installed);
}

/* fault_register(addr, len, pkey, name): remember a region for fault reports (or update
 * it, when addr is already known).  Returns False when the table is full. */
static PyObject *
core_fault_register(PyObject *Py_UNUSED(m), PyObject *args)
{
    unsigned long long addr, len;
    int pkey;
    const char *name;
    if (!PyArg_ParseTuple(args, "KKis", &addr, &len, &pkey, &name)) {
        return NULL;
    }
    FaultRegion *slot = NULL;
    for (int i = 0; i < FAULT_MAX_REGIONS; i++) {
        if (fault_regions[i].addr == (uintptr_t)addr) {
            slot = &fault_regions[i];
            break;
        }
        if (slot == NULL && fault_regions[i].addr == 0) {
            slot = &fault_regions[i];
        }
    }
    if (slot == NULL) {
        Py_RETURN_FALSE;
    }
    slot->addr = 0; /* invisible to the handler while it changes */
    slot->len = (size_t)len;
    slot->pkey = pkey;
    strncpy(slot->name, name, FAULT_NAME_LEN - 1);
    slot->name[FAULT_NAME_LEN - 1] = '\0';
    __atomic_store_n(&slot->addr, (uintptr_t)addr, __ATOMIC_RELEASE);
    Py_RETURN_TRUE;
}

static PyObject *
core_fault_unregister(PyObject *Py_UNUSED(m), PyObject *arg)
{
    unsigned long long addr = PyLong_AsUnsignedLongLong(arg);
    if (addr == (unsigned long long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    for (int i = 0; i < FAULT_MAX_REGIONS; i++) {
        if (fault_regions[i].addr == (uintptr_t)addr) {
            __atomic_store_n(&fault_regions[i].addr, (uintptr_t)0, __ATOMIC_RELEASE);
        }
    }
    Py_RETURN_NONE;
}

static PyObject *
core_set_errors(PyObject *Py_UNUSED(m), PyObject *args)
{
    PyObject *e[8];
    if (!PyArg_ParseTuple(args, "OOOOOOOO", &e[0], &e[1], &e[2], &e[3], &e[4], &e[5], &e[6],
                          &e[7])) {
        return NULL;
    }
    PyObject **slots[8] = {&ErrGuardState, &ErrGuardOrder, &ErrGuardThread, &ErrView,
                           &ErrAccess, &ErrPkuUnavailable, &ErrMprotect, &ErrRegion};
    for (int i = 0; i < 8; i++) {
        if (!PyExceptionClass_Check(e[i])) {
            PyErr_SetString(PyExc_TypeError, "exception classes expected");
            return NULL;
        }
    }
    for (int i = 0; i < 8; i++) {
        Py_INCREF(e[i]);
        Py_XSETREF(*slots[i], e[i]);
    }
    Py_RETURN_NONE;
}

static PyMethodDef core_methods[] = {
    {"cpuid_flags", core_cpuid_flags, METH_NOARGS, "(pku, ospke) from CPUID leaf 7."},
    {"enable_pku", core_enable_pku, METH_NOARGS, "Allow RDPKRU/WRPKRU (internal)."},
    {"pku_enabled", core_pku_enabled, METH_NOARGS, NULL},
    {"rdpkru", core_rdpkru, METH_NOARGS, "This thread's PKRU."},
    {"wrpkru", core_wrpkru, METH_O, "Write this thread's PKRU."},
    {"pkey_alloc", core_pkey_alloc, METH_VARARGS, NULL},
    {"pkey_free", core_pkey_free, METH_O, NULL},
    {"pkey_mprotect", core_pkey_mprotect, METH_VARARGS, NULL},
    {"mprotect", core_mprotect, METH_VARARGS, NULL},
    {"mmap_anon", core_mmap_anon, METH_VARARGS, NULL},
    {"munmap", core_munmap, METH_VARARGS, NULL},
    {"madvise", core_madvise, METH_VARARGS, NULL},
    {"mlock", core_mlock, METH_VARARGS, NULL},
    {"thread_guards", core_thread_guards, METH_NOARGS, NULL},
    {"_set_errors", core_set_errors, METH_VARARGS, NULL},
    {"faults_install", core_faults_install, METH_NOARGS, "Install the fault reporter."},
    {"faults_uninstall", core_faults_uninstall, METH_NOARGS, NULL},
    {"faults_installed", core_faults_installed, METH_NOARGS, NULL},
    {"fault_register", core_fault_register, METH_VARARGS, NULL},
    {"fault_unregister", core_fault_unregister, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "pkeyguard._core",
    .m_doc = "Native core of pkeyguard: pkey syscalls, PKRU access, guards and views.",
    .m_size = -1,
    .m_methods = core_methods,
};

PyMODINIT_FUNC
PyInit__core(void)
{
    if (PyType_Ready(&Key_Type) < 0 || PyType_Ready(&Guard_Type) < 0 ||
        guard_install_slots() < 0 ||
        PyType_Ready(&View_Type) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&core_module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "Key", (PyObject *)&Key_Type) < 0 ||
        PyModule_AddObjectRef(m, "Guard", (PyObject *)&Guard_Type) < 0 ||
        PyModule_AddObjectRef(m, "View", (PyObject *)&View_Type) < 0 ||
        PyModule_AddIntConstant(m, "MODE_NOP", MODE_NOP) < 0 ||
        PyModule_AddIntConstant(m, "MODE_PKU", MODE_PKU) < 0 ||
        PyModule_AddIntConstant(m, "MODE_MPROTECT", MODE_MPROTECT) < 0 ||
        PyModule_AddIntConstant(m, "PAGE_SIZE", sysconf(_SC_PAGESIZE)) < 0 ||
        PyModule_AddIntConstant(m, "PROT_NONE", PROT_NONE) < 0 ||
        PyModule_AddIntConstant(m, "PROT_READ", PROT_READ) < 0 ||
        PyModule_AddIntConstant(m, "PROT_WRITE", PROT_WRITE) < 0 ||
        PyModule_AddIntConstant(m, "PROT_EXEC", PROT_EXEC) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
