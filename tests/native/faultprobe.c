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
