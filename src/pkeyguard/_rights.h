/*
 * The one table of key rights: level <-> register field <-> names <-> what it allows.  Header-only (static), shared
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
    unsigned bits;      /* one key's field in the rights register for it (_arch.h) */
    const char *plain;  /* for people (fault reports) */
    unsigned char reads, writes; /* what it allows: every check of a level asks these */
} RightsRow;

static const RightsRow RIGHTS[LEVEL_COUNT] = {
    [LEVEL_NONE] = {"NoAccess", ARCH_RIGHTS_NONE, "no-access", 0, 0},
    [LEVEL_READ] = {"ReadOnly", ARCH_RIGHTS_READ, "read-only", 1, 0},
    [LEVEL_WRITE] = {"ReadWrite", ARCH_RIGHTS_READ_WRITE, "read-write", 1, 1},
};

/* Whether a level allows reading (any access at all) / writing. */
static inline int
rights_reads(int level)
{
    return RIGHTS[level].reads;
}

static inline int
rights_writes(int level)
{
    return RIGHTS[level].writes;
}

/* The rights one key's register field grants: the level that allows what the field allows
 * (on x86, access-disable wins over write-disable), else the least permissive. */
static inline int
rights_level_of_bits(unsigned bits)
{
    int reads = arch_field_reads(bits), writes = arch_field_writes(bits);
    for (int level = LEVEL_MAX; level > LEVEL_NONE; level--) {
        if (RIGHTS[level].reads == reads && RIGHTS[level].writes == writes) {
            return level;
        }
    }
    return LEVEL_NONE;
}

#endif /* PKEYGUARD_RIGHTS_H */
