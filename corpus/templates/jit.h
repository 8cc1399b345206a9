/* Shared declarations for stencilcheck's own copy-and-patch templates.
 * Written for stencilcheck (not CPython's): the same shape as CPython's
 * Tools/jit/template.c, tiny bodies. preserve_none convention:
 * frame r12, stack_pointer r13, tstate r14 (DOMAIN.md section 5). */
/* No libc headers: cross-compiling needs no sysroot. */
typedef __UINT16_TYPE__ uint16_t;
typedef __UINT64_TYPE__ uint64_t;
typedef __UINTPTR_TYPE__ uintptr_t;

typedef struct frame frame;
typedef struct tstate tstate;
typedef __attribute__((preserve_none)) void *(*jit_func)(frame *, void **, tstate *);

/* Windows: CPython's externs (Python.h's PyAPI_FUNC/PyAPI_DATA) and the
 * _JIT_* symbols are dllimport, so the code reaches them through `__imp_`
 * slots, which CPython turns into GOT entries. Nothing elsewhere. */
#ifdef _WIN32
#define IMPORTED __declspec(dllimport)
#else
#define IMPORTED
#endif

extern IMPORTED char _JIT_CONTINUE[], _JIT_JUMP_TARGET[], _JIT_ERROR_TARGET[], _JIT_TOP[];
extern IMPORTED char _JIT_EXECUTOR[], _JIT_OPARG[], _JIT_OPERAND[], _JIT_TARGET[], _JIT_EXIT_INDEX[];

#define ENTRY __attribute__((preserve_none)) void *_JIT_ENTRY(frame *f, void **sp, tstate *ts)
#define JUMP(SYM) do { __attribute__((musttail)) return ((jit_func)SYM)(f, sp, ts); } while (0)
#define OPARG ((uint16_t)(uintptr_t)_JIT_OPARG)
#define OPERAND ((uint64_t)(uintptr_t)_JIT_OPERAND)
