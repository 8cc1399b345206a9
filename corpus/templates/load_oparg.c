/* Push the 16-bit oparg: movzwl through the GOT (R_X86_64_GOTPCREL, not
 * relaxable), then fall through to the next uop (the final jmp is cut). */
#include "jit.h"
ENTRY {
    sp[0] = (void *)(uintptr_t)OPARG;
    sp++;
    JUMP(_JIT_CONTINUE);
}
