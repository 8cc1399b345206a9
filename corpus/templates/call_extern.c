/* Call an extern through the GOT (call *: R_X86_64_GOTPCRELX); NULL goes to
 * the error target, otherwise continue. */
#include "jit.h"
extern IMPORTED void *ext_repr(void *);
ENTRY {
    void *r = ext_repr(sp[-1]);
    if (r == 0) {
        JUMP(_JIT_ERROR_TARGET);
    }
    sp[-1] = r;
    JUMP(_JIT_CONTINUE);
}
