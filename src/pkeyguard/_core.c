/*
 * pkeyguard._core: the part of pkeyguard that must be native.
 *
 * This unit is the module: setup (core_exec: types, error classes, the fork handler),
 * registration from Python (_register_rights, _set_error_module...), the error helpers, the
 * RightsType metaclass, and the module functions.  The other units, one per job:
 *
 *   _keys.c       Key, the page plan, ending bindings, freeing keys
 *   _keypool.c    the hardware key numbers behind pku/sim keys (virtual keys)
 *   _mappings.c   Mapping and its backings, wiping, held ranges, fork
 *   _bindings.c   Binding: one Mapping bound to one Key
 *   _guards.c     Guard, the per-thread stacks, entry and exit (+ _guardslots.c.h)
 *   _views.c      View
 *   _isolation.c  isolated(): the Group of key-wide guards
 *   _faults.c     the SIGSEGV reporter
 *
 * with _core.h (the shared structs and hidden cross-unit functions), _arch.h (the
 * architecture seam) and _rights.h (the rights table).  Each unit starts with the ownership
 * rules that concern it.  The core owns every resource pkeyguard hands out, so that each is
 * released exactly once, in the right order, whatever order the objects die in (reference
 * counting, the cyclic GC, an exception raised by a signal handler at any bytecode,
 * interpreter exit).
 *
 * Every refusal that protects memory (closing a key or region, detaching or re-protecting a
 * region, entering a guard) is checked in the same C call that makes the change, with the GIL
 * held and before anything can run Python code, so no other thread, finalizer or signal
 * handler can slip in between.  Allocation happens before the checks, mutation after them.
 */

#include "_core.h"

int pku_enabled = 0; /* set once Python has proved OSPKE and a working pkey_alloc */
Py_ssize_t page_size = 4096;

/* ------------------------------------------------------------------------------------ */
/* Errors: looked up by name in pkeyguard._errors (registered at its import)           */

static const char *const err_names[E_COUNT] = {
    "GuardStateError", "GuardOrderError", "GuardThreadError", "ViewError", "AccessError",
    "PkuUnavailableError", "MprotectError", "RegionError", "KeyStateError", "CanaryError",
    "ArgumentTypeError", "SecretUnavailableError", "KeyExhaustedError",
};
static PyObject *err_classes[E_COUNT];

PyObject *
err(int which)
{
    if (err_classes[which] != NULL) {
        return err_classes[which];
    }
    switch (which) { /* before pkeyguard._errors registered itself */
    case E_VIEW: case E_REGION: return PyExc_ValueError;
    case E_ACCESS: return PyExc_PermissionError;
    case E_MPROTECT: case E_KEY_EXHAUSTED: return PyExc_OSError;
    case E_ARGTYPE: return PyExc_TypeError;
    default: return PyExc_RuntimeError;
    }
}

/* The one helper for "raise with the syscall's name": raise err(which)(errnum, message or
 * strerror(errnum)) with .syscall set (psutil-style "(originated from <syscall>)" comes from the
 * class's __str__).  Returns NULL. */
PyObject *
raise_syscall_error(int which, int errnum, PyObject *message, const char *syscall_name)
{
    PyObject *cls = err(which);
    PyObject *exc = message != NULL ? PyObject_CallFunction(cls, "iO", errnum, message)
                                    : PyObject_CallFunction(cls, "is", errnum, strerror(errnum));
    if (exc == NULL) {
        return NULL;
    }
    PyObject *name = PyUnicode_FromString(syscall_name);
    if (name == NULL || PyObject_SetAttrString(exc, "syscall", name) < 0) {
        Py_XDECREF(name);
        Py_DECREF(exc);
        return NULL;
    }
    Py_DECREF(name);
    PyErr_SetObject(cls, exc);
    Py_DECREF(exc);
    return NULL;
}

PyObject *
raise_errno(int errnum, const char *syscall_name)
{
    return raise_syscall_error(E_MPROTECT, errnum, NULL, syscall_name);
}

