/* The guest smoke test: pkey_alloc(2) and pkey_free(2) work (x86-64 numbers 330, 331). */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(void) {
    long key = syscall(330, 0UL, 0UL); /* pkey_alloc(flags, access_rights) */
    if (key < 0) {
        printf("pkey_alloc failed: %s\n", strerror(errno));
        return 1;
    }
    printf("pkey=%ld\n", key);
    return syscall(331, key) == 0 ? 0 : 2; /* pkey_free */
}
