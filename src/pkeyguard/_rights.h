/*
 * The one table of key rights: level <-> PKRU bits <-> names.  Header-only (static), shared
 * by the core (_core.c), the fault reporter (_faults.c, async-signal-safe: it only reads the
 * table) and, through _core.RIGHTS, the Python layer (pkeyguard._permissions), so that no
 * other file spells out which bits a rights value sets.
 *
 * Levels run from least to most permissive; the mprotect backend grants the most permissive
 * of all threads' current levels, and the Python enum PkeyPermissions lists its members in
 * this order.
 */
#ifndef PKEYGUARD_RIGHTS_H
#define PKEYGUARD_RIGHTS_H

#include "_arch.h"

enum { LEVEL_NONE = 0, LEVEL_READ = 1, LEVEL_WRITE = 2, LEVEL_COUNT = 3 };
#define LEVEL_MAX (LEVEL_COUNT - 1) /* the most permissive level */

/* Whether level is one of the table's (every bound check on a level goes through this). */
static inline int
rights_level_valid(long level)
{
    return level >= LEVEL_NONE && level < LEVEL_COUNT;
}

typedef struct {
    const char *name;   /* the PkeyPermissions member */
    unsigned bits;      /* its rights-register bits (_arch.h), as pkey_alloc(2) takes them */
    const char *plain;  /* for people (fault reports) */
} RightsRow;

static const RightsRow RIGHTS[LEVEL_COUNT] = {
    [LEVEL_NONE] = {"NoAccess", ARCH_PKEY_DISABLE_ACCESS, "no-access"},
    [LEVEL_READ] = {"ReadOnly", ARCH_PKEY_DISABLE_WRITE, "read-only"},
    [LEVEL_WRITE] = {"ReadWrite", 0u, "read-write"},
};

/* The rights one key's register bits grant: the least permissive level whose bits they include (so
 * access-disable wins over write-disable). */
static inline int
rights_level_of_bits(unsigned bits)
{
    for (int level = LEVEL_NONE; level < LEVEL_COUNT; level++) {
        if ((bits & RIGHTS[level].bits) == RIGHTS[level].bits) {
            return level;
        }
    }
    return LEVEL_MAX; /* not reached: the most permissive level's bits are 0 */
}

#endif /* PKEYGUARD_RIGHTS_H */
