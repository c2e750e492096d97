/*
 * x86-64: PKRU, 16 keys of 2 bits (AD: access disable, WD: write disable), RDPKRU/WRPKRU.
 * Included through _arch.h only.
 *
 * RDPKRU and WRPKRU raise #UD (SIGILL) unless the OS set CR4.PKE, which CPUID leaf 7
 * reports as OSPKE: call arch_reg_read/arch_reg_write only after arch_cpuid said ospke.
 */
#ifndef PKEYGUARD_ARCH_X86_64_H
#define PKEYGUARD_ARCH_X86_64_H

#include <cpuid.h>
#include <stdint.h>
#include <ucontext.h>

#define ARCH_HAS_PKEYS 1
#define ARCH_NAME "x86-64"
#include "_arch_pkru_layout.h" /* PKRU: 16 keys of 2 bits */

/* The x86-64 system call numbers (glibc's headers may predate them). */
#ifndef SYS_pkey_mprotect
#define SYS_pkey_mprotect 329
#endif
#ifndef SYS_pkey_alloc
#define SYS_pkey_alloc 330
#endif
#ifndef SYS_pkey_free
#define SYS_pkey_free 331
#endif
#ifndef SYS_memfd_secret
#define SYS_memfd_secret 447
#endif

static inline uint32_t
arch_reg_read(void)
{
    uint32_t eax, edx;
    /* RDPKRU is 0f 01 ee (spelt as bytes for old assemblers); it needs ECX = 0. */
    __asm__ volatile(".byte 0x0f,0x01,0xee" : "=a"(eax), "=d"(edx) : "c"(0) : "memory");
    return eax;
}

static inline void
arch_reg_write(uint32_t value)
{
    /* WRPKRU is 0f 01 ef; it needs ECX = EDX = 0.  The "memory" clobber keeps the
     * compiler from moving loads and stores of protected memory across the switch. */
    __asm__ volatile(".byte 0x0f,0x01,0xef" : : "a"(value), "c"(0), "d"(0) : "memory");
}

/* CPUID.(EAX=7,ECX=0):ECX bit 3 is PKU (the CPU has it), bit 4 OSPKE (the OS enabled it). */
static inline void
arch_cpuid(int *pku, int *ospke)
{
    unsigned eax, ebx, ecx, edx;
    *pku = 0;
    *ospke = 0;
    if (__get_cpuid_max(0, NULL) >= 7) {
        __cpuid_count(7, 0, eax, ebx, ecx, edx);
        *pku = (ecx >> 3) & 1;
        *ospke = (ecx >> 4) & 1;
    }
}

/* PKRU's offset in the XSAVE area of a signal frame (0: unknown), from CPUID leaf 0xd.  One
 * variable for the whole extension, defined by ARCH_SIGCTX_STATE in the fault reporter's unit
 * (_faults.c: the code that calls arch_sigctx_init and arch_sigctx_reg). */
extern unsigned arch_sigctx_pkru_offset __attribute__((visibility("hidden")));
#define ARCH_SIGCTX_STATE unsigned arch_sigctx_pkru_offset = 0;

static inline void
arch_sigctx_init(void)
{
    unsigned eax, ebx, ecx, edx;
    if (__get_cpuid_max(0, NULL) >= 0xd) {
        __cpuid_count(0xd, 9, eax, ebx, ecx, edx);
        (void)ecx;
        (void)edx;
        arch_sigctx_pkru_offset = eax >= 4 ? ebx : 0; /* EAX: size of the PKRU component */
    }
}

/* The interrupted thread's PKRU, saved by the kernel in the XSAVE area. */
static inline int
arch_sigctx_reg(void *ctx, pkey_reg_t *reg)
{
    ucontext_t *uc = ctx;
    if (uc == NULL || arch_sigctx_pkru_offset == 0 || uc->uc_mcontext.fpregs == NULL) {
        return 0;
    }
    *reg = *(uint32_t *)((char *)uc->uc_mcontext.fpregs + arch_sigctx_pkru_offset);
    return 1;
}

static inline int
arch_sigctx_is_write(void *ctx)
{
    ucontext_t *uc = ctx;
    return uc == NULL ? -1 : (uc->uc_mcontext.gregs[REG_ERR] & 2) != 0;
}

#endif /* PKEYGUARD_ARCH_X86_64_H */
