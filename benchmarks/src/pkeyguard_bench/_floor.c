/*
 * pkeyguard_bench._floor: the raw memory calls and native floor loops of the benchmark
 * (python -m pkeyguard_bench).
 *
 * Unsafe by design: the functions take raw addresses and trust them.  This is why they live
 * in the benchmark's own distribution (pkeyguard-bench) and not in pkeyguard, which exposes
 * no raw-address primitive.  Each timing loop runs entirely in C and times itself with
 * clock_gettime(CLOCK_MONOTONIC), so the figures carry no interpreter overhead.  The count
 * comes last, so that the benchmark calls each loop as fn(*fixtures, n):
 *
 *   mprotect_pairs(addr, length, first, second, n) -> ns     n x (mprotect first; second)
 *   rdpkru_loop(n) -> ns                                      n x RDPKRU
 *   wrpkru_pairs(pkey, n) -> ns    n x what a guard's enter+exit does to PKRU:
 *                                  (RDPKRU, WRPKRU open) then (RDPKRU, WRPKRU restore)
 *   mprotect_cycle(addrs, length, n) -> ns
 *                                  n x what a virtual key's miss does to pages: park the
 *                                  next of k regions (PROT_NONE), open this one (RW)
 *   busy_writer(addr, length, flag_addr) -> sweeps
 *                                  write one byte per cache line of [addr, addr+length)
 *                                  over and over, without the GIL, until *(int *)flag_addr
 *                                  becomes non-zero
 *
 * and the plain calls the benchmark needs around them:
 *
 *   cpuid_flags() -> (pku, ospke)      CPUID.7.0:ECX bits 3 and 4
 *   mmap_anon(length, prot) -> addr    a private anonymous mapping
 *   munmap(addr, length)
 *   mprotect(addr, length, prot)       one call, argument parsing as a typical C extension
 *                                      does it (the "Python calls mprotect" alternative)
 *   touch_pages(addr, length, value)   write one byte per page (fault the pages in)
 *
 * RDPKRU/WRPKRU raise SIGILL unless the OS enabled PKU (CPUID OSPKE), so the PKRU loops
 * check OSPKE themselves; the benchmark also calls them only on the pku backend.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/*
 * RDPKRU/WRPKRU and the CPUID bits, the same instructions and constraints as pkeyguard's
 * src/pkeyguard/_pkru.h (a copy, so that this distribution builds on its own, from an sdist
 * too; tests/test_bench.py checks that the two stay the same where both are present).
 */
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define PKRU_X86 1
#else
#define PKRU_X86 0
#endif

#if PKRU_X86
static inline uint32_t
pkru_read(void)
{
    uint32_t eax, edx;
    /* RDPKRU is 0f 01 ee (spelt as bytes for old assemblers); it needs ECX = 0. */
    __asm__ volatile(".byte 0x0f,0x01,0xee" : "=a"(eax), "=d"(edx) : "c"(0) : "memory");
    return eax;
}

static inline void
pkru_write(uint32_t value)
{
    /* WRPKRU is 0f 01 ef; it needs ECX = EDX = 0.  The "memory" clobber keeps the
     * compiler from moving loads and stores of protected memory across the switch. */
    __asm__ volatile(".byte 0x0f,0x01,0xef" : : "a"(value), "c"(0), "d"(0) : "memory");
}
#endif

/* CPUID.(EAX=7,ECX=0):ECX bit 3 is PKU (the CPU has it), bit 4 OSPKE (the OS enabled it). */
static inline void
pkru_cpuid(int *pku, int *ospke)
{
    *pku = 0;
    *ospke = 0;
#if PKRU_X86
    unsigned eax, ebx, ecx, edx;
    if (__get_cpuid_max(0, NULL) >= 7) {
        __cpuid_count(7, 0, eax, ebx, ecx, edx);
        *pku = (ecx >> 3) & 1;
        *ospke = (ecx >> 4) & 1;
    }
#endif
}

