/*
 * The core's private header: the structs the core's translation units share, the mode and
 * flag constants, and the functions one unit calls in another.  Everything declared here is
 * CORE_HIDDEN: the extension exports only PyInit__core (setup.py also builds with
 * -fvisibility=hidden).  The ownership rules are at the top of _core.c; the key pool's at the
 * top of _keypool.c.
 */
#ifndef PKEYGUARD_CORE_H
#define PKEYGUARD_CORE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <pythread.h>

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "_arch.h"
#include "_faults.h"
#include "_rights.h"

#ifndef MADV_DONTDUMP
#define MADV_DONTDUMP 16
#endif
#ifndef MADV_WIPEONFORK
#define MADV_WIPEONFORK 18
#endif
#ifndef MADV_DONTFORK
#define MADV_DONTFORK 10
#endif
#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

/* Modes of a Key: how a Guard applies rights. */
/* MODE_SIM is PKU simulated for tests and benchmarks: the same key pool and switches, with a
 * thread-local value for PKRU and mprotect for the tags (see _keypool.h). */
enum { MODE_NOP = 0, MODE_PKU = 1, MODE_MPROTECT = 2, MODE_SIM = 3, MODE_COUNT = 4 };
/* Rights levels, PKRU bits and their names: the RIGHTS table in _rights.h. */

/* Why a guard stopped being active without its own __exit__. */
enum { ENDED_NO = 0, ENDED_ORDER = 1, ENDED_THREAD = 2,
       ENDED_RETRIED = 3 /* its own exit failed; a later exit on its thread completed it */ };

/* Mapping flags. */
#define MAP_F_WIPE 0x01        /* zero the pages before unmapping them */
#define MAP_F_LOCKED 0x02      /* mlock'ed: munlock before unmapping */
#define MAP_F_DONTDUMP 0x04    /* MADV_DONTDUMP applied */
#define MAP_F_WIPEONFORK 0x08  /* MADV_WIPEONFORK applied */
#define MAP_F_GUARDED 0x10     /* a PROT_NONE guard page before and after */
#define MAP_F_WIPED 0x20       /* its bytes are gone (or closed and going): the canary too */
#define MAP_F_SECRETMEM 0x40   /* memfd_secret(2) pages: MAP_SHARED, so MADV_DONTFORK */
#define MAP_F_LOST 0x80        /* a fork child could not map zero pages in its place */
#define MAP_F_UNKNOWN 0x100    /* a change failed half-way: the rights may not be the books' */
#define MAP_F_CANARY_BAD 0x200 /* the wipe found the canary overwritten (not reported yet) */
#define MAP_F_LAGGING 0x400    /* mprotect: the pages may be narrower (or stuck wider) than the
                                  key's effective_level after a failed change; set on every
                                  region of a key whose change failed, cleared per region when
                                  the level is applied to it again */
#define MAP_F_PKU_TAGGED 0x800 /* its pages may carry a pku number (a pku key's tag; cleared
                                  when they are untagged to key 0) */
#define CANARY_MAX 64

#define MAX_REGION_SIZE ((size_t)1 << 46)

#define CORE_HIDDEN __attribute__((visibility("hidden")))

/*
 * Process-wide state: every file-scope variable of the core, who writes it and under what.
 * "GIL": written only with the GIL held (reads too, unless said); "fork": also rewritten by
 * the pthread_atfork child handler (one thread, system calls and memory writes only, the GIL
 * held by the forking thread); "signal": read by the SIGSEGV handler (async-signal-safe).
 *
 *   _core.c       pku_enabled            GIL, once (_enable_pku), then read-only
 *                 page_size              GIL, once at module exec
 *                 err_classes[]          GIL (_set_error_module)
 *                 core_executed          GIL, once
 *   _keys.c       live_keys, live_key_count   GIL (Key_new, key_free, Key_dealloc)
 *                 next_key_id            GIL (Key_new)
 *   _keypool.c    pools[]                GIL; pool_thread_gone reads .held with an atomic load
 *                 sim_allocated          GIL
 *                 pool_threads (ring), pool_thread_key/_once/_errno
 *                                        pool_threads_lock (a thread leaves at its exit, without
 *                                        the GIL); fork: the child resets lock and ring
 *                 tls_epoch[], tls_sim_pkru, tls_thread   per thread (its own, GIL held)
 *   _mappings.c   wipe_list (ring)       GIL; fork: walked (not changed) by fork_child
 *                 fork_count             fork: incremented by fork_child; read with the GIL
 *                 held_ranges            GIL; fork: held_fork_child drops unreachable ranges
 *   _guards.c     tls_stack, tls_creating     per thread; fork: fork_child_expire_secure_views
 *                                        writes the forking thread's guards
 *                 stack_dict_key, rights_members[], guard_types[], guard_recyclable[]
 *                                        GIL (module exec, _register_rights)
 *                 guard_free[][], guard_nfree[]   GIL (the guard freelist)
 *                 walk_steps             GIL (a counter for tests)
 *                 boundslot_free, boundslot_nfree (_guardslots.c.h)   GIL
 *   _views.c      str_value              GIL, once at module exec
 *   _isolation.c  group_stamp            GIL
 *   _faults.c     fault_regions[]        GIL (writers, with atomic stores of addr); signal: read
 *                 fault_prev             GIL (install); signal: read and called
 *                 fault_depth            per thread; signal: the handler's own recursion guard
 *                 arch_sigctx_pkru_offset (_arch_x86_64.h)   GIL (install); signal: read
 */


