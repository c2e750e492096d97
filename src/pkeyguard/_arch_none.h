/*
 * An architecture without protection keys support in pkeyguard (yet): it compiles, the
 * register reads as 0 and cannot be written, arch_cpuid says no keys, so the pku backend is
 * never chosen (the mprotect backend and MODE_SIM work).  The register layout below is x86's:
 * MODE_SIM simulates that register on every architecture.  A real port (arm64 POE: POR_EL0,
 * 4 bits per key that grant rights rather than disable them; powerpc: AMR) gets its own header selected in _arch.h instead.
 * Included through _arch.h only.
 */
#ifndef PKEYGUARD_ARCH_NONE_H
#define PKEYGUARD_ARCH_NONE_H

#include <stdint.h>

#define ARCH_HAS_PKEYS 0
#define ARCH_NAME "no protection keys"
#include "_arch_pkru_layout.h" /* the layout MODE_SIM simulates */

/* No pkey system calls known here: syscall(-1) fails with ENOSYS.  memfd_secret keeps the C
 * library's number if it has one (the generic table's 447 on arm64, riscv). */
#ifndef SYS_pkey_mprotect
#define SYS_pkey_mprotect (-1)
#endif
#ifndef SYS_pkey_alloc
#define SYS_pkey_alloc (-1)
#endif
#ifndef SYS_pkey_free
#define SYS_pkey_free (-1)
#endif
#if !defined(SYS_memfd_secret) && defined(__aarch64__)
#define SYS_memfd_secret 447
#endif

static inline uint32_t arch_reg_read(void) { return 0; }
static inline void arch_reg_write(uint32_t value) { (void)value; }

static inline void
arch_cpuid(int *pku, int *ospke)
{
    *pku = 0;
    *ospke = 0;
}

#define ARCH_SIGCTX_STATE /* nothing to keep */

static inline void arch_sigctx_init(void) {}

static inline int
arch_sigctx_reg(void *ctx, pkey_reg_t *reg)
{
    (void)ctx;
    (void)reg;
    return 0;
}

static inline int
arch_sigctx_is_write(void *ctx)
{
    (void)ctx;
    return -1;
}

#endif /* PKEYGUARD_ARCH_NONE_H */