int
require_pku(void)
{
    if (!pku_enabled) {
        PyErr_SetString(err(E_PKU_UNAVAILABLE),
                        "RDPKRU/WRPKRU are not enabled: this process runs on the mprotect "
                        "backend (the CPU or kernel lacks PKU); see pkeyguard.backend()");
        return -1;
    }
    return 0;
}

/* Report an error that cannot be raised (a finalizer, a thread's end) and carry on. */
void
write_unraisable(const char *where)
{
    if (PyErr_Occurred()) {
        PyObject *msg = PyUnicode_FromString(where);
        PyErr_WriteUnraisable(msg);
        Py_XDECREF(msg);
    }
}

/* ------------------------------------------------------------------------------------ */
/* Small helpers                                                                        */

/* ------------------------------------------------------------------------------------ */
/* RightsType: the metaclass of PkeyPermissions                                         */
/*
 * 'PkeyPermissions.ReadWrite' is a class attribute lookup on an Enum class, and what it costs
 * depends on what CPython's specialiser does with a class whose metaclass is not 'type'
 * (Python/specialize.c, specialize_class_load_attr):
 *
 *   3.11     EnumType defines __getattr__, so every such lookup goes through
 *            slot_tp_getattr_hook and a Python-level call of type.__getattribute__ (~70 ns).
 *            Class attribute loads are not specialised at all (a plain class's is generic too).
 *   3.12-13  No hook, but only a class whose metaclass is exactly 'type' is specialised
 *            (PyType_CheckExact(owner)): every Enum's LOAD_ATTR stays generic.
 *   3.14     A class with a metaclass is specialised (LOAD_ATTR_CLASS_WITH_METACLASS_CHECK)
 *            if the metaclass keeps type's tp_getattro, but not when the value is an instance
 *            of a mutable class (classify_descriptor: MUTABLE), which an enum member is.
 *   3.15     The same, and a value whose class is the owner itself (an enum member) is
 *            specialised (gh-95004): EnumType's own members load as fast as a plain class's.
 *
 * So RightsType adds a C tp_getattro where the generic path is what runs (3.11-3.14): a
 * member is an entry of its class's own dict whose type is the class, and a name that finds
 * one returns it without EnumType's path; on 3.12-3.14 the last members found are kept in a
 * small cache checked against the class's version tag (which changes whenever its dict
 * does), so a hit is a few comparisons instead of a dict lookup.  From 3.15 on it adds
 * nothing: its own tp_getattro would stop the specialiser (SPEC_FAIL_ATTR_METACLASS_OVERRIDDEN).
 * Every other name takes EnumType's own path, so nothing else about the enum changes.
 */

#if PY_VERSION_HEX < 0x030F0000
#define RIGHTS_GETATTRO 1
#else
#define RIGHTS_GETATTRO 0
#endif

#if RIGHTS_GETATTRO

static PyObject *enum_type_getattr; /* EnumType.__getattr__ (3.11), or NULL (3.12+) */

/* Whether this slot may answer `name` on `cls` with `member`, an entry of cls's own dict, as
 * type.__getattribute__ would answer it:
 *   - the member's class is exactly cls and has no __get__ (type.__getattribute__ would call
 *     it: a member class that defines __get__ gets its result, not the member);
 *   - the name does not start with '_': no Enum member does (_sunder_ names are reserved,
 *     __dunder__ and private names are never members), while type's own getsets and setters
 *     (__annotations__, __abstractmethods__, __doc__, ...) keep their values in the same dict
 *     and replace them before the class's version tag changes;
 *   - the metaclass (RightsType, or a class whose __class__ was set to another) has no
 *     attribute of that name: a data descriptor there wins over the class's dict.
 * Anything else takes EnumType's own path, which is always right. */
static int
rights_member_is_answer(PyTypeObject *cls, PyObject *name, PyObject *member)
{
    return Py_IS_TYPE(member, cls) && cls->tp_descr_get == NULL &&
           PyUnicode_GET_LENGTH(name) > 0 && PyUnicode_READ_CHAR(name, 0) != '_' &&
           _PyType_Lookup(Py_TYPE(cls), name) == NULL;
}

