/* Test-only helper for the hardware suite: reports how a fault arrived (si_code, si_pkey)
 * and what PKRU a C-level signal handler starts with.  Loaded with ctypes. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

static void
put(const char *s)
{
    ssize_t r = write(2, s, strlen(s));
    (void)r;
}

static void
put_num(long v)
{
    char buf[32];
    int i = sizeof(buf) - 1, neg = v < 0;
    unsigned long u = neg ? (unsigned long)(-v) : (unsigned long)v;
    buf[i] = '\0';
    do {
        buf[--i] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (neg) {
        buf[--i] = '-';
    }
    put(&buf[i]);
}

static void
on_segv(int sig, siginfo_t *si, void *ctx)
{
    (void)ctx;
    /* async-signal-safe: write(2) only */
    put("FAULT signo=");
    put_num(sig);
    put(" code=");
    put_num(si->si_code);
    put(" pkey=");
    put_num(si->si_code == SEGV_PKUERR ? (long)si->si_pkey : -1);
    put("\n");
    /* SA_RESETHAND restored the default action: returning re-executes the access,
     * which now kills the process with SIGSEGV as usual. */
}

int
faultprobe_install(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    return sigaction(SIGSEGV, &sa, NULL);
}

static volatile uint32_t handler_pkru = 0xffffffffu;

static uint32_t
rdpkru(void)
{
    uint32_t eax, edx;
    __asm__ volatile(".byte 0x0f,0x01,0xee" : "=a"(eax), "=d"(edx) : "c"(0) : "memory");
    return eax;
}

static void
on_usr2(int sig)
{
    (void)sig;
    handler_pkru = rdpkru();
}

int
faultprobe_install_pkru_recorder(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_usr2;
    sigemptyset(&sa.sa_mask);
    return sigaction(SIGUSR2, &sa, NULL);
}

uint32_t
faultprobe_handler_pkru(void)
{
    return handler_pkru;
}

int
faultprobe_read(const volatile int *p)
{
    return *p;
}

void
faultprobe_write(volatile int *p, int v)
{
    *p = v;
}

/* Raw PKRU access for tests that play "someone else changed PKRU" (the library itself has
 * no such entry point). */
uint32_t
faultprobe_rdpkru(void)
{
    return rdpkru();
}

void
faultprobe_wrpkru(uint32_t value)
{
    __asm__ volatile(".byte 0x0f,0x01,0xef" : : "a"(value), "c"(0), "d"(0) : "memory");
}

/* A native reader thread, the attacker of issue 18's class 10: it reads 8 bytes at a target
 * address in a loop, counting the reads that saw the target pattern (the secret), the reads
 * that returned, and the faults (SIGSEGV/SIGBUS, caught with sigsetjmp and skipped).  While
 * it runs, its handler replaces the process's SIGSEGV and SIGBUS handlers; a fault on another
 * thread gets the default action (the process dies, as it would have). */
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>

static volatile uintptr_t reader_addr;
static volatile uint64_t reader_pattern;
static volatile int reader_stop;
static volatile long reader_hits, reader_reads, reader_faults;
static pthread_t reader_thread;
static struct sigaction reader_old_segv, reader_old_bus;
static __thread sigjmp_buf reader_jmp;
static __thread volatile sig_atomic_t reader_armed;

static void
reader_on_fault(int sig, siginfo_t *si, void *ctx)
{
    (void)si;
    (void)ctx;
    if (reader_armed) {
        reader_armed = 0;
        siglongjmp(reader_jmp, 1);
    }
    signal(sig, SIG_DFL); /* not the reader's: returning re-executes the access and dies */
}

static void *
reader_loop(void *arg)
{
    (void)arg;
    while (!reader_stop) {
        uintptr_t a = reader_addr;
        if (a == 0) {
            sched_yield();
            continue;
        }
        if (sigsetjmp(reader_jmp, 1) == 0) {
            reader_armed = 1;
            uint64_t v = *(volatile uint64_t *)a;
            reader_armed = 0;
            reader_reads++;
            if (v == reader_pattern) {
                reader_hits++;
            }
        }
        else {
            reader_faults++;
        }
    }
    return NULL;
}

int
faultprobe_reader_start(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = reader_on_fault;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGSEGV, &sa, &reader_old_segv) != 0 ||
        sigaction(SIGBUS, &sa, &reader_old_bus) != 0) {
        return -1;
    }
    reader_stop = 0;
    reader_addr = 0;
    return pthread_create(&reader_thread, NULL, reader_loop, NULL);
}

/* Read `addr` from now on, counting reads that see `pattern`; 0 pauses the reader. */
void
faultprobe_reader_target(uintptr_t addr, uint64_t pattern)
{
    reader_pattern = pattern;
    reader_addr = addr;
}

void
faultprobe_reader_counts(long *hits, long *reads, long *faults)
{
    *hits = reader_hits;
    *reads = reader_reads;
    *faults = reader_faults;
}

int
faultprobe_reader_stop(void)
{
    reader_stop = 1;
    int rc = pthread_join(reader_thread, NULL);
    (void)sigaction(SIGSEGV, &reader_old_segv, NULL);
    (void)sigaction(SIGBUS, &reader_old_bus, NULL);
    return rc;
}
