/* Test-only LD_PRELOAD shim: make the pkeyguard core's system calls fail on demand.
 *
 * Interposes the libc entry points the core uses (mprotect, mmap, munmap, madvise, mlock,
 * munlock, ftruncate, fallocate, close, and syscall() for pkey_mprotect, pkey_alloc,
 * pkey_free, memfd_secret and rt_sigprocmask, which the core uses to fault in secret memory).  Only calls made *from the core* (the caller's return address
 * lies in an object whose path contains "_core") are counted and can fail, so the
 * interpreter's own allocations never do.  Armed at run time through ctypes
 * (tests/failinject.py):
 *
 *   failinject_arm("mprotect", ENOMEM, skip, count): let `skip` calls through, then fail the
 *       next `count` calls (count < 0: all of them) with errno ENOMEM, without making them;
 *   failinject_calls("mprotect"): calls seen from the core since the last arm or reset;
 *   failinject_failed("mprotect"): calls failed since then;
 *   failinject_reset(): disarm everything and zero the counters.
 *
 * The counters are plain globals: the core calls these under the GIL.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "_arch.h" /* the core's system call numbers: its architecture seam, not a copy */

enum {
    FI_MPROTECT, FI_PKEY_MPROTECT, FI_PKEY_ALLOC, FI_PKEY_FREE, FI_MEMFD_SECRET, FI_MMAP,
    FI_MUNMAP, FI_MADVISE, FI_MLOCK, FI_MUNLOCK, FI_FTRUNCATE, FI_FALLOCATE, FI_CLOSE,
    FI_RT_SIGPROCMASK, FI_COUNT
};
static const char *const fi_names[FI_COUNT] = {
    "mprotect", "pkey_mprotect", "pkey_alloc", "pkey_free", "memfd_secret", "mmap",
    "munmap", "madvise", "mlock", "munlock", "ftruncate", "fallocate", "close",
    "rt_sigprocmask",
};

static struct {
    int err;
    long skip, count, calls, failed;
} fi[FI_COUNT];

static int
fi_index(const char *name)
{
    for (int i = 0; i < FI_COUNT; i++)
        if (name && strcmp(name, fi_names[i]) == 0)
            return i;
    return -1;
}

int
failinject_arm(const char *name, int err, long skip, long count)
{
    int i = fi_index(name);
    if (i < 0)
        return -1;
    fi[i].err = err;
    fi[i].skip = skip;
    fi[i].count = count;
    fi[i].calls = fi[i].failed = 0;
    return 0;
}

long
failinject_calls(const char *name)
{
    int i = fi_index(name);
    return i < 0 ? -1 : fi[i].calls;
}

long
failinject_failed(const char *name)
{
    int i = fi_index(name);
    return i < 0 ? -1 : fi[i].failed;
}

void
failinject_reset(void)
{
    memset(fi, 0, sizeof fi);
}

static int
from_core(const void *ret)
{
    Dl_info info;
    return dladdr(ret, &info) && info.dli_fname && strstr(info.dli_fname, "_core") != NULL;
}

/* Nonzero (with errno set) when this call, made from `ret`, must fail. */
static int
fi_should_fail(int i, const void *ret)
{
    if (!from_core(ret))
        return 0;
    fi[i].calls++;
    if (fi[i].err == 0)
        return 0;
    if (fi[i].skip > 0) {
        fi[i].skip--;
        return 0;
    }
    if (fi[i].count == 0)
        return 0;
    if (fi[i].count > 0)
        fi[i].count--;
    fi[i].failed++;
    errno = fi[i].err;
    return 1;
}

