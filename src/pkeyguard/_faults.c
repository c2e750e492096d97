/*
 * pkeyguard fault reports: an opt-in SIGSEGV handler that explains protection faults on
 * pkeyguard regions, then hands the signal to the handler installed before it (faulthandler,
 * for the Python traceback) or to the default action.
 *
 * Everything the handler touches is a fixed-size static table, thread-local storage of the
 * initial-exec kind and write(2): it is async-signal-safe.  The table is written with the GIL
 * held; a handler racing an update may miss a name, never crash.
 */
#include "_faults.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#include "_arch.h"
#include "_rights.h"

ARCH_SIGCTX_STATE

#define FAULT_MAX_REGIONS 1024

typedef struct {
    volatile uintptr_t addr; /* 0: free slot */
    volatile size_t len;
    volatile int pkey;       /* FAULT_PKEY_NONE, FAULT_PKEY_PARKED, or the key's number */
    char name[FAULT_NAME_LEN];
} FaultRegion;

static FaultRegion fault_regions[FAULT_MAX_REGIONS];
static struct sigaction fault_prev;
/* A handler that faults again, or that the chained handler re-raises into, must not recurse. */
static _Thread_local int fault_depth __attribute__((tls_model("initial-exec"))) = 0;

/* --- the table ---------------------------------------------------------------------- */

static FaultRegion *
fault_slot(uintptr_t addr)
{
    for (int i = 0; i < FAULT_MAX_REGIONS; i++) {
        if (fault_regions[i].addr == addr) {
            return &fault_regions[i];
        }
    }
    return NULL;
}

void
fault_table_add(uintptr_t addr, size_t len, const char *label)
{
    FaultRegion *slot = fault_slot(addr);
    if (slot == NULL) {
        slot = fault_slot(0);
    }
    if (slot == NULL) {
        return; /* full: that region is reported without a name */
    }
    __atomic_store_n(&slot->addr, (uintptr_t)0, __ATOMIC_RELEASE); /* hidden while it changes */
    slot->len = len;
    slot->pkey = FAULT_PKEY_NONE;
    strncpy(slot->name, label, FAULT_NAME_LEN - 1);
    slot->name[FAULT_NAME_LEN - 1] = '\0';
    __atomic_store_n(&slot->addr, addr, __ATOMIC_RELEASE);
}

void
fault_table_set_pkey(uintptr_t addr, int pkey)
{
    FaultRegion *slot = addr ? fault_slot(addr) : NULL;
    if (slot != NULL) {
        slot->pkey = pkey;
    }
}

void
fault_table_remove(uintptr_t addr)
{
    FaultRegion *slot = addr ? fault_slot(addr) : NULL;
    if (slot != NULL) {
        __atomic_store_n(&slot->addr, (uintptr_t)0, __ATOMIC_RELEASE);
    }
}

/* --- the handler -------------------------------------------------------------------- */

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
    } while (v && i > 2);
    if (base == 16) {
        buf[--i] = 'x';
        buf[--i] = '0';
    }
    fault_put(&buf[i]);
}

static void
fault_report(siginfo_t *si, void *ctx)
{
    uintptr_t a = (uintptr_t)si->si_addr;
    const FaultRegion *hit = NULL;
    for (int i = 0; i < FAULT_MAX_REGIONS; i++) {
        uintptr_t start = fault_regions[i].addr;
        if (start && a >= start && a < start + fault_regions[i].len) {
            hit = &fault_regions[i];
            break;
        }
    }
    int pkuerr = arch_si_is_pkey_fault(si);
    if (!pkuerr && !(hit && si->si_code == SEGV_ACCERR)) {
        return;
    }
    int is_write = arch_sigctx_is_write(ctx);
    pkey_reg_t pkru = 0;
    int have_pkru = arch_sigctx_reg(ctx, &pkru);
    int key = arch_si_pkey(si);
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
    if (!pkuerr && hit && hit->pkey == FAULT_PKEY_PARKED) {
        fault_put("  key: parked (it holds no hardware key now: its pages are closed to every "
                  "thread until a guard on it is entered)\n");
    }
    if (key >= 0) {
        fault_put("  key: ");
        fault_put_uint((unsigned)key, 10);
        fault_put("\n");
        if (have_pkru && key < NR_PKEYS) {
            fault_put("  thread rights for the key: ");
            fault_put(RIGHTS[rights_level_of_bits(arch_rights_get(pkru, key))].plain);
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

static void
fault_handler(int sig, siginfo_t *si, void *ctx)
{
    int saved_errno = errno;
    if (fault_depth++ > 0) {
        /* Re-entered: the chained handler re-raised, or the report itself faulted.  Let the
         * default action end the process once this returns. */
        signal(sig, SIG_DFL);
        fault_depth--;
        errno = saved_errno;
        return;
    }
    fault_report(si, ctx);
    errno = saved_errno;
    /* Chain: faulthandler (or whoever came before) prints the Python traceback and ends the
     * process; with nobody before us, restore the default action and return, so the access
     * runs again and the kernel ends the process as it would have. */
    if (fault_prev.sa_flags & SA_SIGINFO) {
        if (fault_prev.sa_sigaction != NULL) {
            fault_prev.sa_sigaction(sig, si, ctx);
        }
    }
    else if (fault_prev.sa_handler != SIG_DFL && fault_prev.sa_handler != SIG_IGN) {
        fault_prev.sa_handler(sig);
    }
    signal(sig, SIG_DFL);
    fault_depth--;
}

/* --- install, from Python ----------------------------------------------------------- */

/* Whether our handler is the one the kernel will run now: faulthandler.disable() and
 * signal.signal() replace it without telling us, so ask the kernel, not a flag. */
static int
fault_is_current(void)
{
    struct sigaction cur;
    if (sigaction(SIGSEGV, NULL, &cur) != 0) {
        return 0;
    }
    return (cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == fault_handler;
}

PyObject *
faults_install(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    if (fault_is_current()) {
        Py_RETURN_FALSE;
    }
    arch_sigctx_init();
    struct sigaction sa, prev;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = fault_handler;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGSEGV, &sa, &prev) != 0) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    fault_prev = prev; /* whoever was there, so a report ends the way it would have */
    Py_RETURN_TRUE;
}

PyObject *
faults_uninstall(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    if (!fault_is_current()) {
        Py_RETURN_FALSE; /* someone replaced us already: leave their handler alone */
    }
    if (sigaction(SIGSEGV, &fault_prev, NULL) != 0) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_TRUE;
}

PyObject *
faults_installed(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(fault_is_current());
}
