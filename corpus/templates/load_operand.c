/* Push the 64-bit operand: movq through the GOT (R_X86_64_REX_GOTPCRELX). */
#include "jit.h"
ENTRY {
    sp[0] = (void *)OPERAND;
    sp++;
    JUMP(_JIT_CONTINUE);
}
