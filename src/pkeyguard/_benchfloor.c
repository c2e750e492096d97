/*
 * pkeyguard._benchfloor: native loops for the benchmark's floors (python -m pkeyguard bench).
 *
 * Internal and unsafe by design: the functions take raw addresses and trust them.  Each
 * timing loop runs entirely in C and times itself with clock_gettime(CLOCK_MONOTONIC),
 * so the figures carry no interpreter overhead:
 *
 *   mprotect_pairs(addr, length, n[, first, second]) -> ns   n x (mprotect first; second)
 *   rdpkru_loop(n) -> ns                                      n x RDPKRU
 *   wrpkru_pairs(pkey, n) -> ns    n x what a guard's enter+exit does to PKRU:
 *                                  (RDPKRU, WRPKRU open) then (RDPKRU, WRPKRU restore)
 *   touch_pages(addr, length, value)   write one byte per page (fault the pages in)
 *   busy_writer(addr, length, flag_addr) -> sweeps
 *                                  write one byte per cache line of [addr, addr+length)
 *                                  over and over, without the GIL, until *(int *)flag_addr
 *                                  becomes non-zero
 *
 * RDPKRU/WRPKRU raise SIGILL unless the OS enabled PKU (CPUID OSPKE), so the PKRU loops
 * check OSPKE themselves; the benchmark also calls them only when pkeyguard._core says
 * the pku backend is enabled.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "_pkru.h"

static uint64_t
now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* 0 when RDPKRU/WRPKRU may run (CPUID.7.0:ECX bit 4, OSPKE), else -1 with an error set. */
static int
require_ospke(void)
{
    int pku, ospke;
    pkru_cpuid(&pku, &ospke);
    if (ospke) {
        return 0;
    }
    PyErr_SetString(PyExc_RuntimeError,
                    "RDPKRU/WRPKRU are not enabled here (CPUID OSPKE is off): the PKRU floors "
                    "run only on the pku backend");
    return -1;
}

static int
check_count(Py_ssize_t n)
{
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "the iteration count must be >= 0");
        return -1;
    }
    return 0;
}

static PyObject *
bf_mprotect_pairs(PyObject *Py_UNUSED(m), PyObject *args)
{
    unsigned long long addr, len;
    Py_ssize_t n;
    int first = PROT_READ | PROT_WRITE, second = PROT_NONE;
    if (!PyArg_ParseTuple(args, "KKn|ii", &addr, &len, &n, &first, &second)) {
        return NULL;
    }
    if (check_count(n) < 0) {
        return NULL;
    }
    void *p = (void *)(uintptr_t)addr;
    uint64_t t0 = now_ns();
    for (Py_ssize_t i = 0; i < n; i++) {
        if (mprotect(p, (size_t)len, first) != 0 || mprotect(p, (size_t)len, second) != 0) {
            int err = errno;
            return PyErr_Format(PyExc_OSError, "%s (originated from mprotect)", strerror(err));
        }
    }
    uint64_t t1 = now_ns();
    return PyLong_FromUnsignedLongLong((unsigned long long)(t1 - t0));
}

static PyObject *
bf_rdpkru_loop(PyObject *Py_UNUSED(m), PyObject *arg)
{
    Py_ssize_t n = PyNumber_AsSsize_t(arg, PyExc_OverflowError);
    if ((n == -1 && PyErr_Occurred()) || check_count(n) < 0 || require_ospke() < 0) {
        return NULL;
    }
#if PKRU_X86
    volatile uint32_t sink = 0;
    uint64_t t0 = now_ns();
    for (Py_ssize_t i = 0; i < n; i++) {
        sink ^= pkru_read();
    }
    uint64_t t1 = now_ns();
    (void)sink;
    return PyLong_FromUnsignedLongLong((unsigned long long)(t1 - t0));
#else
    return NULL;
#endif
}

