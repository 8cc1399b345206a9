/* Deopt-style guard: compare the top of the stack with an extern's address
 * (a GOT load) and leave for the jump target when it differs; the executor
 * pointer is stored in the frame (GOT load of _JIT_EXECUTOR). */
#include "jit.h"
extern IMPORTED char ExtType[];
ENTRY {
    if (*(void **)sp[-1] != (void *)ExtType) {
        JUMP(_JIT_JUMP_TARGET);
    }
    *(void **)f = (void *)_JIT_EXECUTOR;
    JUMP(_JIT_CONTINUE);
}