#if PY_VERSION_HEX >= 0x030C0000 && !defined(Py_GIL_DISABLED)
#define RIGHTS_CACHE 4
/* (class, name) -> member, valid while the class's version tag and its metaclass's are the
 * ones recorded: a type's tag changes (or becomes 0) with any change to its dict, and a tag is
 * never given to two states of a type, nor to two types.  The entry holds the name and the
 * member (strong references): a member replaced in the dict by a setter that frees the old
 * value before it changes the tag (type.__setattr__ on 3.12) is stale for that moment, never
 * freed.  A hit still checks that the member's class is the class (`__class__` can be
 * assigned).  Protected by the GIL (a free-threaded build takes the dict path). */
static struct {
    PyObject *name;
    PyTypeObject *cls;
    unsigned int version;
    unsigned int meta_version;
    PyObject *member;
} rights_cache[RIGHTS_CACHE];
static int rights_cache_next;

static void
rights_cache_put(PyTypeObject *cls, PyObject *name, PyObject *member)
{
    PyTypeObject *meta = Py_TYPE(cls);
    if (!PyUnstable_Type_AssignVersionTag(cls) || cls->tp_version_tag == 0 ||
        !PyUnstable_Type_AssignVersionTag(meta) || meta->tp_version_tag == 0) {
        return; /* out of versions: the dict path stays correct */
    }
    int i = rights_cache_next;
    rights_cache_next = (i + 1) % RIGHTS_CACHE;
    PyObject *old_name = rights_cache[i].name;
    PyObject *old_member = rights_cache[i].member;
    /* The entry is whole before anything is released: the old member's finalizer may run
     * Python code that looks names up here. */
    rights_cache[i].name = Py_NewRef(name);
    rights_cache[i].cls = cls;
    rights_cache[i].version = cls->tp_version_tag;
    rights_cache[i].meta_version = meta->tp_version_tag;
    rights_cache[i].member = Py_NewRef(member);
    Py_XDECREF(old_name);
    Py_XDECREF(old_member);
}
#endif

static PyObject *
RightsType_getattro(PyObject *cls, PyObject *name)
{
    PyTypeObject *tp = (PyTypeObject *)cls;
#ifdef RIGHTS_CACHE
    for (int i = 0; i < RIGHTS_CACHE; i++) {
        if (rights_cache[i].name == name && rights_cache[i].cls == tp &&
            rights_cache[i].version == tp->tp_version_tag &&
            rights_cache[i].meta_version == Py_TYPE(tp)->tp_version_tag &&
            Py_IS_TYPE(rights_cache[i].member, tp)) {
            return Py_NewRef(rights_cache[i].member);
        }
    }
#endif
    if (PyUnicode_CheckExact(name)) {
        /* A type's dict has str keys only, and str hashing and comparison run no user code. */
        PyObject *member = PyDict_GetItemWithError(tp->tp_dict, name);
        if (member != NULL && rights_member_is_answer(tp, name, member)) {
            Py_INCREF(member); /* before the cache's own reference can release anything */
#ifdef RIGHTS_CACHE
            rights_cache_put(tp, name, member);
#endif
            return member;
        }
        if (member == NULL && PyErr_Occurred()) {
            return NULL;
        }
    }
    /* EnumType's own path, as slot_tp_getattr_hook takes it (calling that hook itself would
     * find this slot again through RightsType.__getattribute__): type.__getattribute__, then
     * EnumType.__getattr__ for a name it did not find. */
    PyObject *res = PyType_Type.tp_getattro(cls, name);
    if (res == NULL && enum_type_getattr != NULL &&
        PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Clear();
        res = PyObject_CallFunctionObjArgs(enum_type_getattr, cls, name, NULL);
    }
    return res;
}

#endif /* RIGHTS_GETATTRO */

