/* The C-ABI entry into a trace: moves the C arguments into the registers
 * uops expect (preserve_none) and calls the first uop (GOTPCRELX call). */
#include "jit.h"
void *_JIT_ENTRY(frame *f, void **sp, tstate *ts) {
    return ((jit_func)_JIT_CONTINUE)(f, sp, ts);
}
