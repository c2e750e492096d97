/*
 * The PKRU register's layout: 16 keys of 2 bits, AD (access disable) and WD (write disable).
 * x86-64's own (_arch_x86_64.h), and the layout MODE_SIM simulates on every architecture
 * (_arch_none.h).  Included through _arch.h only.
 */
#ifndef PKEYGUARD_ARCH_PKRU_LAYOUT_H
#define PKEYGUARD_ARCH_PKRU_LAYOUT_H

#include <stdint.h>

#define NR_PKEYS 16
#define PKEY_BITS_PER_PKEY 2u
#define PKEY_MASK 3u
#define ARCH_PKEY_DISABLE_ACCESS 1u /* PKRU.AD */
#define ARCH_PKEY_DISABLE_WRITE 2u  /* PKRU.WD */

/* One key's field in the register for each rights level (x86 disables: full access is 0), and
 * what a field value allows (AD wins over WD). */
#define ARCH_RIGHTS_NONE ARCH_PKEY_DISABLE_ACCESS
#define ARCH_RIGHTS_READ ARCH_PKEY_DISABLE_WRITE
#define ARCH_RIGHTS_READ_WRITE 0u

static inline int
arch_field_reads(unsigned field)
{
    return !(field & ARCH_PKEY_DISABLE_ACCESS);
}

static inline int
arch_field_writes(unsigned field)
{
    return !(field & (ARCH_PKEY_DISABLE_ACCESS | ARCH_PKEY_DISABLE_WRITE));
}

/* A new process's register (and a signal handler's): key 0 open, every other key closed. */
#define PKEY_REG_INIT 0x55555554u

typedef uint32_t pkey_reg_t;

#endif /* PKEYGUARD_ARCH_PKRU_LAYOUT_H */
