/*
 * The fault reporter's interface to the rest of the core: a fixed table of the regions it can
 * name, written with the GIL held and read by an async-signal-safe SIGSEGV handler.
 */
#ifndef PKEYGUARD_FAULTS_H
#define PKEYGUARD_FAULTS_H

#include <Python.h>
#include <stddef.h>
#include <stdint.h>

#define FAULT_NAME_LEN 64
/* fault_table_set_pkey()'s values besides a key number (the hardware number on pku and sim, the
 * logical number on mprotect): */
#define FAULT_PKEY_NONE (-1)   /* not associated with a key */
#define FAULT_PKEY_PARKED (-2) /* its key holds no hardware number now (_keypool.h) */

/* Remember [addr, addr + len) under `label` (truncated), not associated with a key. */
void fault_table_add(uintptr_t addr, size_t len, const char *label);
/* The key that now tags the region at addr (or FAULT_PKEY_NONE, FAULT_PKEY_PARKED). */
void fault_table_set_pkey(uintptr_t addr, int pkey);
/* Forget the region at addr. */
void fault_table_remove(uintptr_t addr);

PyObject *faults_install(PyObject *module, PyObject *unused);
PyObject *faults_uninstall(PyObject *module, PyObject *unused);
PyObject *faults_installed(PyObject *module, PyObject *unused);

#endif /* PKEYGUARD_FAULTS_H */