static int
rights_type_add(PyObject *m)
{
    PyObject *enum_mod = PyImport_ImportModule("enum");
    if (enum_mod == NULL) {
        return -1;
    }
    PyObject *enum_type = PyObject_GetAttrString(enum_mod, "EnumType");
    Py_DECREF(enum_mod);
    if (enum_type == NULL) {
        return -1;
    }
    if (!PyType_Check(enum_type) ||
        !PyType_IsSubtype((PyTypeObject *)enum_type, &PyType_Type)) {
        Py_DECREF(enum_type);
        PyErr_SetString(PyExc_TypeError, "enum.EnumType is not a metaclass");
        return -1;
    }
#if RIGHTS_GETATTRO
    /* Its own __getattr__ only, not one inherited from type (there is none). */
    PyObject *hook = PyDict_GetItemString(((PyTypeObject *)enum_type)->tp_dict, "__getattr__");
    Py_XINCREF(hook);
    Py_XSETREF(enum_type_getattr, hook);
#endif
    PyType_Slot slots[] = {
#if RIGHTS_GETATTRO
        {Py_tp_getattro, (void *)RightsType_getattro},
        {Py_tp_doc, (void *)"EnumType whose member lookups skip EnumType's path (C)."},
#else
        {Py_tp_doc, (void *)"EnumType, as CPython specialises its members' lookups itself."},
#endif
        {0, NULL},
    };
    PyType_Spec spec = {
        .name = "pkeyguard._core.RightsType",
        .flags = Py_TPFLAGS_DEFAULT,
        .slots = slots,
    };
    PyObject *bases = PyTuple_Pack(1, enum_type);
    Py_DECREF(enum_type);
    if (bases == NULL) {
        return -1;
    }
    PyObject *t = PyType_FromSpecWithBases(&spec, bases);
    Py_DECREF(bases);
    if (t == NULL) {
        return -1;
    }
    int rc = PyModule_AddObjectRef(m, "RightsType", t);
    Py_DECREF(t);
    return rc;
}

/* ------------------------------------------------------------------------------------ */
/* Module functions                                                                     */

static PyObject *
core_cpuid_flags(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    int pku, ospke;
    arch_cpuid(&pku, &ospke);
    return Py_BuildValue("(OO)", pku ? Py_True : Py_False, ospke ? Py_True : Py_False);
}

/* Only called by Python after OSPKE was seen and pkey_alloc worked: before that, RDPKRU
 * would raise SIGILL. */
static PyObject *
core_enable_pku(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    int pku, ospke;
    arch_cpuid(&pku, &ospke);
    if (ospke) {
        pku_enabled = 1;
        Py_RETURN_TRUE;
    }
    PyErr_SetString(err(E_PKU_UNAVAILABLE), "cannot enable RDPKRU/WRPKRU: CPUID reports OSPKE off");
    return NULL;
}

static PyObject *
core_pku_enabled(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(pku_enabled);
}

static PyObject *
core_rdpkru(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    if (require_pku() < 0) {
        return NULL;
    }
    return PyLong_FromUnsignedLong(arch_reg_read());
}

/* level_of_bits(bits) -> the rights level one key's register field grants (the low
 * PKEY_BITS_PER_PKEY bits of `bits`): PkeyPermissions.from_pkru_bits asks the one decoder. */