typedef struct KeyObject KeyObject;
typedef struct MappingObject MappingObject;
typedef struct BindingObject BindingObject;
typedef struct GuardObject GuardObject;
typedef struct ViewObject ViewObject;

/* Slot functions take PyObject * (CPython's style, which UBSan's function-type checks expect)
 * and cast it with these. */
#define Key_CAST(op) ((KeyObject *)(op))
#define Mapping_CAST(op) ((MappingObject *)(op))
#define Binding_CAST(op) ((BindingObject *)(op))
#define Guard_CAST(op) ((GuardObject *)(op))
#define View_CAST(op) ((ViewObject *)(op))
#define Group_CAST(op) ((GroupObject *)(op))
#define StackOwner_CAST(op) ((StackOwnerObject *)(op))
#define BoundSlot_CAST(op) ((BoundSlotObject *)(op))
#define SlotDescr_CAST(op) ((SlotDescrObject *)(op))

/* Errors: looked up by name in pkeyguard._errors (registered at its import). */
enum {
    E_GUARD_STATE, E_GUARD_ORDER, E_GUARD_THREAD, E_VIEW, E_ACCESS, E_PKU_UNAVAILABLE,
    E_MPROTECT, E_REGION, E_KEY, E_CANARY, E_ARGTYPE, E_SECRET_UNAVAILABLE, E_KEY_EXHAUSTED,
    E_COUNT
};

typedef struct ThreadStack {
    GuardObject *top;     /* the stack holds a reference to each active guard */
    unsigned long ident;  /* for messages only */
    Py_ssize_t depth;     /* how many guards are on it */
} ThreadStack;

/* This thread's guard stack (NULL until its first guard): written by the thread itself. */
CORE_HIDDEN extern _Thread_local ThreadStack *tls_stack __attribute__((tls_model("initial-exec")));

#include "_keypool.h"

struct KeyObject {
    PyObject_HEAD
    long long id;          /* the logical key number: unique in the process, never reused */
    KeySlot slot;          /* pku/sim: its state in the key pool (_keypool.h) */
    int mode;
    int base_level;        /* rights with no guard active (mprotect; pku: initial rights) */
    int effective_level;   /* rights applied to the pages now (mprotect) */
    int mixed;             /* mprotect: a failed system call left some regions at other rights
                              than effective_level (narrower, or stuck wider); every switch
                              applies the level to all of them again until one succeeds */
    Py_ssize_t counts[LEVEL_COUNT]; /* per level: threads whose innermost guard on this key has it */
    Py_ssize_t active;     /* active guards on this key, all threads */
    BindingObject **bindings; /* borrowed: the live bindings of this key */
    Py_ssize_t nbindings, cap;
    int closed;            /* freed (or never allocated) */
    int closing;           /* key_free() under way */
    int autoclose;         /* owned by the library on a user's behalf (a Secret's key): freed
                              when its last binding ends, never handed out (key_owned) */
    int quarantined;       /* closed, but the number was not freed: some pages kept the tag */
    GuardObject *roots;    /* per thread with active guards on it, the outermost (borrowed) */
    uint64_t mark;         /* isolated(): a stamp that marks it allowed or isolated */
    KeyObject *live_prev, *live_next; /* the registry of open keys (isolation) */
};


