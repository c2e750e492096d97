/*
 * The x86 pieces both extensions need: RDPKRU/WRPKRU and the CPUID bits that say whether
 * they may run.  Header-only (static inline) so each extension stays one translation unit.
 *
 * RDPKRU and WRPKRU raise #UD (SIGILL) unless the OS set CR4.PKE, which CPUID leaf 7
 * reports as OSPKE: call pkru_read/pkru_write only after pkru_cpuid said ospke.
 */
#ifndef PKEYGUARD_PKRU_H
#define PKEYGUARD_PKRU_H

#include <stdint.h>

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
#else
static inline uint32_t pkru_read(void) { return 0; }
static inline void pkru_write(uint32_t value) { (void)value; }
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

#endif /* PKEYGUARD_PKRU_H */