static PyObject *
bf_wrpkru_pairs(PyObject *Py_UNUSED(m), PyObject *args)
{
    int pkey;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "in", &pkey, &n)) {
        return NULL;
    }
    if (pkey < 1 || pkey > 15) {
        PyErr_Format(PyExc_ValueError, "pkey must be 1..15, got %d", pkey);
        return NULL;
    }
    if (check_count(n) < 0 || require_ospke() < 0) {
        return NULL;
    }
#if PKRU_X86
    unsigned shift = 2u * (unsigned)pkey;
    uint32_t mask = 3u << shift;
    uint32_t saved = pkru_read() & mask;
    /* "open": read-write, unless the key is read-write already, then access-disabled, so
     * that every WRPKRU really changes the register (as a guard's would). */
    uint32_t open = saved == 0 ? (1u << shift) : 0u;
    uint64_t t0 = now_ns();
    for (Py_ssize_t i = 0; i < n; i++) {
        uint32_t pkru = pkru_read();
        pkru_write((pkru & ~mask) | open);
        pkru = pkru_read();
        pkru_write((pkru & ~mask) | saved);
    }
    uint64_t t1 = now_ns();
    return PyLong_FromUnsignedLongLong((unsigned long long)(t1 - t0));
#else
    return NULL;
#endif
}

static PyObject *
bf_touch_pages(PyObject *Py_UNUSED(m), PyObject *args)
{
    unsigned long long addr, len;
    int value;
    if (!PyArg_ParseTuple(args, "KKi", &addr, &len, &value)) {
        return NULL;
    }
    long page = sysconf(_SC_PAGESIZE);
    volatile unsigned char *p = (volatile unsigned char *)(uintptr_t)addr;
    for (unsigned long long off = 0; off < len; off += (unsigned long long)page) {
        p[off] = (unsigned char)value;
    }
    Py_RETURN_NONE;
}

static PyObject *
bf_busy_writer(PyObject *Py_UNUSED(m), PyObject *args)
{
    unsigned long long addr, len, flag_addr;
    if (!PyArg_ParseTuple(args, "KKK", &addr, &len, &flag_addr)) {
        return NULL;
    }
    if (flag_addr == 0) {
        PyErr_SetString(PyExc_ValueError, "flag_addr must not be 0");
        return NULL;
    }
    volatile unsigned char *p = (volatile unsigned char *)(uintptr_t)addr;
    int *flag = (int *)(uintptr_t)flag_addr;
    unsigned long long sweeps = 0;
    unsigned char v = 0;
    Py_BEGIN_ALLOW_THREADS
    while (!__atomic_load_n(flag, __ATOMIC_ACQUIRE)) {
        v++;
        for (unsigned long long off = 0; off < len; off += 64u) {
            p[off] = v;
        }
        sweeps++;
    }
    Py_END_ALLOW_THREADS
    return PyLong_FromUnsignedLongLong(sweeps);
}

static PyMethodDef bf_methods[] = {
    {"mprotect_pairs", bf_mprotect_pairs, METH_VARARGS,
     "mprotect_pairs(addr, length, n, first=RW, second=NONE) -> ns for n pairs."},
    {"rdpkru_loop", bf_rdpkru_loop, METH_O, "rdpkru_loop(n) -> ns for n RDPKRU."},
    {"wrpkru_pairs", bf_wrpkru_pairs, METH_VARARGS,
     "wrpkru_pairs(pkey, n) -> ns for n guard-like (RDPKRU+WRPKRU) x 2 pairs."},
    {"touch_pages", bf_touch_pages, METH_VARARGS,
     "touch_pages(addr, length, value): write one byte per page."},
    {"busy_writer", bf_busy_writer, METH_VARARGS,
     "busy_writer(addr, length, flag_addr) -> sweeps; writes without the GIL until the "
     "int at flag_addr is non-zero."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef bf_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "pkeyguard._benchfloor",
    .m_doc = "Native floors for pkeyguard's benchmark (internal; raw addresses, no checks).",
    .m_size = -1,
    .m_methods = bf_methods,
};

PyMODINIT_FUNC
PyInit__benchfloor(void)
{
    return PyModule_Create(&bf_module);
}
