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

enum { LEVEL_NONE = 0, LEVEL_READ = 1, LEVEL_WRITE = 2, LEVEL_COUNT = 3 };

/* PKRU bits per key, as pkey_alloc(2) takes them. */
#define PKRU_AD 1u /* access disable */
#define PKRU_WD 2u /* write disable */

typedef struct {
    const char *name;   /* the PkeyPermissions member */
    unsigned bits;      /* its PKRU bits */
    const char *plain;  /* for people (fault reports) */
} RightsRow;

static const RightsRow RIGHTS[LEVEL_COUNT] = {
    [LEVEL_NONE] = {"NoAccess", PKRU_AD, "no-access"},
    [LEVEL_READ] = {"ReadOnly", PKRU_WD, "read-only"},
    [LEVEL_WRITE] = {"ReadWrite", 0u, "read-write"},
};

/* The rights two PKRU bits grant: the least permissive level whose bits they include (so
 * access-disable wins over write-disable). */
static inline int
rights_level_of_bits(unsigned bits)
{
    for (int level = LEVEL_NONE; level < LEVEL_COUNT; level++) {
        if ((bits & RIGHTS[level].bits) == RIGHTS[level].bits) {
            return level;
        }
    }
    return LEVEL_WRITE; /* not reached: ReadWrite's bits are 0 */
}

#endif /* PKEYGUARD_RIGHTS_H */