struct MappingObject {
    PyObject_HEAD
    uintptr_t base;        /* the whole mapping, guard pages included; 0 once released */
    size_t total;
    uintptr_t addr;        /* the usable pages */
    size_t len;
    size_t size;           /* bytes of the value */
    int prot;              /* the region's own page rights */
    int flags;
    pid_t pid;             /* the process that mapped it (fork children inherit a copy) */
    unsigned long forks;   /* fork_count when it was mapped: a child has a larger count */
    unsigned char canary[CANARY_MAX];
    Py_ssize_t canary_len;
    BindingObject *binding; /* strong while bound */
    PyObject *on_release;  /* test hook: called after zeroing, before unmapping */
    PyObject *view_types;  /* (read view type, write view type) */
    PyObject *ctype;       /* the value type (composites), or NULL */
    char fmt;              /* struct code of a scalar, 's' for bytes and composites */
    char swap;             /* scalar stored in the non-native byte order */
    MappingObject *wipe_prev, *wipe_next; /* the registry of mappings to wipe at exit */
    uintptr_t releasing;   /* base while its release runs the test hook (Python code) */
    Py_ssize_t exports;    /* live buffer exports of views over it (all guards) */
    struct HeldRange *held; /* its released range, kept reserved while exports live */
};


struct BindingObject {
    PyObject_HEAD
    KeyObject *key;          /* strong while live, NULL once ended */
    MappingObject *mapping;  /* strong */
    Py_ssize_t active;       /* active guards through this binding */
    Py_ssize_t slot;         /* its index in key->bindings while listed there */
    int live;
    BindingObject *ended_next; /* key_free()'s list of references it drops at its end */
};


struct GuardObject {
    PyObject_HEAD
    KeyObject *key;            /* strong */
    BindingObject *binding;    /* strong; NULL for a key-wide guard (isolation) */
    PyObject *enter_view;      /* a view type: __enter__ returns a new view of it, or NULL */
    int level;                 /* rights this guard grants while active */
    int active;
    int ended;                 /* ENDED_*: how it stopped without its own exit */
    int stuck;                 /* active, and its own exit failed (its pages could not be
                                  re-protected): the library retries it (stuck_retry) */
    int saved_bits;            /* pku/sim: the bits of number hw before entry */
    int hw;                    /* pku/sim: the number it switched, -1 if none (parked) */
    int saved_level;           /* MODE_MPROTECT: previous innermost level, -1 if none */
    ThreadStack *stack;        /* the owning thread's stack while active */
    unsigned long thread;      /* that thread's ident, for messages */
    uint64_t generation;       /* bumped on each entry; views remember it */
    Py_ssize_t exports;        /* live buffer exports of this activation's views */
    GuardObject *prev;         /* next-outer guard of the same thread */
    Py_ssize_t depth;          /* while active: its place on the stack (1: the outermost) */
    /* While active, this thread's guards on the same key, without walking the stack (a view
     * access, an entry and isolated() cost O(1) per key, however many keys are open): */
    GuardObject *same_outer;   /* the next-outer active guard on the same key, this thread */
    GuardObject *root;         /* the outermost one (g itself if none is outer) */
    GuardObject *innermost;    /* roots only: the innermost one */
    GuardObject *root_prev, *root_next; /* roots only: the key's list of roots (one per
                                           thread that has guards on it) */
};


/* Guards visited while looking for a thread's guards on a key (roots of other threads,
 * and same-key chains): the cost that must not grow with the number of keys.  Tests read it
 * through _walk_steps(). */
CORE_HIDDEN extern unsigned long long walk_steps;

/* The outermost active guard of the thread of stack s on k, or NULL: O(threads that hold
 * guards on k). */
static inline GuardObject *
key_thread_root(KeyObject *k, ThreadStack *s)
{
    for (GuardObject *r = k->roots; r != NULL; r = r->root_next) {
        walk_steps++;
        if (r->stack == s) {
            return r;
        }
    }
    return NULL;
}


/* How key_apply_level() treats a failure. */
enum {
    APPLY_ATOMIC = 0, /* put back what it changed: the key stays at its level (the caller's
                         operation fails as a whole, and says so) */
    APPLY_FORCE = 1,  /* the level is the key's from now on (a guard of a thread that ended
                         is gone whatever happens): every region is tried, and the ones that
                         fail stay as they were, marked by k->mixed */
};

