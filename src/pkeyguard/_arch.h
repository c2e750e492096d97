/*
 * The architecture seam: everything the core knows about one CPU's protection keys, in the
 * kernel selftests' vocabulary (tools/testing/selftests/mm/pkey-helpers.h, pkey-x86.h,
 * pkey-arm64.h).  Every file that touches the rights register, its layout or the pkey system
 * calls includes this header and nothing below it; no other file shifts register bits.
 *
 * Each architecture header defines:
 *
 *   ARCH_HAS_PKEYS          1 if the register instructions exist here (else 0: no keys)
 *   ARCH_NAME               for messages
 *   NR_PKEYS                key numbers the register describes (key 0: all other memory)
 *   PKEY_BITS_PER_PKEY      register bits per key
 *   PKEY_MASK               the bits of one key, at key 0
 *   ARCH_RIGHTS_NONE, ARCH_RIGHTS_READ, ARCH_RIGHTS_READ_WRITE
 *                           one key's register field for each rights level (NONE is the
 *                           "closed" value, PKEY_CLOSED); _rights.h's table is made of these
 *   arch_field_reads(f), arch_field_writes(f)   what a field value allows
 *   PKEY_REG_INIT           the kernel's register value for a new process, a signal handler
 *                           (only key 0 open)
 *   pkey_reg_t              the register's type
 *   arch_rights_get(reg, key)        the rights bits of one key in a register value
 *   arch_rights_set(reg, key, bits)  a register value with one key's bits replaced
 *   arch_reg_read() / arch_reg_write(v)   this thread's register (only after arch_cpuid
 *                                         said ospke: else the instructions fault)
 *   arch_cpuid(&pku, &ospke)         whether the CPU has keys and the OS enabled them
 *   arch_sigctx_init()               once, before the fault handler can run
 *   ARCH_SIGCTX_STATE                the definitions the signal-frame readers keep (written
 *                                    once, in _faults.c)
 *   arch_sigctx_reg(ctx, &reg)       the interrupted thread's register from a signal's
 *                                    ucontext (1) or nothing known (0); async-signal-safe
 *   arch_sigctx_is_write(ctx)        1 write, 0 read, -1 unknown
 *   arch_si_pkey(si)                 the key of a SEGV_PKUERR fault, else -1
 *   SYS_pkey_mprotect, SYS_pkey_alloc, SYS_pkey_free, SYS_memfd_secret (where it exists)
 *
 * The rights levels (_rights.h) are spelt in the architecture's register fields
 * (ARCH_RIGHTS_*); pkey_alloc(2) takes the uapi's flags instead (PKEY_ALLOC_NO_ACCESS).
 * MODE_SIM simulates the register of the header selected here (a thread-local value); the
 * keyless fallback gives it PKRU's layout, so the layout macros exist even where
 * ARCH_HAS_PKEYS is 0.
 */
#ifndef PKEYGUARD_ARCH_H
#define PKEYGUARD_ARCH_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__x86_64__) && !defined(PKEYGUARD_ARCH_NONE) /* -DPKEYGUARD_ARCH_NONE: compile the fallback */
#include "_arch_x86_64.h"
#else
#include "_arch_none.h"
#endif

/* A key's register field when it grants nothing. */
#define PKEY_CLOSED ARCH_RIGHTS_NONE

/* pkey_alloc(2)'s second argument is not a register field: it is the uapi flags
 * PKEY_DISABLE_ACCESS (1) / PKEY_DISABLE_WRITE (2), the same on every architecture, which the
 * kernel translates into the register's encoding. */
#define PKEY_ALLOC_NO_ACCESS 1ul

/* The pkey system calls.  syscall(2) is variadic and reads every argument as a long; an int
 * passed to it may arrive with undefined upper bits, and the kernel reads pkey_mprotect's
 * `prot` and pkey_alloc's arguments as unsigned longs (stray bits: EINVAL).  These wrappers
 * take the kernel's types, so every argument is converted before the call. */
static inline long
sys_pkey_mprotect(void *addr, size_t len, unsigned long prot, long pkey)
{
    return syscall(SYS_pkey_mprotect, addr, len, prot, pkey);
}

static inline long
sys_pkey_alloc(unsigned long flags, unsigned long rights)
{
    return syscall(SYS_pkey_alloc, flags, rights);
}

static inline long
sys_pkey_free(long pkey)
{
    return syscall(SYS_pkey_free, pkey);
}

static inline unsigned
arch_rights_get(pkey_reg_t reg, int key)
{
    return (unsigned)(reg >> (PKEY_BITS_PER_PKEY * (unsigned)key)) & PKEY_MASK;
}

static inline pkey_reg_t
arch_rights_set(pkey_reg_t reg, int key, unsigned bits)
{
    unsigned shift = PKEY_BITS_PER_PKEY * (unsigned)key;
    return (reg & ~((pkey_reg_t)PKEY_MASK << shift)) | ((pkey_reg_t)(bits & PKEY_MASK) << shift);
}

/* A register value with every key in `keys` (bit k: key k) closed. */
static inline pkey_reg_t
arch_rights_close_all(pkey_reg_t reg, uint32_t keys)
{
    for (uint32_t left = keys; left; left &= left - 1) {
        reg = arch_rights_set(reg, __builtin_ctz(left), PKEY_CLOSED);
    }
    return reg;
}

static inline int
arch_si_pkey(const siginfo_t *si)
{
#ifdef SEGV_PKUERR
    if (si->si_code == SEGV_PKUERR) {
        return (int)si->si_pkey;
    }
#else
    (void)si;
#endif
    return -1;
}

static inline int
arch_si_is_pkey_fault(const siginfo_t *si)
{
#ifdef SEGV_PKUERR
    return si->si_code == SEGV_PKUERR;
#else
    (void)si;
    return 0;
#endif
}

#endif /* PKEYGUARD_ARCH_H */
