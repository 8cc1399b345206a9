// stencilcheck-flags(x86_64): -fno-pic
/* Small code model without PIC: the oparg as a 32-bit immediate, zero- and
 * sign-extended (R_X86_64_32, R_X86_64_32S): patch_32. */
#include "jit.h"
ENTRY {
    sp[0] = (void *)(uintptr_t)OPARG;
    sp[1] = (void *)(uintptr_t)_JIT_OPARG;
    sp += 2;
    JUMP(_JIT_CONTINUE);
}