static uint64_t
now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static PyObject *
raise_errno(int err, const char *call)
{
    PyObject *exc = PyObject_CallFunction(PyExc_OSError, "is", err, strerror(err));
    if (exc == NULL) {
        return NULL;
    }
    /* The message names the call: "[Errno 22] Invalid argument (from mprotect)". */
    PyObject *msg = PyUnicode_FromFormat("%s (from %s)", strerror(err), call);
    if (msg == NULL || PyObject_SetAttrString(exc, "strerror", msg) < 0) {
        Py_XDECREF(msg);
        Py_DECREF(exc);
        return NULL;
    }
    Py_DECREF(msg);
    PyErr_SetObject(PyExc_OSError, exc);
    Py_DECREF(exc);
    return NULL;
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
fl_cpuid_flags(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    int pku, ospke;
    pkru_cpuid(&pku, &ospke);
    return Py_BuildValue("(OO)", pku ? Py_True : Py_False, ospke ? Py_True : Py_False);
}

static PyObject *
fl_mmap_anon(PyObject *Py_UNUSED(m), PyObject *args)
{
    unsigned long long len;
    int prot;
    if (!PyArg_ParseTuple(args, "Ki:mmap_anon", &len, &prot)) {
        return NULL;
    }
    void *p = mmap(NULL, (size_t)len, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        return raise_errno(errno, "mmap");
    }
    return PyLong_FromUnsignedLongLong((unsigned long long)(uintptr_t)p);
}

static PyObject *
fl_munmap(PyObject *Py_UNUSED(m), PyObject *args)
{
    unsigned long long addr, len;
    if (!PyArg_ParseTuple(args, "KK:munmap", &addr, &len)) {
        return NULL;
    }
    if (munmap((void *)(uintptr_t)addr, (size_t)len) != 0) {
        return raise_errno(errno, "munmap");
    }
    Py_RETURN_NONE;
}

static PyObject *
fl_mprotect(PyObject *Py_UNUSED(m), PyObject *args)
{
    unsigned long long addr, len;
    int prot;
    if (!PyArg_ParseTuple(args, "KKi:mprotect", &addr, &len, &prot)) {
        return NULL;
    }
    if (mprotect((void *)(uintptr_t)addr, (size_t)len, prot) != 0) {
        return raise_errno(errno, "mprotect");
    }
    Py_RETURN_NONE;
}

static PyObject *
fl_mprotect_pairs(PyObject *Py_UNUSED(m), PyObject *args)
{
    unsigned long long addr, len;
    Py_ssize_t n;
    int first, second;
    if (!PyArg_ParseTuple(args, "KKiin:mprotect_pairs", &addr, &len, &first, &second, &n)) {
        return NULL;
    }
    if (check_count(n) < 0) {
        return NULL;
    }
    void *p = (void *)(uintptr_t)addr;
    uint64_t t0 = now_ns();
    for (Py_ssize_t i = 0; i < n; i++) {
        if (mprotect(p, (size_t)len, first) != 0 || mprotect(p, (size_t)len, second) != 0) {
            return raise_errno(errno, "mprotect");
        }
    }
    uint64_t t1 = now_ns();
    return PyLong_FromUnsignedLongLong((unsigned long long)(t1 - t0));
}

/* The system calls of a virtual key's misses, as an LRU cycle over k regions makes them:
 * step i parks region (i+1) % k (PROT_NONE) and opens region i % k (read-write).  The
 * regions start and end read-write (the first park and the final reopen are not timed). */
static PyObject *
fl_mprotect_cycle(PyObject *Py_UNUSED(m), PyObject *args)
{
    PyObject *seq;
    unsigned long long len;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "OKn:mprotect_cycle", &seq, &len, &n)) {
        return NULL;
    }
    if (check_count(n) < 0) {
        return NULL;
    }
    PyObject *fast = PySequence_Fast(seq, "mprotect_cycle: addresses must be a sequence");
    if (fast == NULL) {
        return NULL;
    }
    Py_ssize_t k = PySequence_Fast_GET_SIZE(fast);
    if (k < 2 || k > 64) {
        Py_DECREF(fast);
        PyErr_SetString(PyExc_ValueError, "mprotect_cycle: 2 to 64 addresses");
        return NULL;
    }
    void *addr[64];
    for (Py_ssize_t i = 0; i < k; i++) {
        unsigned long long a = PyLong_AsUnsignedLongLong(PySequence_Fast_GET_ITEM(fast, i));
        if (a == (unsigned long long)-1 && PyErr_Occurred()) {
            Py_DECREF(fast);
            return NULL;
        }
        addr[i] = (void *)(uintptr_t)a;
    }
    Py_DECREF(fast);
    const int rw = PROT_READ | PROT_WRITE;
    if (mprotect(addr[0], (size_t)len, PROT_NONE) != 0) {
        return raise_errno(errno, "mprotect");
    }
    uint64_t t0 = now_ns();
    for (Py_ssize_t i = 0; i < n; i++) {
        if (mprotect(addr[(i + 1) % k], (size_t)len, PROT_NONE) != 0 ||
            mprotect(addr[i % k], (size_t)len, rw) != 0) {
            return raise_errno(errno, "mprotect");
        }
    }
    uint64_t t1 = now_ns();
    if (mprotect(addr[n % k], (size_t)len, rw) != 0) {
        return raise_errno(errno, "mprotect");
    }
    return PyLong_FromUnsignedLongLong((unsigned long long)(t1 - t0));
}

