/* A direct call to a hidden (non-preemptible) extern: R_X86_64_PLT32. */
#include "jit.h"
__attribute__((visibility("hidden"))) extern void *ext_hidden(void *, uint64_t);
ENTRY {
    sp[-1] = ext_hidden(sp[-1], OPARG);
    JUMP(_JIT_CONTINUE);
}
