// stencilcheck-flags(x86_64): -fno-pic -mcmodel=medium
/* Medium code model without PIC, as later CPythons build some targets:
 * movabs of the oparg and of an extern's address (R_X86_64_64), and a final
 * jmp rel32 to the continuation (R_X86_64_PLT32), which stays. */
#include "jit.h"
extern IMPORTED char ext_table[1 << 20];
ENTRY {
    sp[0] = (void *)(uintptr_t)ext_table[OPARG];
    sp++;
    JUMP(_JIT_CONTINUE);
}
