/* A string in .rodata.str1.1 referenced PC-relatively (R_X86_64_PC32 to a
 * section symbol), passed to an extern called through the GOT. */
#include "jit.h"
extern IMPORTED void *ext_message(void *, const char *);
ENTRY {
    void *r = ext_message(sp[-1], "stencilcheck: a local string");
    if (r == 0) {
        JUMP(_JIT_ERROR_TARGET);
    }
    JUMP(_JIT_CONTINUE);
}