/* What a bound mapping's pages carry: the rights and, on pku, the number they are tagged with. */
typedef struct {
    long prot;
    long pkey; /* pku: the number to tag them with (0: key 0, parked); -1: no pku tag (mprotect) */
} PagePlan;
/* The fields are long, not int: two ints would travel packed in one register, and glibc's
 * mprotect stub hands the kernel the whole register (the upper half, the pkey, made its prot
 * argument invalid: EINVAL).  A long holds the value alone. */

/* What binding_end() gives up, handed to its caller.  Dropping a reference can run Python
 * code (a finalizer on the key, often dropped for the last time here; the binding's own
 * deallocator), and so can building the error: the caller finishes its own change first (the
 * release and munmap of close(), every binding of key_free()) and then calls ended_finish().
 * binding_end() raises nothing itself. */
typedef struct {
    KeyObject *key;        /* the binding's reference to its key */
    BindingObject *held;   /* the mapping's reference to the binding */
    BindingObject *ours;   /* the caller's own reference to the binding (it sets this) */
    int err;               /* errno of a failed untag, 0 if none */
    const char *syscall;
} Ended;

/* untag: UNTAG_NO (the pages are about to be unmapped), UNTAG_YES (a failure changes nothing
 * and raises), UNTAG_FORCE (the collector is taking the binding apart: on a failure the
 * binding ends anyway, the pages keep the tag, and the key never gives its number to
 * another key; raises after the binding has ended). */
enum { UNTAG_NO = 0, UNTAG_YES = 1, UNTAG_FORCE = 2 };

/* Why an entry (or a switch) could not be made; raised by raise_failure(). */
enum {
    FAIL_NONE = 0,
    FAIL_ACTIVE,        /* already active */
    FAIL_KEY_CLOSED,    /* its key is closed, or being closed */
    FAIL_UNBOUND,       /* its association has ended */
    FAIL_EXPORTS,       /* a wider guard on the key has live buffer exports */
    FAIL_ERRNO,         /* a system call failed (err, syscall) */
    FAIL_TAKE,          /* no hardware key could be taken (pool_take's result in err) */
    FAIL_INHERITED,     /* its region is secure memory a fork child inherited */
};

typedef struct {
    int why;
    int err;
    const char *syscall;
    GuardObject *other; /* FAIL_EXPORTS: the guard whose views have exports (borrowed) */
    Py_ssize_t exports;
} GuardFailure;

/* The references popped guards give up (their stack's), dropped once the state is
 * consistent: dropping one can run a finalizer.  The list is the caller's own memory, so
 * whatever that code does to the guards cannot reach it (a guard's own links can change:
 * the code may enter it again). */
typedef struct {
    GuardObject **items;
    Py_ssize_t n, cap;
    GuardObject *small[8];
} Released;

/* Where a mapping's usable pages come from.  Each backing has its own steps: allocate
 * (backing_allocate, inside the reservation), advise (backing_advise: what it keeps out of
 * core dumps and fork children), fork (backing_fork_child) and wipe (mapping_discard's
 * discard in place).  A new backing is a new value here and a case in each step. */
typedef enum {
    BACKING_ANON = 0,      /* private anonymous pages (the reservation's own) */
    BACKING_SECRETMEM = 1, /* memfd_secret(2) pages mapped over the reservation (MAP_SHARED) */
} Backing;                 /* (not in the enum, so that -Wswitch finds a step without a case) */
enum { BACKING_COUNT = BACKING_SECRETMEM + 1 }; /* a row of BACKINGS past it does not compile */

/* What a backing's pages are, for the code outside its steps (fork checks, release, wiping,
 * what `_advice` reports): every such check asks this table, so a new backing is a row here
 * as well as a case in each step. */
typedef struct {
    const char *name;           /* Secret.backing, Mapping._backing */
    unsigned char shared;       /* MAP_SHARED pages: MADV_DONTFORK (a hole in a fork child),
                                   discarded by replacing them, never in place */
    unsigned char locked;       /* the kernel keeps them resident and locked (no mlock) */
    unsigned char kernel_reads; /* the kernel can read them for us (the canary's check) */
} BackingTraits;

static const BackingTraits BACKINGS[BACKING_COUNT] = {
    [BACKING_ANON] = {"mmap", 0, 0, 1},
    [BACKING_SECRETMEM] = {"memfd_secret", 1, 1, 0},
};

static inline Backing
mapping_backing(MappingObject *m)
{
    return (m->flags & MAP_F_SECRETMEM) ? BACKING_SECRETMEM : BACKING_ANON;
}