static PyObject *
fl_rdpkru_loop(PyObject *Py_UNUSED(m), PyObject *arg)
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
    return NULL; /* not reached: require_ospke() refused */
#endif
}

static PyObject *
fl_wrpkru_pairs(PyObject *Py_UNUSED(m), PyObject *args)
{
    int pkey;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "in:wrpkru_pairs", &pkey, &n)) {
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
    return NULL; /* not reached: require_ospke() refused */
#endif
}

static PyObject *
fl_touch_pages(PyObject *Py_UNUSED(m), PyObject *args)
{
    unsigned long long addr, len;
    int value;
    if (!PyArg_ParseTuple(args, "KKi:touch_pages", &addr, &len, &value)) {
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
fl_busy_writer(PyObject *Py_UNUSED(m), PyObject *args)
{
    unsigned long long addr, len, flag_addr;
    if (!PyArg_ParseTuple(args, "KKK:busy_writer", &addr, &len, &flag_addr)) {
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

static PyMethodDef fl_methods[] = {
    {"cpuid_flags", fl_cpuid_flags, METH_NOARGS,
     "cpuid_flags() -> (pku, ospke): CPUID.7.0:ECX bits 3 and 4."},
    {"mmap_anon", fl_mmap_anon, METH_VARARGS,
     "mmap_anon(length, prot) -> address of a private anonymous mapping."},
    {"munmap", fl_munmap, METH_VARARGS, "munmap(address, length)."},
    {"mprotect", fl_mprotect, METH_VARARGS, "mprotect(address, length, prot)."},
    {"mprotect_pairs", fl_mprotect_pairs, METH_VARARGS,
     "mprotect_pairs(address, length, first, second, n) -> ns for n pairs."},
    {"mprotect_cycle", fl_mprotect_cycle, METH_VARARGS,
     "mprotect_cycle(addresses, length, n) -> ns for n misses' system calls: park the next "
     "region, open this one."},
    {"rdpkru_loop", fl_rdpkru_loop, METH_O, "rdpkru_loop(n) -> ns for n RDPKRU."},
    {"wrpkru_pairs", fl_wrpkru_pairs, METH_VARARGS,
     "wrpkru_pairs(pkey, n) -> ns for n guard-like (RDPKRU+WRPKRU) x 2 pairs."},
    {"touch_pages", fl_touch_pages, METH_VARARGS,
     "touch_pages(address, length, value): write one byte per page."},
    {"busy_writer", fl_busy_writer, METH_VARARGS,
     "busy_writer(address, length, flag_address) -> sweeps; writes without the GIL until "
     "the int at flag_address is non-zero."},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot fl_slots[] = {
#ifdef Py_mod_gil
    /* Declared, not needed for safety (the module keeps no state): the benchmark measures a
     * library that runs with the GIL, so a free-threaded interpreter keeps it on here too. */
    {Py_mod_gil, Py_MOD_GIL_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef fl_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "pkeyguard_bench._floor",
    .m_doc = "Raw memory calls and native floors for pkeyguard's benchmark "
             "(raw addresses, no checks).",
    .m_size = 0,
    .m_methods = fl_methods,
    .m_slots = fl_slots,
};

PyMODINIT_FUNC
PyInit__floor(void)
{
    return PyModuleDef_Init(&fl_module);
}