#define REAL(ret, name, ...)                                                                    \
    static ret (*real_##name)(__VA_ARGS__);                                                     \
    if (!real_##name)                                                                           \
        *(void **)&real_##name = dlsym(RTLD_NEXT, #name);

int
mprotect(void *addr, size_t len, int prot)
{
    REAL(int, mprotect, void *, size_t, int)
    if (fi_should_fail(FI_MPROTECT, __builtin_return_address(0)))
        return -1;
    return real_mprotect(addr, len, prot);
}

void *
mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    REAL(void *, mmap, void *, size_t, int, int, int, off_t)
    if (fi_should_fail(FI_MMAP, __builtin_return_address(0)))
        return MAP_FAILED;
    return real_mmap(addr, len, prot, flags, fd, off);
}

int
munmap(void *addr, size_t len)
{
    REAL(int, munmap, void *, size_t)
    if (fi_should_fail(FI_MUNMAP, __builtin_return_address(0)))
        return -1;
    return real_munmap(addr, len);
}

int
madvise(void *addr, size_t len, int advice)
{
    REAL(int, madvise, void *, size_t, int)
    if (fi_should_fail(FI_MADVISE, __builtin_return_address(0)))
        return -1;
    return real_madvise(addr, len, advice);
}

int
mlock(const void *addr, size_t len)
{
    REAL(int, mlock, const void *, size_t)
    if (fi_should_fail(FI_MLOCK, __builtin_return_address(0)))
        return -1;
    return real_mlock(addr, len);
}

int
munlock(const void *addr, size_t len)
{
    REAL(int, munlock, const void *, size_t)
    if (fi_should_fail(FI_MUNLOCK, __builtin_return_address(0)))
        return -1;
    return real_munlock(addr, len);
}

int
ftruncate(int fd, off_t len)
{
    REAL(int, ftruncate, int, off_t)
    if (fi_should_fail(FI_FTRUNCATE, __builtin_return_address(0)))
        return -1;
    return real_ftruncate(fd, len);
}

int
fallocate(int fd, int mode, off_t off, off_t len)
{
    REAL(int, fallocate, int, int, off_t, off_t)
    if (fi_should_fail(FI_FALLOCATE, __builtin_return_address(0)))
        return -1;
    return real_fallocate(fd, mode, off, len);
}

int
close(int fd)
{
    REAL(int, close, int)
    if (fi_should_fail(FI_CLOSE, __builtin_return_address(0)))
        return -1;
    return real_close(fd);
}

int
pkey_mprotect(void *addr, size_t len, int prot, int pkey)
{
    REAL(int, pkey_mprotect, void *, size_t, int, int)
    if (fi_should_fail(FI_PKEY_MPROTECT, __builtin_return_address(0)))
        return -1;
    return real_pkey_mprotect(addr, len, prot, pkey);
}

int
pkey_alloc(unsigned int flags, unsigned int rights)
{
    REAL(int, pkey_alloc, unsigned int, unsigned int)
    if (fi_should_fail(FI_PKEY_ALLOC, __builtin_return_address(0)))
        return -1;
    return real_pkey_alloc(flags, rights);
}

int
pkey_free(int pkey)
{
    REAL(int, pkey_free, int)
    if (fi_should_fail(FI_PKEY_FREE, __builtin_return_address(0)))
        return -1;
    return real_pkey_free(pkey);
}

long
syscall(long number, ...)
{
    REAL(long, syscall, long, ...)
    va_list ap;
    va_start(ap, number);
    long a[6];
    for (int i = 0; i < 6; i++)
        a[i] = va_arg(ap, long);
    va_end(ap);
    int which = -1;
    switch (number) {
    case SYS_pkey_mprotect: which = FI_PKEY_MPROTECT; break;
    case SYS_pkey_alloc: which = FI_PKEY_ALLOC; break;
    case SYS_pkey_free: which = FI_PKEY_FREE; break;
    case SYS_memfd_secret: which = FI_MEMFD_SECRET; break;
    case SYS_rt_sigprocmask: which = FI_RT_SIGPROCMASK; break;
    default: break;
    }
    if (which >= 0 && fi_should_fail(which, __builtin_return_address(0)))
        return -1;
    return real_syscall(number, a[0], a[1], a[2], a[3], a[4], a[5]);
}