static PyObject *
core_level_of_bits(PyObject *Py_UNUSED(m), PyObject *arg)
{
    PyObject *mask = PyLong_FromUnsignedLong(PKEY_MASK);
    if (mask == NULL) {
        return NULL;
    }
    PyObject *field = PyNumber_And(arg, mask);
    Py_DECREF(mask);
    if (field == NULL) {
        return NULL;
    }
    PyObject *index = PyNumber_Index(field); /* an int-like result (numpy's) */
    Py_DECREF(field);
    if (index == NULL) {
        return NULL;
    }
    unsigned long bits = PyLong_AsUnsignedLong(index);
    Py_DECREF(index);
    if (bits == (unsigned long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    return PyLong_FromLong(rights_level_of_bits((unsigned)bits));
}

/* probe_pkey_alloc() -> 0 if pkey_alloc works here, else its errno.  The probe key is
 * allocated access-disabled (pkey_alloc writes its bits into this thread's PKRU, and
 * pkey_free leaves them) and freed at once. */
static PyObject *
core_probe_pkey_alloc(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    long k = sys_pkey_alloc(0, PKEY_ALLOC_NO_ACCESS);
    if (k < 0) {
        return PyLong_FromLong(errno);
    }
    (void)sys_pkey_free(k);
    return PyLong_FromLong(0);
}

/* count_free_keys() -> how many keys pkey_alloc can still hand out (each allocated
 * access-disabled, then all freed). */
static PyObject *
core_count_free_keys(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    if (require_pku() < 0) {
        return NULL;
    }
    long keys[32];
    int n = 0;
    while (n < 32) {
        long k = sys_pkey_alloc(0, PKEY_ALLOC_NO_ACCESS);
        if (k < 0) {
            break;
        }
        keys[n++] = k;
    }
    for (int i = 0; i < n; i++) {
        (void)sys_pkey_free(keys[i]);
    }
    return PyLong_FromLong(n);
}

static PyObject *
core_thread_guards(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    /* This thread's active guards, innermost first. */
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        return NULL;
    }
    ThreadStack *s = tls_stack;
    for (GuardObject *g = s ? s->top : NULL; g != NULL; g = g->prev) {
        if (PyList_Append(out, (PyObject *)g) < 0) {
            Py_DECREF(out);
            return NULL;
        }
    }
    return out;
}

/* _walk_steps(): guards visited so far looking for a thread's guards on a key (tests: a view
 * access costs none, an entry a few, isolated() a few per key, whatever the number of keys). */
static PyObject *
core_walk_steps(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromUnsignedLongLong(walk_steps);
}

static PyObject *
core_live_key_count(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromSsize_t(live_key_count);
}

/* memfd_secret_errno(): 0 if memfd_secret(2) works here, else its errno.  The descriptor is
 * closed at once; whether to use secret memory is decided in Python (allocator.py). */
static PyObject *
core_memfd_secret_errno(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
#ifdef SYS_memfd_secret
    int fd = (int)syscall(SYS_memfd_secret, O_CLOEXEC);
    if (fd >= 0) {
        (void)close(fd);
        return PyLong_FromLong(0);
    }
    return PyLong_FromLong(errno);
#else
    return PyLong_FromLong(ENOSYS);
#endif
}

/* At interpreter exit (an atexit hook): every secure region still open is released (wiped,
 * then unmapped), except one that a guard is using right now (a daemon thread inside
 * reveal(), say): that one is wiped in place and left mapped with its rights, so the daemon
 * reads zeros instead of faulting. */
static PyObject *
core_wipe_at_exit(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    /* Collect first: releasing runs the test hook (Python code), which may change the list. */
    PyObject *all = PyList_New(0);
    if (all == NULL) {
        return NULL;
    }
    for (MappingObject *m = wipe_list.wipe_next; m != &wipe_list; m = m->wipe_next) {
        if (PyList_Append(all, (PyObject *)m) < 0) {
            Py_DECREF(all);
            return NULL;
        }
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(all); i++) {
        MappingObject *m = (MappingObject *)PyList_GET_ITEM(all, i);
        if (m->base == 0 || (m->flags & MAP_F_WIPED)) {
            continue;
        }
        BindingObject *b = m->binding;
        if (b != NULL && b->active > 0) {
            const char *what = NULL;
            int e = mapping_scrub(m, 1, &what);
            if (e != 0) {
                raise_errno(e, what);
                write_unraisable("pkeyguard: wiping a secure region in use at exit");
            }
            continue;
        }
        int canary_ok;
        if (mapping_close_now(m, &canary_ok) < 0) {
            write_unraisable("pkeyguard: releasing a secure region at exit");
        }
        else if (!canary_ok) {
            raise_canary(m);
            write_unraisable("pkeyguard: releasing a secure region at exit");
        }
    }
    Py_DECREF(all);
    Py_RETURN_NONE;
}

/* The errors and the rights are registered once per process, by the one pkeyguard package
 * that imported this core.  A second registration (the package's modules removed from
 * sys.modules and imported again, or a direct call) would swap the classes under every live
 * object, so it is refused. */
static int
refuse_second_registration(const char *what, int already)
{
    if (already) {
        PyErr_Format(PyExc_ImportError,
                     "pkeyguard: %s already registered; pkeyguard can be imported only once per "
                     "process (were its modules removed from sys.modules?)",
                     what);
        return -1;
    }
    return 0;
}

static PyObject *
core_set_error_module(PyObject *Py_UNUSED(m), PyObject *module)
{
    if (refuse_second_registration("the error classes are", err_classes[0] != NULL) < 0) {
        return NULL;
    }
    PyObject *found[E_COUNT];
    for (int i = 0; i < E_COUNT; i++) {
        found[i] = PyObject_GetAttrString(module, err_names[i]);
        if (found[i] == NULL || !PyExceptionClass_Check(found[i])) {
            for (int j = 0; j <= i; j++) {
                Py_XDECREF(found[j]);
            }
            if (!PyErr_Occurred()) {
                PyErr_Format(PyExc_TypeError, "%s is not an exception class", err_names[i]);
            }
            return NULL;
        }
    }
    for (int i = 0; i < E_COUNT; i++) {
        Py_XSETREF(err_classes[i], found[i]);
    }
    Py_RETURN_NONE;
}

/* _register_rights((NoAccess, ReadOnly, ReadWrite), (NoAccessGuard, ReadGuard, WriteGuard)):
 * LEVEL_COUNT of each, in the order of the RIGHTS table. */
static PyObject *
core_register_rights(PyObject *Py_UNUSED(m), PyObject *args)
{
    PyObject *members, *types;
    if (!PyArg_ParseTuple(args, "O!O!:_register_rights", &PyTuple_Type, &members, &PyTuple_Type,
                          &types)) {
        return NULL;
    }
    if (refuse_second_registration("the rights are", rights_members[0] != NULL) < 0) {
        return NULL;
    }
    if (PyTuple_GET_SIZE(members) != LEVEL_COUNT || PyTuple_GET_SIZE(types) != LEVEL_COUNT) {
        PyErr_Format(PyExc_ValueError, "%d rights and %d guard types", LEVEL_COUNT, LEVEL_COUNT);
        return NULL;
    }
    for (int i = 0; i < LEVEL_COUNT; i++) {
        PyObject *t = PyTuple_GET_ITEM(types, i);
        if (!PyType_Check(t) || !PyType_IsSubtype((PyTypeObject *)t, &Guard_Type)) {
            PyErr_SetString(PyExc_TypeError, "guard types must subclass Guard");
            return NULL;
        }
    }
    guard_freelist_drain(); /* memory laid out for the classes registered before */
    for (int i = 0; i < LEVEL_COUNT; i++) {
        PyTypeObject *t = (PyTypeObject *)PyTuple_GET_ITEM(types, i);
        guard_recyclable[i] = guard_type_recyclable(t);
        if (guard_recyclable[i]) {
            t->tp_dealloc = guard_class_dealloc;
        }
        Py_INCREF(PyTuple_GET_ITEM(members, i));
        Py_XSETREF(rights_members[i], PyTuple_GET_ITEM(members, i));
        Py_INCREF(t);
        Py_XSETREF(guard_types[i], t);
    }
    Py_RETURN_NONE;
}

static PyMethodDef core_methods[] = {
    {"cpuid_flags", core_cpuid_flags, METH_NOARGS, "(pku, ospke) from CPUID leaf 7."},
    {"enable_pku", core_enable_pku, METH_NOARGS, "Allow RDPKRU/WRPKRU (internal)."},
    {"_pool_stats", core_pool_stats, METH_O,
     "_pool_stats(mode): the hardware-key pool's gauges and counters."},
    {"_pool_limit", core_pool_limit, METH_VARARGS,
     "_pool_limit(mode, n): the most hardware keys the pool may hold; returns the old limit."},
    {"_pool_thread_seen", core_pool_thread_seen, METH_NOARGS,
     "_pool_thread_seen(): register this thread with the key pools now (tests)."},
    {"_pool_sync", core_pool_sync, METH_O,
     "_pool_sync(mode): sync this thread's bits with the pool now, as a guard entry does."},
    {"_sim_pkru", core_sim_pkru, METH_NOARGS, "This thread's simulated PKRU (MODE_SIM)."},
    {"_sim_set_pkru", core_sim_set_pkru, METH_O,
     "Set this thread's simulated PKRU (MODE_SIM; models inheritance at thread creation)."},
    {"pku_enabled", core_pku_enabled, METH_NOARGS, NULL},
    {"rdpkru", core_rdpkru, METH_NOARGS, "This thread's PKRU."},
    {"level_of_bits", core_level_of_bits, METH_O,
     "The rights level one key's register field grants (its low bits)."},
    {"probe_pkey_alloc", core_probe_pkey_alloc, METH_NOARGS,
     "0 if pkey_alloc works here, else its errno (no key is left allocated)."},
    {"count_free_keys", core_count_free_keys, METH_NOARGS,
     "How many keys pkey_alloc can still hand out (pku only)."},
    {"thread_guards", core_thread_guards, METH_NOARGS, "This thread's active guards, innermost first."},
    {"live_key_count", core_live_key_count, METH_NOARGS, "Open keys (pku and mprotect)."},
    {"_walk_steps", core_walk_steps, METH_NOARGS,
     "Guards visited looking for a thread's guards on a key, since the start (tests)."},
    {"isolation", core_isolation, METH_O, "isolation(allow): NoAccess on every other open key."},
    {"wipe_at_exit", core_wipe_at_exit, METH_NOARGS, NULL},
    {"memfd_secret_errno", core_memfd_secret_errno, METH_NOARGS,
     "0 if memfd_secret(2) works here, else the errno it gave."},
    {"_set_error_module", core_set_error_module, METH_O, NULL},
    {"_register_rights", core_register_rights, METH_VARARGS, NULL},
    {"_register_association", core_register_association, METH_O,
     "Give a Binding subclass its own set_access_rights (a specialisable C method call)."},
    {"faults_install", faults_install, METH_NOARGS, "Install the fault reporter."},
    {"faults_uninstall", faults_uninstall, METH_NOARGS, NULL},
    {"faults_installed", faults_installed, METH_NOARGS, "Whether the reporter is the SIGSEGV handler now."},
    {NULL, NULL, 0, NULL},
};

/* Multi-phase init.  The core's state (the types, the thread stacks, the registries of open
 * keys and secure regions) is process-wide and relies on the GIL for atomicity, so the
 * module says so: one interpreter only, and on a free-threaded build it keeps the GIL on. */
static int core_executed;

static int
core_exec(PyObject *m)
{
    /* Py_mod_multiple_interpreters only stops isolated subinterpreters; a legacy one (shared
     * GIL) would run this again and re-register the errors and rights of its own copy of the
     * package under the main interpreter's objects.  So: the main interpreter, once. */
    if (PyInterpreterState_Get() != PyInterpreterState_Main()) {
        PyErr_SetString(PyExc_ImportError,
                        "pkeyguard._core can be imported only in the main interpreter (its state "
                        "is process-wide); subinterpreters are not supported");
        return -1;
    }
    if (core_executed) {
        PyErr_SetString(PyExc_ImportError,
                        "pkeyguard._core is already loaded in this process and cannot be loaded "
                        "again (its state is process-wide; was it removed from sys.modules?)");
        return -1;
    }
    /* The rights table must decode: a register field maps back to one level only if no two
     * rows allow the same (reads, writes). */
    for (int a = 0; a < LEVEL_COUNT; a++) {
        for (int b = a + 1; b < LEVEL_COUNT; b++) {
            if (RIGHTS[a].reads == RIGHTS[b].reads && RIGHTS[a].writes == RIGHTS[b].writes) {
                PyErr_Format(PyExc_SystemError,
                             "pkeyguard._core: rights %s and %s allow the same access "
                             "(_rights.h): a register field could not say which it is",
                             RIGHTS[a].name, RIGHTS[b].name);
                return -1;
            }
        }
    }
    page_size = sysconf(_SC_PAGESIZE);
    pools_init();
    if (stack_dict_key == NULL) {
        stack_dict_key = PyUnicode_InternFromString("pkeyguard._core.thread_stack");
        if (stack_dict_key == NULL) {
            return -1;
        }
    }
    if (str_value == NULL) {
        str_value = PyUnicode_InternFromString("value");
        if (str_value == NULL) {
            return -1;
        }
    }
    if (rights_type_add(m) < 0) {
        return -1;
    }
    if (!(Guard_Type.tp_flags & Py_TPFLAGS_READY)) {
        if (PyType_Ready(&Guard_Type) < 0 || guard_install_slots() < 0) {
            return -1;
        }
    }
    if (PyType_Ready(&Key_Type) < 0 || PyType_Ready(&Mapping_Type) < 0 ||
        PyType_Ready(&Binding_Type) < 0 || PyType_Ready(&View_Type) < 0 ||
        PyType_Ready(&Group_Type) < 0 || PyType_Ready(&StackOwner_Type) < 0) {
        return -1;
    }
    if (PyModule_AddObjectRef(m, "Key", (PyObject *)&Key_Type) < 0 ||
        PyModule_AddObjectRef(m, "Mapping", (PyObject *)&Mapping_Type) < 0 ||
        PyModule_AddObjectRef(m, "Binding", (PyObject *)&Binding_Type) < 0 ||
        PyModule_AddObjectRef(m, "Guard", (PyObject *)&Guard_Type) < 0 ||
        PyModule_AddObjectRef(m, "View", (PyObject *)&View_Type) < 0 ||
        PyModule_AddIntConstant(m, "MODE_NOP", MODE_NOP) < 0 ||
        PyModule_AddIntConstant(m, "MODE_PKU", MODE_PKU) < 0 ||
        PyModule_AddIntConstant(m, "MODE_MPROTECT", MODE_MPROTECT) < 0 ||
        PyModule_AddIntConstant(m, "MODE_SIM", MODE_SIM) < 0 ||
        PyModule_AddIntConstant(m, "PAGE_SIZE", page_size) < 0 ||
        PyModule_AddIntConstant(m, "PROT_NONE", PROT_NONE) < 0 ||
        PyModule_AddIntConstant(m, "PROT_READ", PROT_READ) < 0 ||
        PyModule_AddIntConstant(m, "PROT_WRITE", PROT_WRITE) < 0 ||
        PyModule_AddIntConstant(m, "PROT_EXEC", PROT_EXEC) < 0) {
        return -1;
    }
    /* fork_child(): zero pages in a fork child where secret memory was (see "Fork"). */
    static int atfork_registered = 0;
    if (!atfork_registered) {
        int e = pthread_atfork(NULL, NULL, fork_child);
        if (e != 0) {
            raise_errno(e, "pthread_atfork");
            return -1;
        }
        atfork_registered = 1;
    }
    PyObject *max_size = PyLong_FromSize_t(MAX_REGION_SIZE);
    if (max_size == NULL) {
        return -1;
    }
    int rc = PyModule_AddObjectRef(m, "MAX_REGION_SIZE", max_size);
    Py_DECREF(max_size);
    if (rc < 0) {
        return -1;
    }
    /* RIGHTS: ((name, pkru_bits), ...) by level, from the one table in _rights.h. */
    PyObject *rights = PyTuple_New(LEVEL_COUNT);
    if (rights == NULL) {
        return -1;
    }
    for (int level = 0; level < LEVEL_COUNT; level++) {
        PyObject *row = Py_BuildValue("(sI)", RIGHTS[level].name, RIGHTS[level].bits);
        if (row == NULL) {
            Py_DECREF(rights);
            return -1;
        }
        PyTuple_SET_ITEM(rights, level, row);
    }
    rc = PyModule_AddObjectRef(m, "RIGHTS", rights);
    Py_DECREF(rights);
    if (rc == 0) {
        core_executed = 1;
    }
    return rc;
}

static PyModuleDef_Slot core_slots[] = {
    {Py_mod_exec, core_exec},
#if PY_VERSION_HEX >= 0x030C0000
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#endif
#if PY_VERSION_HEX >= 0x030D0000
    {Py_mod_gil, Py_MOD_GIL_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "pkeyguard._core",
    .m_doc = "Native core of pkeyguard: pkey syscalls, PKRU access, keys, memory, guards and "
             "views.",
    .m_size = 0,
    .m_methods = core_methods,
    .m_slots = core_slots,
};

PyMODINIT_FUNC
PyInit__core(void)
{
    return PyModuleDef_Init(&core_module);
}