static inline const BackingTraits *
mapping_traits(MappingObject *m)
{
    return &BACKINGS[mapping_backing(m)];
}

/* A fork child gets none of these pages' bytes: zero pages (WIPEONFORK), or a hole. */
static inline int
mapping_fork_gets_no_bytes(MappingObject *m)
{
    return (m->flags & MAP_F_WIPEONFORK) || mapping_traits(m)->shared;
}

/* The fork handler's count of fork children this process has been (_mappings.c). */
CORE_HIDDEN extern volatile unsigned long fork_count; /* fork children made (the fork handler) */

/* ---- Shared helpers (static inline: used on the hot path or everywhere) ---------------- */

static inline int
is_finalizing(void)
{
#if PY_VERSION_HEX >= 0x030D0000
    return Py_IsFinalizing();
#else
    return _Py_IsFinalizing();
#endif
}

/* A key the library owns on a user's behalf (a Secret's): nothing public hands it out
 * (guard.key, the association's key, isolated()'s value), and nothing may close it, bind it
 * to another region or end its association: closing it would re-tag the secret's pages to
 * key 0 with their own rights (readable outside reveal()), and leave the Secret unusable.
 * It is freed when its one association ends (the Secret closes). */
static inline int
key_owned(KeyObject *k)
{
    return k->autoclose;
}

static inline int
mapping_inherited(MappingObject *m)
{
    return m->forks != fork_count || m->pid != getpid();
}

/* Secure memory (zeroed on release, wiped or left out on fork) that a fork child inherited:
 * its bytes did not come along (zero pages, or a hole), so nothing may read or write it as
 * if it held the parent's secret.  Checked when a guard or view over it is used, not only
 * when it is made: a guard made before the fork can be entered after it. */
static inline int
mapping_secure_inherited(MappingObject *m)
{
    return ((m->flags & MAP_F_WIPE) || mapping_fork_gets_no_bytes(m)) && m->base != 0 &&
           mapping_inherited(m);
}

/* The system call that applies a plan. */
static inline const char *
page_plan_syscall(PagePlan d)
{
    return d.pkey >= 0 ? "pkey_mprotect" : "mprotect";
}

static inline int
prot_for_level(int prot, int level)
{
    if (!rights_reads(level)) {
        return prot & PROT_EXEC; /* pkeys never restrict instruction fetch; mirror that */
    }
    return rights_writes(level) ? prot : prot & ~PROT_WRITE;
}

/* Set to zero so that the compiler cannot drop it as a dead store. */
static inline void
wipe_bytes(void *p, size_t n)
{
    memset(p, 0, n);
    __asm__ volatile("" : : "r"(p) : "memory");
}

/* mprotect: the level a key needs now, the most permissive innermost guard of any thread. */
static inline int
key_wanted_level(KeyObject *k)
{
    for (int lv = LEVEL_MAX; lv >= LEVEL_NONE; lv--) {
        if (k->counts[lv] > 0) {
            return lv;
        }
    }
    return k->base_level;
}

/* ---- Cross-unit state and functions (hidden) ------------------------------------------ */

/* _core.c */
CORE_HIDDEN extern int pku_enabled;
CORE_HIDDEN extern Py_ssize_t page_size;
CORE_HIDDEN PyObject *err(int which);
CORE_HIDDEN PyObject *raise_syscall_error(int which, int errnum, PyObject *message, const char *syscall_name);
CORE_HIDDEN PyObject *raise_errno(int errnum, const char *syscall_name);
CORE_HIDDEN int require_pku(void);
CORE_HIDDEN void write_unraisable(const char *where);

/* _keys.c */
CORE_HIDDEN extern KeyObject live_keys; /* the registry of open keys (a ring) */
CORE_HIDDEN extern Py_ssize_t live_key_count;
CORE_HIDDEN extern PyTypeObject Key_Type;
CORE_HIDDEN int region_protect(MappingObject *m, int level, int narrowing, int *lagging);
CORE_HIDDEN int key_apply_level(KeyObject *k, int level, int how);
CORE_HIDDEN PagePlan page_plan(KeyObject *k, int own_prot);
CORE_HIDDEN int page_plan_apply(MappingObject *m, PagePlan d);
CORE_HIDDEN int key_reserve(KeyObject *k);
CORE_HIDDEN int ended_finish(Ended *e);
CORE_HIDDEN int binding_end(BindingObject *b, int untag, Ended *out);
CORE_HIDDEN int binding_end_now(BindingObject *b, int untag);
CORE_HIDDEN PyObject *refuse_owned(int which, const char *what);
CORE_HIDDEN PyObject *raise_hidden(const char *what);

/* _mappings.c */
CORE_HIDDEN extern MappingObject wipe_list;
CORE_HIDDEN extern const char secret_unavailable_msg[];
CORE_HIDDEN extern PyTypeObject Mapping_Type;
CORE_HIDDEN int mapping_absent(MappingObject *m);
CORE_HIDDEN void fork_child(void);
CORE_HIDDEN int mapping_scrub(MappingObject *m, int in_place, const char **what);
CORE_HIDDEN void held_sweep(void);
CORE_HIDDEN int mapping_close_now(MappingObject *m, int *canary_ok);
CORE_HIDDEN void mapping_collect_wipe(MappingObject *m);
CORE_HIDDEN int raise_canary(MappingObject *m);

/* _bindings.c */
CORE_HIDDEN extern PyTypeObject Binding_Type;
CORE_HIDDEN PyObject *Key_bind(PyObject *op, PyObject *args);

/* _guards.c */
CORE_HIDDEN int guard_install_slots(void); /* _guardslots.c.h */
CORE_HIDDEN extern PyObject *stack_dict_key;
CORE_HIDDEN extern PyTypeObject StackOwner_Type;
CORE_HIDDEN extern PyObject *rights_members[LEVEL_COUNT];
CORE_HIDDEN extern PyTypeObject *guard_types[LEVEL_COUNT];
CORE_HIDDEN extern int guard_recyclable[LEVEL_COUNT];
CORE_HIDDEN extern PyTypeObject Guard_Type;
CORE_HIDDEN ThreadStack *get_stack(void);
CORE_HIDDEN void fork_child_expire_secure_views(void);
CORE_HIDDEN int fork_child_writing(MappingObject *m);
CORE_HIDDEN int guard_type_recyclable(PyTypeObject *t);
CORE_HIDDEN void guard_freelist_drain(void);
CORE_HIDDEN void guard_class_dealloc(PyObject *op);
CORE_HIDDEN GuardObject *guard_create(PyTypeObject *cls, KeyObject *k, BindingObject *b, int level, PyObject *enter_view);
CORE_HIDDEN PyObject *Binding_set_access_rights(PyObject *op, PyObject *rights);
CORE_HIDDEN PyObject *Binding_guard(PyObject *op, PyObject *args);
CORE_HIDDEN PyObject *core_register_association(PyObject *Py_UNUSED(m), PyObject *arg);
CORE_HIDDEN void released_init(Released *r);
CORE_HIDDEN int released_reserve(Released *r, Py_ssize_t need);
CORE_HIDDEN void released_drop(Released *r);
CORE_HIDDEN PyObject *raise_restore_failed(int e);
CORE_HIDDEN int guard_pop(GuardObject *g, int write_pkru, int apply, int force, Released *r);
CORE_HIDDEN Py_ssize_t stack_depth(ThreadStack *s, GuardObject *down_to);
CORE_HIDDEN int guard_activate(GuardObject *g, ThreadStack *s, int check_exports, GuardFailure *f);
CORE_HIDDEN void raise_failure(GuardObject *g, GuardFailure *f);
CORE_HIDDEN PyObject *raise_not_active(GuardObject *g);
CORE_HIDDEN Py_ssize_t stuck_count(GuardObject *below);
CORE_HIDDEN void stuck_retry(ThreadStack *s, Py_ssize_t most, int force, Released *r);
CORE_HIDDEN void stuck_mark(ThreadStack *s, GuardObject *down_to);
CORE_HIDDEN PyObject *Binding_end_stuck(PyObject *op, PyObject *arg);
CORE_HIDDEN PyObject *Key_guard(PyObject *op, PyObject *arg);

/* _views.c */
CORE_HIDDEN extern PyObject *str_value;
CORE_HIDDEN extern PyTypeObject View_Type;
CORE_HIDDEN ViewObject *view_alloc(PyTypeObject *cls);
CORE_HIDDEN void view_init(ViewObject *v, GuardObject *g, int writable);

/* _isolation.c */
CORE_HIDDEN extern PyTypeObject Group_Type;
CORE_HIDDEN PyObject *core_isolation(PyObject *Py_UNUSED(m), PyObject *allow);

#endif /* PKEYGUARD_CORE_H */
