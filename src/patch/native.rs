//! [`NativePatcher`]: the user's own `Python/jit.c` patch functions, compiled
//! at run time and called on an exact byte image of the placed memory, in a
//! worker process of their own.
//!
//! 1. [`extract`] reads `jit.c` with a small C-aware scanner (comments,
//!    strings, character literals, preprocessor lines, brace depth) and keeps
//!    every top-level `patch_*(unsigned char *, uint64_t)` function
//!    definition plus, transitively, every function and `#define` they name
//!    (`get_bits`, `set_bits`, `IS_AARCH64_*`, ...). Function heads are read
//!    by [`parse_head`], which skips attributes (`__attribute__((...))`
//!    anywhere, `[[...]]`), storage classes and qualifiers, so
//!    `__attribute__((noinline)) static void h(void)` is `h`. Nothing else of
//!    `jit.c` is compiled (it needs `Python.h`).
//! 2. [`generate`] writes one C program, the **patch worker**: standard
//!    headers; an `assert` that records the condition, function and `jit.c`
//!    line and `siglongjmp`s back; `malloc`/`calloc`/`realloc`/`free`
//!    redefined to a guarded heap (guard bytes around every block, checked
//!    at `free`/`realloc` and after every call, from a block table outside
//!    the heap); the extracted code under `#line` directives (so asserts and
//!    compiler errors name `jit.c`'s own lines); a table of the entry points
//!    ([`Extracted::entry_points`], in order) and a `main` that serves
//!    requests.
//! 3. The system C compiler (`$CC`, else `cc`) builds it (`CFLAGS`: `-O2`,
//!    stack protector, `_FORTIFY_SOURCE`, `-Werror=` for implicit
//!    declarations, implicit `int`, missing returns and pointer/integer
//!    confusion, so an undefined helper is bad input naming it; linked with
//!    `-z now`, every symbol bound at start-up). The executable is cached by
//!    a content hash of the C, compiler and flags under
//!    `$XDG_CACHE_HOME/stencilcheck` (else `~/.cache/stencilcheck`, else the
//!    temp dir).
//! 4. **Worker protocol.** The worker runs with stdin/stdout as pipes from
//!    us; at start it moves them to private descriptors (requests in,
//!    replies out), points its fd 0 at `/dev/null` and its fds 1 and 2 at a
//!    third pipe whose read end we keep (non-blocking), and says hello. A
//!    request (native-endian) is `magic, entry, location, value, nranges,
//!    nregions`, the page ranges, `(address, length)` of each non-empty image
//!    region, then the regions' bytes. The worker maps the page ranges at
//!    their addresses (`MAP_FIXED_NOREPLACE`; kept while the next request
//!    names the same pages, so one emit maps once), fills them with `0xa5`,
//!    copies the image in, calls the function (SIGSEGV, SIGBUS, SIGFPE,
//!    SIGILL and SIGTRAP are caught on an alternate stack and `siglongjmp`
//!    back; an `alarm` ends it if we are gone), checks that its stdout and
//!    stderr are still the files they were, that the guarded heap is intact
//!    and that no mapped byte outside the image changed, and replies
//!    `magic, status, msglen, datalen`, the regions' bytes and a message.
//! 5. [`NativePatcher::patch`] takes an idle worker from a pool (or starts
//!    one), sends the call and waits for the reply at most
//!    [`DEFAULT_TIME_LIMIT`] (see [`NativePatcher::with_time_limit`]). Then
//!    it reads whatever the worker wrote to its stdout/stderr. The outcome:
//!    - done, nothing printed: the regions' bytes go back into the image;
//!    - a fired `assert`, a wild access (SIGSEGV/SIGBUS, like the ports'
//!      "outside the image") or a write outside the image on the mapped
//!      pages: a [`FailureKind::Assert`] failure (a `patch_assert` finding);
//!    - the pages are taken in the worker: [`FailureKind::Unusable`];
//!    - the worker exited (any status), died of a signal, did not answer in
//!      time (it is killed), printed anything, closed or replaced its
//!      stdout/stderr, damaged its heap, trapped (SIGFPE, SIGILL, SIGTRAP)
//!      or garbled its reply: a [`FailureKind::Crash`] failure naming the
//!      function, its location and value. After [`HANG_BUDGET`] timeouts of
//!      one function its further calls fail that way at once.
//!
//!    A worker goes back to the pool only after a clean call, an assert, a
//!    stray write or an unusable placement; after anything else it is
//!    killed and the next call gets a fresh one. Threads patch in parallel,
//!    each with its own worker. Nothing the C does reaches stencilcheck's
//!    own memory, stdout or stderr.
//!
//! Why a separate program rather than re-executing stencilcheck or forking:
//! it needs nothing from the calling process (the tests call
//! [`crate::cli::run`] inside the test binary, and forking a threaded
//! process before `dlopen` is unsafe), it starts in about a millisecond, and
//! its address space holds little that could collide with a placement.
//!
//! Limits: code that sets out to defeat the worker (forging replies on the
//! private descriptors, catching the signals itself, forking, exhausting
//! memory more slowly than the time limit) can; the worker guards against
//! accidents and bugs, not against an adversary. Heap damage is seen only
//! in blocks the jit.c allocated through `malloc`/`calloc`/`realloc` (not
//! `strdup` and friends, which go to the C library unchecked).

use super::{FailureKind, Image, PatchAssert, Patcher, Region};
use crate::error::BadInput;
use crate::model::{EmitOp, PatchFn, StencilSet};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// The extractor
// ---------------------------------------------------------------------------

/// A top-level item of a C file the extractor keeps track of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub kind: ItemKind,
    pub name: String,
    /// 1-based line of the item's first character.
    pub line: usize,
    pub text: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemKind {
    Macro,
    Function,
}

impl Item {
    /// For a function: the text before its body, i.e. its prototype without `;`.
    pub fn signature(&self) -> &str {
        let body = brace_at_depth0(&self.text).unwrap_or(self.text.len());
        self.text[..body].trim_end()
    }

    /// For a function: its name and parameter list as [`parse_head`] reads them.
    pub fn head(&self) -> Option<Head> {
        (self.kind == ItemKind::Function).then(|| parse_head(self.signature())).flatten()
    }
}

/// Byte offset of the first `{` outside comments/strings.
fn brace_at_depth0(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if let Some(next) = skip_lexical(b, i) {
            i = next;
            continue;
        }
        if b[i] == b'{' {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// If `b[i..]` starts a comment, string or character literal, the offset just
/// after it.
fn skip_lexical(b: &[u8], i: usize) -> Option<usize> {
    match b[i] {
        b'/' if b.get(i + 1) == Some(&b'/') => {
            let mut j = i;
            while j < b.len() && b[j] != b'\n' {
                j += 1;
            }
            Some(j)
        }
        b'/' if b.get(i + 1) == Some(&b'*') => {
            let mut j = i + 2;
            while j + 1 < b.len() && !(b[j] == b'*' && b[j + 1] == b'/') {
                j += 1;
            }
            Some((j + 2).min(b.len()))
        }
        q @ (b'"' | b'\'') => {
            let mut j = i + 1;
            while j < b.len() && b[j] != q && b[j] != b'\n' {
                if b[j] == b'\\' {
                    j += 1;
                }
                j += 1;
            }
            Some((j + 1).min(b.len()))
        }
        _ => None,
    }
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_'
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Identifiers in `text` outside comments, strings and character literals.
pub fn identifiers(text: &str) -> Vec<&str> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if let Some(next) = skip_lexical(b, i) {
            i = next;
            continue;
        }
        if is_ident_start(b[i]) {
            let s = i;
            while i < b.len() && is_ident(b[i]) {
                i += 1;
            }
            out.push(&text[s..i]);
        } else if b[i].is_ascii_digit() {
            while i < b.len() && is_ident(b[i]) {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    out
}

/// Scans a C file's top level: every `#define` and every function definition
/// (a `{...}` block at depth 0 preceded by `)` and no `=`). Declarations,
/// initialisers, `#if`/`#include` lines are skipped.
pub fn scan(src: &str) -> Vec<Item> {
    let b = src.as_bytes();
    let line_of = |pos: usize| src[..pos].bytes().filter(|&c| c == b'\n').count() + 1;
    let mut items = Vec::new();
    let mut i = 0;
    let mut start: Option<usize> = None; // start of the current top-level item
    let mut at_line_start = true;
    while i < b.len() {
        let c = b[i];
        if c == b'\n' {
            at_line_start = true;
            i += 1;
            continue;
        }
        if c == b' ' || c == b'\t' || c == b'\r' || c == b'\x0c' {
            i += 1;
            continue;
        }
        if c == b'#' && at_line_start {
            // A preprocessor line, with continuations.
            let s = i;
            let mut j = i;
            while j < b.len() {
                if b[j] == b'\n' && (j == 0 || b[j - 1] != b'\\') {
                    break;
                }
                j += 1;
            }
            let text = &src[s..j];
            let rest = text[1..].trim_start();
            if let Some(def) = rest.strip_prefix("define") {
                let def = def.trim_start();
                let name: String = def.bytes().take_while(|&c| is_ident(c)).map(char::from).collect();
                if !name.is_empty() && start.is_none() {
                    items.push(Item { kind: ItemKind::Macro, name, line: line_of(s), text: text.to_string() });
                }
            }
            if rest.strip_prefix("if").is_some_and(|r| r.trim() == "0") {
                // `#if 0`: skip to its `#else`/`#elif`/`#endif`.
                j = skip_if0(src, j);
            }
            i = j;
            continue;
        }
        at_line_start = false;
        if let Some(next) = skip_lexical(b, i) {
            i = next;
            continue;
        }
        // Ordinary token at depth 0: begins or continues an item.
        let s = *start.get_or_insert(i);
        match c {
            b';' => {
                start = None;
                i += 1;
            }
            b'{' => {
                // Find the matching brace.
                let mut depth = 0usize;
                let mut j = i;
                while j < b.len() {
                    if let Some(next) = skip_lexical(b, j) {
                        j = next;
                        continue;
                    }
                    match b[j] {
                        b'{' => depth += 1,
                        b'}' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    j += 1;
                }
                let end = (j + 1).min(b.len());
                if let Some(head) = parse_head(&src[s..i]) {
                    items.push(Item {
                        kind: ItemKind::Function,
                        name: head.name,
                        line: line_of(s),
                        text: src[s..end].to_string(),
                    });
                    start = None;
                }
                // Not a function (struct/initialiser): the item ends at its `;`.
                i = end;
            }
            _ => i += 1,
        }
    }
    items
}

/// From the end of an `#if 0` line: the offset of the line that ends its
/// block (`#else`, `#elif` or `#endif` at the same nesting), which the
/// scanner then reads as an ordinary directive.
fn skip_if0(src: &str, from: usize) -> usize {
    let mut depth = 0usize;
    let mut pos = from;
    for line in src[from..].split_inclusive('\n') {
        let t = line.trim_start();
        if let Some(d) = t.strip_prefix('#') {
            let d = d.trim_start();
            if d.starts_with("if") {
                depth += 1;
            } else if d.starts_with("endif") || d.starts_with("else") || d.starts_with("elif") {
                if depth == 0 {
                    return pos + (line.len() - t.len());
                }
                if d.starts_with("endif") {
                    depth -= 1;
                }
            }
        }
        pos += line.len();
    }
    src.len()
}

fn strip_comments(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        if (b[i] == b'/') && matches!(b.get(i + 1), Some(b'/') | Some(b'*')) {
            i = skip_lexical(b, i).unwrap();
            out.push(' ');
            continue;
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

/// What [`parse_head`] reads off a function definition's head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub name: String,
    /// The parameter list, parentheses included, attributes blanked out.
    pub params: String,
}

/// Words followed by a parenthesised group that is not the declarator:
/// GNU/MSVC attributes, asm labels, and type operators.
const NOT_DECLARATOR: &[&str] = &[
    "__attribute__",
    "__attribute",
    "__declspec",
    "__asm__",
    "__asm",
    "asm",
    "_Alignas",
    "alignas",
    "__typeof__",
    "__typeof",
    "typeof",
    "_Atomic",
    "sizeof",
    "_Alignof",
    "alignof",
    "_Generic",
];

/// Offset of the `)` (or `]`) closing the group opened at `open`, skipping
/// comments, strings and character literals.
fn matching(b: &[u8], open: usize) -> Option<usize> {
    let (o, c) = (b[open], if b[open] == b'(' { b')' } else { b']' });
    let mut depth = 0usize;
    let mut i = open;
    while i < b.len() {
        if let Some(next) = skip_lexical(b, i) {
            i = next;
            continue;
        }
        if b[i] == o {
            depth += 1;
        } else if b[i] == c {
            depth -= 1;
            if depth == 0 {
                return Some(i);
            }
        }
        i += 1;
    }
    None
}

/// `text` (comments already stripped) with every attribute-like group
/// (`__attribute__((...))`, `__declspec(...)`, `asm("...")`, `_Alignas(...)`,
/// `[[...]]`) replaced by spaces, so offsets stay the same.
fn blank_attributes(text: &str) -> String {
    let mut b = text.as_bytes().to_vec();
    let mut i = 0;
    while i < b.len() {
        if let Some(next) = skip_lexical(&b, i) {
            i = next;
            continue;
        }
        if b[i] == b'[' && b.get(i + 1) == Some(&b'[') {
            if let Some(close) = matching(&b, i) {
                b[i..=close].fill(b' ');
                i = close + 1;
                continue;
            }
        }
        if is_ident_start(b[i]) {
            let s = i;
            while i < b.len() && is_ident(b[i]) {
                i += 1;
            }
            if NOT_DECLARATOR.contains(&&text[s..i]) {
                let mut j = i;
                while j < b.len() && b[j].is_ascii_whitespace() {
                    j += 1;
                }
                let end = if j < b.len() && b[j] == b'(' { matching(&b, j).map_or(b.len(), |c| c + 1) } else { i };
                b[s..end].fill(b' ');
                i = end;
            }
            continue;
        }
        if b[i].is_ascii_digit() {
            while i < b.len() && is_ident(b[i]) {
                i += 1;
            }
            continue;
        }
        i += 1;
    }
    String::from_utf8(b).expect("only ASCII bytes were replaced")
}

/// Reads a top-level `head {` as a function definition: attributes
/// (`__attribute__((...))` anywhere, `[[...]]`), storage classes (`static`,
/// `extern`, `inline`) and qualifiers are skipped; the name is the first
/// identifier directly followed by a `(` not opening with `*`, at the
/// shallowest parenthesis depth (so `void (*f(int))(void)` is `f`); its group
/// is the parameter list.
/// None for anything else (`struct s {`, `int a[] = {`, ...).
pub fn parse_head(head: &str) -> Option<Head> {
    let clean = blank_attributes(&strip_comments(head));
    let t = clean.trim_end();
    if !t.ends_with(')') || t.contains('=') {
        return None;
    }
    let b = clean.as_bytes();
    let mut best: Option<(usize, usize, usize, usize)> = None; // depth, name start, name end, `(`
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if is_ident_start(c) {
            let s = i;
            while i < b.len() && is_ident(b[i]) {
                i += 1;
            }
            let mut j = i;
            while j < b.len() && b[j].is_ascii_whitespace() {
                j += 1;
            }
            // `type (*name(params))(...)`: a group opening with `*` is a
            // declarator, not a parameter list.
            let declarator = b[j + 1..].iter().find(|c| !c.is_ascii_whitespace()) == Some(&b'*');
            if j < b.len() && b[j] == b'(' && !declarator && best.is_none_or(|(d, ..)| depth < d) {
                best = Some((depth, s, i, j));
            }
            continue;
        }
        if c.is_ascii_digit() {
            while i < b.len() && is_ident(b[i]) {
                i += 1;
            }
            continue;
        }
        match c {
            b'(' => depth += 1,
            b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    let (_, s, e, open) = best?;
    let close = matching(b, open)?;
    Some(Head { name: clean[s..e].to_string(), params: clean[open..=close].to_string() })
}

/// What [`extract`] keeps of a `jit.c`.
#[derive(Clone, Debug)]
pub struct Extracted {
    /// Kept items in file order.
    pub items: Vec<Item>,
    /// The `patch_*` functions with the `(unsigned char *, uint64_t)`
    /// signature: the ones that get a wrapper.
    pub entry_points: Vec<String>,
}

/// Every `patch_*(unsigned char *location, uint64_t value)` function
/// definition plus the functions and macros they use, transitively.
/// Functions with other signatures (main's `patch_aarch64_trampoline(location,
/// ordinal, jit_state *)`, which needs the header's `symbols_map`) are left
/// out unless a kept function calls them.
pub fn extract(src: &str) -> Extracted {
    let all = scan(src);
    // The last definition of a name wins (like the compiler would complain
    // otherwise; `#ifdef` alternatives are rare in the patch functions).
    let mut by_name: BTreeMap<&str, usize> = BTreeMap::new();
    for (k, item) in all.iter().enumerate() {
        by_name.insert(&item.name, k);
    }
    let mut keep: BTreeSet<usize> = BTreeSet::new();
    let mut todo: Vec<usize> = all
        .iter()
        .enumerate()
        .filter(|(_, it)| {
            it.kind == ItemKind::Function
                && it.name.starts_with("patch_")
                && it.head().is_some_and(|h| is_location_value(&h.params))
        })
        .map(|(k, _)| k)
        .collect();
    while let Some(k) = todo.pop() {
        if !keep.insert(k) {
            continue;
        }
        for id in identifiers(&all[k].text) {
            if let Some(&j) = by_name.get(id) {
                if j != k && !keep.contains(&j) && id != "assert" {
                    todo.push(j);
                }
            }
        }
    }
    let items: Vec<Item> = keep.into_iter().map(|k| all[k].clone()).collect();
    let entry_points = items
        .iter()
        .filter(|it| it.kind == ItemKind::Function && it.name.starts_with("patch_"))
        .filter(|it| it.head().is_some_and(|h| is_location_value(&h.params)))
        .map(|it| it.name.clone())
        .collect();
    Extracted { items, entry_points }
}

/// True for the parameter list `(unsigned char *x, uint64_t y)` (or
/// `uintptr_t y`).
fn is_location_value(params: &str) -> bool {
    let params: String = params.chars().filter(|c| !c.is_whitespace()).collect();
    let params = params.strip_prefix('(').and_then(|p| p.strip_suffix(')')).unwrap_or(&params);
    let parts: Vec<&str> = params.split(',').collect();
    parts.len() == 2
        && parts[0].starts_with("unsignedchar*")
        && (parts[1].starts_with("uint64_t") || parts[1].starts_with("uintptr_t"))
}

// ---------------------------------------------------------------------------
// The generated C: the user's patch functions inside a worker program
// ---------------------------------------------------------------------------

/// Before the user's code: headers, the call state, `assert`, the guarded
/// heap and the signal handler. The user's code sees `assert`, `malloc`,
/// `calloc`, `realloc` and `free` redefined to ours.
const PRELUDE: &str = r#"/* Generated by stencilcheck from a user's jit.c: do not commit. */
#define _GNU_SOURCE 1
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* The call in progress (the worker is single-threaded). */
enum { SC_OK, SC_ASSERT, SC_FAULT, SC_UNUSABLE, SC_STRAY, SC_CRASH };
static sigjmp_buf sc_jmp;
static volatile sig_atomic_t sc_active;
static char sc_msg[1024];
static const char *volatile sc_current = "?";

static void
sc_assert_fail(const char *cond, const char *func, int line)
{
    snprintf(sc_msg, sizeof sc_msg, "assert(%s) failed in %s (jit.c line %d)", cond, func, line);
    if (sc_active) {
        sc_active = 0;
        siglongjmp(sc_jmp, SC_ASSERT);
    }
    abort();
}

/* The jit.c's own malloc/calloc/realloc/free: each block has 16 guard bytes
   before and 32 after it, checked when it is freed or reallocated and after
   every call. The block table lives outside the heap, so an overflow cannot
   corrupt it. Pointers that are not ours (strdup, ...) go to the C library. */
#define SC_HEAD 16
#define SC_TAIL 32
#define SC_GUARD 0xC5
#define SC_MAX_BLOCKS 4096
static struct { unsigned char *p; size_t n; } sc_blocks[SC_MAX_BLOCKS];
static size_t sc_nblocks;

static int
sc_block_intact(size_t k)
{
    const unsigned char *p = sc_blocks[k].p;
    for (size_t i = 1; i <= SC_HEAD; i++) {
        if (p[-(ptrdiff_t)i] != SC_GUARD) return 0;
    }
    for (size_t i = 0; i < SC_TAIL; i++) {
        if (p[sc_blocks[k].n + i] != SC_GUARD) return 0;
    }
    return 1;
}

static void
sc_heap_damaged(size_t k, const char *when)
{
    snprintf(sc_msg, sizeof sc_msg,
             "heap damage: %s wrote outside a %zu-byte block it allocated with malloc (%s)",
             sc_current, sc_blocks[k].n, when);
    if (sc_active) {
        sc_active = 0;
        siglongjmp(sc_jmp, SC_CRASH);
    }
}

static long
sc_find_block(const void *p)
{
    for (size_t k = 0; k < sc_nblocks; k++) {
        if (sc_blocks[k].p == p) return (long)k;
    }
    return -1;
}

static void *
sc_malloc(size_t n)
{
    if (n > SIZE_MAX / 2 || sc_nblocks == SC_MAX_BLOCKS) return malloc(n);
    unsigned char *raw = malloc(SC_HEAD + n + SC_TAIL);
    if (!raw) return NULL;
    memset(raw, SC_GUARD, SC_HEAD);
    memset(raw + SC_HEAD, 0xBE, n);
    memset(raw + SC_HEAD + n, SC_GUARD, SC_TAIL);
    sc_blocks[sc_nblocks].p = raw + SC_HEAD;
    sc_blocks[sc_nblocks].n = n;
    sc_nblocks++;
    return raw + SC_HEAD;
}

static void
sc_free(void *p)
{
    if (!p) return;
    long k = sc_find_block(p);
    if (k < 0) {
        free(p);
        return;
    }
    if (!sc_block_intact((size_t)k)) {
        sc_heap_damaged((size_t)k, "found when it was freed");
        return; /* never hand a damaged block back to malloc */
    }
    free(sc_blocks[k].p - SC_HEAD);
    sc_blocks[k] = sc_blocks[--sc_nblocks];
}

static void *
sc_calloc(size_t m, size_t n)
{
    if (n && m > SIZE_MAX / n) return NULL;
    void *p = sc_malloc(m * n);
    if (p) memset(p, 0, m * n);
    return p;
}

static void *
sc_realloc(void *p, size_t n)
{
    if (!p) return sc_malloc(n);
    long k = sc_find_block(p);
    if (k < 0) return realloc(p, n);
    if (!sc_block_intact((size_t)k)) {
        sc_heap_damaged((size_t)k, "found when it was reallocated");
        return NULL;
    }
    size_t old = sc_blocks[k].n;
    void *q = sc_malloc(n);
    if (!q) return NULL;
    memcpy(q, p, old < n ? old : n);
    sc_free(p);
    return q;
}

/* SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP during a call: back to the call
   site with what happened (on an alternate stack, so a stack overflow is
   caught too). Outside a call: the worker's own bug; die of it. */
static volatile sig_atomic_t sc_sig;
static void *volatile sc_sig_addr;
static volatile int sc_sig_code;

static void
sc_on_signal(int sig, siginfo_t *info, void *context)
{
    (void)context;
    if (sc_active) {
        sc_active = 0;
        sc_sig = sig;
        sc_sig_addr = info->si_addr;
        sc_sig_code = info->si_code;
        siglongjmp(sc_jmp, SC_FAULT);
    }
    signal(sig, SIG_DFL);
}

#undef assert
#define assert(cond) ((cond) ? (void)0 : sc_assert_fail(#cond, __func__, __LINE__))
#ifndef Py_UNREACHABLE
#define Py_UNREACHABLE() sc_assert_fail("unreachable", __func__, __LINE__)
#endif
#define malloc sc_malloc
#define calloc sc_calloc
#define realloc sc_realloc
#define free sc_free
"#;

/// After the user's code and the entry table: the worker's `main`.
const WORKER: &str = r#"
#define SC_MAGIC 0x53435750u
#define SC_FILL 0xa5
#define SC_MAX_RANGES 16
#define SC_MAX_REGIONS 8

struct sc_request { uint32_t magic, entry; uint64_t location, value; uint32_t nranges, nregions; };
struct sc_reply { uint32_t magic, status, msglen, datalen; };

static int sc_in = -1, sc_out = -1;
static struct stat sc_stdout_st, sc_stderr_st;
static uint64_t sc_mapped[SC_MAX_RANGES][2];
static uint32_t sc_nmapped;
static unsigned sc_alarm_secs = 5;
static unsigned char sc_fill_page[4096];

static int
sc_read_all(int fd, void *buf, size_t n)
{
    unsigned char *p = buf;
    while (n) {
        ssize_t k = read(fd, p, n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return 0;
        p += k;
        n -= (size_t)k;
    }
    return 1;
}

static int
sc_write_all(int fd, const void *buf, size_t n)
{
    const unsigned char *p = buf;
    while (n) {
        ssize_t k = write(fd, p, n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return 0;
        p += k;
        n -= (size_t)k;
    }
    return 1;
}

static void
sc_unmap(void)
{
    for (uint32_t i = 0; i < sc_nmapped; i++) {
        munmap((void *)(uintptr_t)sc_mapped[i][0], sc_mapped[i][1] - sc_mapped[i][0]);
    }
    sc_nmapped = 0;
}

/* The pages at their placed addresses, kept while the next call asks for
   the same ones (one emit function maps once). */
static int
sc_map(uint64_t ranges[][2], uint32_t n)
{
    if (n == sc_nmapped && memcmp(ranges, sc_mapped, n * sizeof ranges[0]) == 0) return 1;
    sc_unmap();
    for (uint32_t i = 0; i < n; i++) {
        uint64_t s = ranges[i][0], e = ranges[i][1];
        void *p = mmap((void *)(uintptr_t)s, e - s, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
        if (p == MAP_FAILED || (uint64_t)(uintptr_t)p != s) {
            int err = errno;
            if (p != MAP_FAILED) munmap(p, e - s);
            snprintf(sc_msg, sizeof sc_msg, "cannot map 0x%llx..0x%llx in the patch worker (%s)",
                     (unsigned long long)s, (unsigned long long)e,
                     p == MAP_FAILED ? strerror(err) : "the kernel mapped it elsewhere");
            sc_unmap();
            return 0;
        }
        sc_mapped[i][0] = s;
        sc_mapped[i][1] = e;
        sc_nmapped = i + 1;
    }
    return 1;
}

/* First byte of [s, e) that is not SC_FILL, or 0. */
static uint64_t
sc_first_dirty(uint64_t s, uint64_t e)
{
    while (s < e) {
        size_t n = e - s < sizeof sc_fill_page ? (size_t)(e - s) : sizeof sc_fill_page;
        const unsigned char *p = (const unsigned char *)(uintptr_t)s;
        if (memcmp(p, sc_fill_page, n) != 0) {
            for (size_t i = 0; i < n; i++) {
                if (p[i] != SC_FILL) return s + i;
            }
        }
        s += n;
    }
    return 0;
}



static int
sc_same_file(int fd, const struct stat *st)
{
    struct stat now;
    return fstat(fd, &now) == 0 && now.st_dev == st->st_dev && now.st_ino == st->st_ino;
}

static const char *
sc_fpe_what(int code)
{
    switch (code) {
    case FPE_INTDIV: return "integer divide by zero";
    case FPE_INTOVF: return "integer overflow";
    case FPE_FLTDIV: return "floating-point divide by zero";
    default: return "arithmetic exception";
    }
}

/* One patch call: map, fill, copy the image in, call, check, copy it out
   (into `bytes`, where it came from). */
static uint32_t
sc_call(const struct sc_request *h, uint64_t ranges[][2], uint64_t regions[][2], unsigned char *bytes)
{
    sc_msg[0] = 0;
    if (h->entry >= SC_NENTRIES) {
        snprintf(sc_msg, sizeof sc_msg, "no entry point %u", h->entry);
        return SC_CRASH;
    }
    if (!sc_map(ranges, h->nranges)) return SC_UNUSABLE;
    for (uint32_t i = 0; i < h->nranges; i++) {
        memset((void *)(uintptr_t)ranges[i][0], SC_FILL, ranges[i][1] - ranges[i][0]);
    }
    unsigned char *at = bytes;
    for (uint32_t i = 0; i < h->nregions; i++) {
        memcpy((void *)(uintptr_t)regions[i][0], at, regions[i][1]);
        at += regions[i][1];
    }
    sc_current = sc_entries[h->entry].name;
    alarm(sc_alarm_secs);
    uint32_t status = SC_OK;
    sc_active = 1;
    int rc = sigsetjmp(sc_jmp, 1);
    if (rc == 0) {
        sc_entries[h->entry].fn((unsigned char *)(uintptr_t)h->location, h->value);
        sc_active = 0;
    }
    else {
        status = (uint32_t)rc;
    }
    alarm(0);
    if (status == SC_FAULT) {
        int sig = sc_sig;
        if (sig == SIGSEGV || sig == SIGBUS) {
            snprintf(sc_msg, sizeof sc_msg, "%s: %s accessed 0x%llx, outside the stencil's code and data",
                     sig == SIGBUS ? "SIGBUS" : "SIGSEGV", sc_current, (unsigned long long)(uintptr_t)sc_sig_addr);
        }
        else {
            status = SC_CRASH;
            if (sig == SIGFPE) {
                snprintf(sc_msg, sizeof sc_msg, "SIGFPE (%s) in %s at %p", sc_fpe_what(sc_sig_code), sc_current, sc_sig_addr);
            }
            else if (sig == SIGILL) {
                snprintf(sc_msg, sizeof sc_msg, "SIGILL: %s executed an illegal instruction at %p (__builtin_trap()?)", sc_current, sc_sig_addr);
            }
            else {
                snprintf(sc_msg, sizeof sc_msg, "signal %d in %s at %p", sig, sc_current, sc_sig_addr);
            }
        }
    }
    fflush(NULL);
    if (status == SC_OK || status == SC_ASSERT) {
        if (!sc_same_file(1, &sc_stdout_st) || !sc_same_file(2, &sc_stderr_st)) {
            status = SC_CRASH;
            snprintf(sc_msg, sizeof sc_msg, "%s closed or replaced its stdout or stderr", sc_current);
        }
    }
    if (status == SC_OK || status == SC_ASSERT) {
        for (size_t k = 0; k < sc_nblocks; k++) {
            if (!sc_block_intact(k)) {
                sc_heap_damaged(k, "found after the call");
                status = SC_CRASH;
                break;
            }
        }
    }
    at = bytes;
    for (uint32_t i = 0; i < h->nregions; i++) {
        memcpy(at, (const void *)(uintptr_t)regions[i][0], regions[i][1]);
        at += regions[i][1];
    }
    if (status == SC_OK) {
        /* Every mapped byte outside the image must still be SC_FILL. */
        for (uint32_t r = 0; r < h->nranges && status == SC_OK; r++) {
            uint64_t s = ranges[r][0], e = ranges[r][1];
            while (s < e && status == SC_OK) {
                /* The next region at or after s. */
                uint64_t next = e, skip_to = e;
                for (uint32_t i = 0; i < h->nregions; i++) {
                    uint64_t a = regions[i][0], b = a + regions[i][1];
                    if (b > s && a < next) {
                        next = a < s ? s : a;
                        skip_to = b;
                    }
                }
                uint64_t dirty = sc_first_dirty(s, next);
                if (dirty) {
                    status = SC_STRAY;
                    snprintf(sc_msg, sizeof sc_msg, "%s wrote at 0x%llx, outside the stencil's code and data",
                             sc_current, (unsigned long long)dirty);
                }
                s = skip_to;
            }
        }
    }
    return status;
}

int
main(int argc, char **argv)
{
    if (argc > 1) sc_alarm_secs = (unsigned)atoi(argv[1]);
    /* Requests and replies move to private descriptors; the C's stdout and
       stderr both go to the pipe stencilcheck watches for output. */
    sc_in = fcntl(0, F_DUPFD_CLOEXEC, 10);
    sc_out = fcntl(1, F_DUPFD_CLOEXEC, 10);
    int null = open("/dev/null", O_RDONLY);
    if (sc_in < 0 || sc_out < 0 || null < 0 || dup2(null, 0) < 0 || dup2(2, 1) < 0) return 120;
    if (null != 0) close(null);
    setvbuf(stdout, NULL, _IONBF, 0);
    if (fstat(1, &sc_stdout_st) != 0 || fstat(2, &sc_stderr_st) != 0) return 121;
    memset(sc_fill_page, SC_FILL, sizeof sc_fill_page);
    static unsigned char altstack[1 << 16];
    stack_t ss;
    memset(&ss, 0, sizeof ss);
    ss.ss_sp = altstack;
    ss.ss_size = sizeof altstack;
    sigaltstack(&ss, NULL);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = sc_on_signal;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    const int sigs[] = { SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP };
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) sigaction(sigs[i], &sa, NULL);

    /* Hello: a reply whose message names the entry point count. */
    snprintf(sc_msg, sizeof sc_msg, "stencilcheck patch worker: %u entry points", (unsigned)SC_NENTRIES);
    struct { struct sc_reply r; char m[sizeof sc_msg]; } hello = { { SC_MAGIC, SC_OK, (uint32_t)strlen(sc_msg), 0 }, { 0 } };
    memcpy(hello.m, sc_msg, hello.r.msglen);
    if (!sc_write_all(sc_out, &hello, sizeof hello.r + hello.r.msglen)) return 0;
    unsigned char *buf = NULL;
    size_t cap = 0;
    for (;;) {
        struct sc_request h;
        uint64_t ranges[SC_MAX_RANGES][2], regions[SC_MAX_REGIONS][2];
        if (!sc_read_all(sc_in, &h, sizeof h)) return 0;
        if (h.magic != SC_MAGIC || h.nranges > SC_MAX_RANGES || h.nregions > SC_MAX_REGIONS) return 122;
        if (!sc_read_all(sc_in, ranges, h.nranges * sizeof ranges[0])) return 0;
        if (!sc_read_all(sc_in, regions, h.nregions * sizeof regions[0])) return 0;
        size_t total = 0;
        for (uint32_t i = 0; i < h.nregions; i++) {
            if (regions[i][1] > (1u << 28)) return 123;
            total += regions[i][1];
        }
        size_t need = sizeof(struct sc_reply) + total + sizeof sc_msg;
        if (need > cap) {
            free(buf);
            buf = malloc(need);
            cap = need;
            if (!buf) return 124;
        }
        unsigned char *bytes = buf + sizeof(struct sc_reply);
        if (!sc_read_all(sc_in, bytes, total)) return 0;
        uint32_t status = sc_call(&h, ranges, regions, bytes);
        struct sc_reply r = { SC_MAGIC, status, (uint32_t)strlen(sc_msg), status == SC_UNUSABLE ? 0 : (uint32_t)total };
        memcpy(buf, &r, sizeof r);
        memcpy(bytes + r.datalen, sc_msg, r.msglen);
        if (!sc_write_all(sc_out, buf, sizeof r + r.datalen + r.msglen)) return 0;
    }
}
"#;

/// The worker program's C: prelude, prototypes, the extracted items under
/// `#line` directives naming `path`, the entry table (one per
/// [`Extracted::entry_points`], in that order) and the worker's `main`.
pub fn generate(ex: &Extracted, path: &str) -> String {
    let quoted = path.replace('\\', "\\\\").replace('"', "\\\"");
    let mut c = String::from(PRELUDE);
    // Macros first (in file order), then prototypes so helper order does not matter.
    for it in ex.items.iter().filter(|it| it.kind == ItemKind::Macro) {
        c.push_str(&format!("#line {} \"{quoted}\"\n{}\n", it.line, it.text));
    }
    c.push_str("#line 1 \"stencilcheck-prototypes\"\n");
    for it in ex.items.iter().filter(|it| it.kind == ItemKind::Function) {
        c.push_str(&strip_comments(it.signature()));
        c.push_str(";\n");
    }
    for it in ex.items.iter().filter(|it| it.kind == ItemKind::Function) {
        c.push_str(&format!("#line {} \"{quoted}\"\n{}\n", it.line, it.text));
    }
    c.push_str("#line 1 \"stencilcheck-worker\"\n#undef malloc\n#undef calloc\n#undef realloc\n#undef free\n");
    c.push_str("typedef void (*sc_entry_fn)(unsigned char *, uint64_t);\n");
    for (k, name) in ex.entry_points.iter().enumerate() {
        c.push_str(&format!(
            "static void sc_entry_{k}(unsigned char *location, uint64_t value) {{ {name}(location, value); }}\n"
        ));
    }
    c.push_str("static const struct { const char *name; sc_entry_fn fn; } sc_entries[] = {\n");
    for (k, name) in ex.entry_points.iter().enumerate() {
        c.push_str(&format!("    {{ \"{name}\", sc_entry_{k} }},\n"));
    }
    c.push_str("};\n#define SC_NENTRIES (sizeof sc_entries / sizeof sc_entries[0])\n");
    c.push_str(WORKER);
    c
}

// ---------------------------------------------------------------------------
// Compiling
// ---------------------------------------------------------------------------

/// FNV-1a, 64 bits: a stable content hash for the cache file name.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("stencilcheck")
}

fn compiler() -> String {
    std::env::var("CC").ok().filter(|c| !c.trim().is_empty()).unwrap_or_else(|| "cc".to_string())
}

/// What the worker is built with. Warnings that mean "this C does not say
/// what it seems to" are errors (an undefined helper is a build error naming
/// it, not a crash at run time); the rest are ignored. The stack protector
/// and `_FORTIFY_SOURCE` turn stack smashing and overflowing string calls
/// into an abort (a finding); `-z now` binds every symbol at start-up.
const CFLAGS: &[&str] = &[
    "-O2",
    "-std=gnu11",
    "-fstack-protector-strong",
    "-U_FORTIFY_SOURCE",
    "-D_FORTIFY_SOURCE=2",
    "-Werror=implicit-function-declaration",
    "-Werror=implicit-int",
    "-Werror=return-type",
    "-Werror=int-conversion",
    "-Werror=incompatible-pointer-types",
    "-Wl,-z,now",
    "-Wl,-z,relro",
];

/// The line of a failed build that says why: the first compiler error,
/// else a linker `undefined reference`, else any line mentioning an error.
fn first_error(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    lines
        .iter()
        .find(|l| l.contains(": error:") || l.contains(": fatal error:"))
        .or_else(|| lines.iter().find(|l| l.contains("undefined reference")))
        .or_else(|| lines.iter().find(|l| l.contains("error")))
        .or_else(|| lines.first())
        .map_or("(no output)".to_string(), |l| l.to_string())
}

/// Compiles `c_src` to the worker executable (cached by content hash); the
/// compiler's first error line on failure.
fn compile(c_src: &str, jit_c: &Path) -> Result<PathBuf, BadInput> {
    let cc = compiler();
    let hash = fnv1a(format!("{cc}\n{}\n{c_src}", CFLAGS.join(" ")).as_bytes());
    let dir = cache_dir();
    let exe = dir.join(format!("jitc-worker-{hash:016x}"));
    if exe.exists() {
        return Ok(exe);
    }
    std::fs::create_dir_all(&dir)
        .map_err(|e| BadInput::in_file(dir.display(), format!("cannot create cache directory: {e}")))?;
    let unique = format!("{}-{:?}", std::process::id(), std::thread::current().id())
        .replace(|c: char| !c.is_ascii_alphanumeric(), "");
    let c_path = dir.join(format!("jitc-worker-{hash:016x}-{unique}.c"));
    let tmp = dir.join(format!("jitc-worker-{hash:016x}-{unique}.tmp"));
    std::fs::write(&c_path, c_src).map_err(|e| BadInput::in_file(c_path.display(), format!("cannot write: {e}")))?;
    let out = Command::new(&cc)
        .args(CFLAGS)
        .arg("-o")
        .arg(&tmp)
        .arg(&c_path)
        .output()
        .map_err(|e| BadInput::in_file(jit_c.display(), format!("cannot run the C compiler `{cc}`: {e}")))?;
    if !out.status.success() {
        let first = first_error(&String::from_utf8_lossy(&out.stderr));
        let _ = std::fs::remove_file(&tmp);
        return Err(BadInput::in_file(
            jit_c.display(),
            format!("the patch functions do not compile ({cc}; generated C kept at {}): {first}", c_path.display()),
        ));
    }
    let _ = std::fs::remove_file(&c_path);
    std::fs::rename(&tmp, &exe).map_err(|e| BadInput::in_file(exe.display(), format!("cannot write: {e}")))?;
    Ok(exe)
}

// ---------------------------------------------------------------------------
// The worker process, seen from here
// ---------------------------------------------------------------------------

/// How long one patch call may take before its worker is killed.
pub const DEFAULT_TIME_LIMIT: Duration = Duration::from_secs(2);

/// After this many timeouts of one patch function, its further calls are not
/// run (each would cost the whole time limit): they fail at once as
/// [`FailureKind::Crash`] saying so (the function is known to hang; what it
/// would have done there is not known, so no stencil using it passes).
pub const HANG_BUDGET: u32 = 3;

const MAGIC: u32 = 0x5343_5750;
const REQUEST_HEAD: usize = 32;
const REPLY_HEAD: usize = 16;
// Statuses of the worker's reply (`SC_*` in the C).
const ST_OK: u32 = 0;
const ST_ASSERT: u32 = 1;
const ST_FAULT: u32 = 2;
const ST_UNUSABLE: u32 = 3;
const ST_STRAY: u32 = 4;
const ST_CRASH: u32 = 5;

/// Why a worker cannot be used any more.
enum Broken {
    /// No reply within the time limit.
    Timeout,
    /// The reply pipe closed (the process ended) or could not be written.
    Ended,
    /// The reply does not parse.
    Garbled(String),
}

/// One worker process: requests on its stdin, replies on its stdout (moved
/// by the worker to a private descriptor), and its stdout/stderr proper on
/// `output`, which must stay empty.
struct Worker {
    child: Child,
    to: ChildStdin,
    from: ChildStdout,
    /// Read end (non-blocking) of the pipe the worker's fds 1 and 2 write to.
    output: std::fs::File,
    buf: Vec<u8>,
}

/// A parsed reply; `data` is `buf[REPLY_HEAD..REPLY_HEAD + datalen]`.
struct Reply {
    status: u32,
    message: String,
    datalen: usize,
}

fn pipe_cloexec() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn set_nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGABRT => "SIGABRT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGALRM => "SIGALRM",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGSYS => "SIGSYS",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        _ => return format!("signal {sig}"),
    };
    name.to_string()
}

/// At most `max` characters of `bytes`, quoted and escaped (one line).
fn quoted(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let cut: String = text.chars().take(max).collect();
    let more = if text.chars().count() > max { "..." } else { "" };
    format!("{cut:?}{more}")
}

impl Worker {
    fn spawn(exe: &Path, limit: Duration, entries: usize) -> Result<Worker, String> {
        let (out_r, out_w) = pipe_cloexec().map_err(|e| format!("pipe: {e}"))?;
        set_nonblocking(&out_r).map_err(|e| format!("pipe: {e}"))?;
        // The worker's own alarm during a call: a backstop that ends it if
        // stencilcheck died while it was stuck.
        let backstop = limit.as_secs() + 3;
        let mut cmd = Command::new(exe);
        cmd.arg(backstop.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(out_w))
            .env("MALLOC_PERTURB_", "165")
            .env("MALLOC_CHECK_", "3");
        let spawned = cmd.spawn();
        drop(cmd); // closes our copy of the output pipe's write end
        let mut child = spawned.map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
        let to = child.stdin.take().expect("piped");
        let from = child.stdout.take().expect("piped");
        let mut w = Worker { child, to, from, output: std::fs::File::from(out_r), buf: Vec::new() };
        let hello = format!("stencilcheck patch worker: {entries} entry points");
        match w.read_reply(Instant::now() + limit.max(Duration::from_secs(10))) {
            Ok(r) if r.status == ST_OK && r.message == hello => Ok(w),
            Ok(r) => Err(format!("the patch worker said {:?}, not {hello:?}", r.message)),
            Err(b) => Err(format!("the patch worker did not start: it {}", w.post_mortem(b, limit))),
        }
    }

    /// Reads one reply into `self.buf` by `deadline`.
    fn read_reply(&mut self, deadline: Instant) -> Result<Reply, Broken> {
        self.buf.clear();
        let mut head: Option<(u32, usize, usize)> = None;
        loop {
            if head.is_none() && self.buf.len() >= REPLY_HEAD {
                let word = |k: usize| u32::from_ne_bytes(self.buf[4 * k..4 * k + 4].try_into().expect("4 bytes"));
                if word(0) != MAGIC {
                    return Err(Broken::Garbled(format!("bad magic {:#x}", word(0))));
                }
                let (status, msglen, datalen) = (word(1), word(2) as usize, word(3) as usize);
                if msglen > 4096 || datalen > 1 << 30 {
                    return Err(Broken::Garbled(format!("a reply of {msglen}+{datalen} bytes")));
                }
                head = Some((status, msglen, datalen));
            }
            if let Some((status, msglen, datalen)) = head {
                let end = REPLY_HEAD + datalen + msglen;
                if self.buf.len() >= end {
                    if self.buf.len() > end {
                        return Err(Broken::Garbled(format!("{} bytes after the reply", self.buf.len() - end)));
                    }
                    let message = String::from_utf8_lossy(&self.buf[REPLY_HEAD + datalen..end]).into_owned();
                    return Ok(Reply { status, message, datalen });
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Broken::Timeout);
            }
            let mut pfd = libc::pollfd { fd: self.from.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut pfd, 1, ms) };
            if r < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Broken::Ended);
            }
            if r == 0 {
                return Err(Broken::Timeout);
            }
            let have = self.buf.len();
            let want = head.map_or(REPLY_HEAD + 4096, |(_, m, d)| REPLY_HEAD + d + m);
            self.buf.resize(have.max(want).max(have + 64), 0);
            let got = self.from.read(&mut self.buf[have..]);
            match got {
                Ok(0) => {
                    self.buf.truncate(have);
                    return Err(Broken::Ended);
                }
                Ok(n) => self.buf.truncate(have + n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => self.buf.truncate(have),
                Err(_) => {
                    self.buf.truncate(have);
                    return Err(Broken::Ended);
                }
            }
        }
    }

    /// Sends one call and waits for its reply (at most `limit`).
    fn call(
        &mut self,
        entry: u32,
        image: &Image,
        location: u64,
        value: u64,
        ranges: &[(u64, u64)],
        limit: Duration,
    ) -> Result<Reply, Broken> {
        let regions: Vec<(u64, &[u8])> = image.regions().map(|(_, a, b)| (a, b)).collect();
        let mut req = Vec::with_capacity(
            REQUEST_HEAD + 16 * (ranges.len() + regions.len()) + regions.iter().map(|r| r.1.len()).sum::<usize>(),
        );
        req.extend_from_slice(&MAGIC.to_ne_bytes());
        req.extend_from_slice(&entry.to_ne_bytes());
        req.extend_from_slice(&location.to_ne_bytes());
        req.extend_from_slice(&value.to_ne_bytes());
        req.extend_from_slice(&(ranges.len() as u32).to_ne_bytes());
        req.extend_from_slice(&(regions.len() as u32).to_ne_bytes());
        for &(s, e) in ranges {
            req.extend_from_slice(&s.to_ne_bytes());
            req.extend_from_slice(&e.to_ne_bytes());
        }
        for (a, b) in &regions {
            req.extend_from_slice(&a.to_ne_bytes());
            req.extend_from_slice(&(b.len() as u64).to_ne_bytes());
        }
        for (_, b) in &regions {
            req.extend_from_slice(b);
        }
        let deadline = Instant::now() + limit;
        // A worker that is alive and idle is blocked reading its stdin, so
        // this write cannot block for long; a dead one fails it (EPIPE:
        // Rust ignores SIGPIPE).
        self.to.write_all(&req).map_err(|_| Broken::Ended)?;
        self.read_reply(deadline)
    }

    /// Bytes the worker wrote on its stdout/stderr so far (at most 4 KiB).
    fn take_output(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut chunk = [0u8; 1024];
        while out.len() < 4096 {
            match self.output.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break, // WouldBlock: nothing (more) written
            }
        }
        out
    }

    /// Ends the worker if it still runs and says how it ended, with what it
    /// printed: "exited with status 0", "was killed by SIGABRT (printed
    /// ...)", "did not return within 2s (killed)".
    fn post_mortem(&mut self, why: Broken, limit: Duration) -> String {
        let mut what = match &why {
            Broken::Timeout => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                format!("did not return within {limit:?} (the patch worker was killed)")
            }
            Broken::Garbled(g) => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                format!("garbled the patch worker's reply ({g})")
            }
            Broken::Ended => {
                // The reply pipe closed: the process is ending. Give it a
                // moment to be reaped; a process that closed the pipe but
                // lives on is killed.
                let until = Instant::now() + Duration::from_millis(500);
                let status = loop {
                    match self.child.try_wait() {
                        Ok(Some(status)) => break Some(status),
                        Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(1)),
                        _ => {
                            let _ = self.child.kill();
                            break self.child.wait().ok();
                        }
                    }
                };
                match status {
                    Some(s) if s.code().is_some() => {
                        format!("ended the patch worker process with exit status {}", s.code().unwrap_or_default())
                    }
                    Some(s) if s.signal().is_some() => {
                        format!("killed the patch worker process with {}", signal_name(s.signal().unwrap_or_default()))
                    }
                    _ => "ended the patch worker process".to_string(),
                }
            }
        };
        let printed = self.take_output();
        if !printed.is_empty() {
            what.push_str(&format!(" (it printed {})", quoted(&printed, 200)));
        }
        what
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The user's `jit.c` patch functions, compiled into a worker program.
pub struct NativePatcher {
    name: String,
    exe: PathBuf,
    /// Index of each known function in the worker's entry table.
    entries: HashMap<PatchFn, u32>,
    /// Every wrapped function by name (also those stencilcheck has no
    /// [`PatchFn`] for), in entry-table order.
    pub entry_points: Vec<String>,
    time_limit: Duration,
    /// Idle healthy workers (one per thread that patches at a time).
    pool: Mutex<Vec<Worker>>,
    /// Timeouts so far, per function (see [`HANG_BUDGET`]).
    hangs: Mutex<HashMap<PatchFn, u32>>,
}

impl NativePatcher {
    /// Extracts, compiles (or reuses the cached worker) and starts one worker.
    pub fn from_path(jit_c: &Path) -> Result<NativePatcher, BadInput> {
        let src = std::fs::read_to_string(jit_c)
            .map_err(|e| BadInput::in_file(jit_c.display(), format!("cannot read: {e}")))?;
        let ex = extract(&src);
        if ex.entry_points.is_empty() {
            return Err(BadInput::in_file(jit_c.display(), "no patch_* function definitions found"));
        }
        let abs = std::fs::canonicalize(jit_c).unwrap_or_else(|_| jit_c.to_path_buf());
        let c_src = generate(&ex, &abs.display().to_string());
        let exe = compile(&c_src, jit_c)?;
        let entries = ex
            .entry_points
            .iter()
            .enumerate()
            .filter_map(|(k, name)| PatchFn::from_name(name).map(|f| (f, k as u32)))
            .collect();
        let worker = Worker::spawn(&exe, DEFAULT_TIME_LIMIT, ex.entry_points.len())
            .map_err(|e| BadInput::in_file(exe.display(), e))?;
        Ok(NativePatcher {
            name: format!("jit.c@{}", jit_c.display()),
            exe,
            entries,
            entry_points: ex.entry_points,
            time_limit: DEFAULT_TIME_LIMIT,
            pool: Mutex::new(vec![worker]),
            hangs: Mutex::new(HashMap::new()),
        })
    }

    /// The same patcher with another per-call time limit (idle workers,
    /// whose backstop alarm was set for the old one, are ended).
    pub fn with_time_limit(mut self, limit: Duration) -> NativePatcher {
        self.time_limit = limit;
        self.pool.get_mut().unwrap_or_else(|e| e.into_inner()).clear();
        self
    }

    pub fn time_limit(&self) -> Duration {
        self.time_limit
    }

    pub fn has(&self, func: PatchFn) -> bool {
        self.entries.contains_key(&func)
    }

    /// BadInput naming the first patch function `set` calls that the jit.c
    /// does not define.
    pub fn check_set(&self, set: &StencilSet, jit_c: &Path) -> Result<(), BadInput> {
        // jit.c compiled for this 64-bit host computes in 64-bit `uintptr_t`
        // and reads the process's memory at symbols (i686's REL32 through
        // `patch_x86_64_32rx`): it cannot stand in for a 32-bit build.
        if set.target.arch == crate::target::Arch::I686 {
            let what = set.target.unsupported("--jit-c (jit.c built for this 64-bit host)");
            return Err(BadInput::unsupported(jit_c.display(), &what));
        }
        for st in &set.stencils {
            for op in &st.emit {
                if let EmitOp::Patch(call) = op {
                    if !self.has(call.func) {
                        return Err(BadInput::in_file(
                            jit_c.display(),
                            format!(
                                "{} (used by {} at {}:{}) is not defined here",
                                call.func,
                                st.name,
                                set.path.display(),
                                call.line
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn take_worker(&self) -> Result<Worker, String> {
        let idle = self.pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match idle {
            Some(w) => Ok(w),
            None => Worker::spawn(&self.exe, self.time_limit, self.entry_points.len()),
        }
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

/// Page-aligned `[start, end)` ranges covering the image's regions, merged
/// when they touch.
fn page_ranges(image: &Image) -> Vec<(u64, u64)> {
    let ps = page_size();
    let mut ranges: Vec<(u64, u64)> =
        image.regions().map(|(_, a, b)| (a & !(ps - 1), (a + b.len() as u64 + ps - 1) & !(ps - 1))).collect();
    ranges.sort();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for r in ranges {
        match merged.last_mut() {
            Some(last) if r.0 <= last.1 => last.1 = last.1.max(r.1),
            _ => merged.push(r),
        }
    }
    merged
}

impl Patcher for NativePatcher {
    fn patch(&self, func: PatchFn, image: &mut Image, location: u64, value: u64) -> Result<(), PatchAssert> {
        let failure = |kind: FailureKind, message: String| PatchAssert { func, location, value, message, kind };
        let call = format!("{func}(location {location:#x}, value {value:#x})");
        let Some(&entry) = self.entries.get(&func) else {
            return Err(failure(FailureKind::Assert, format!("{func} is not defined in {}", self.name)));
        };
        let hangs = self.hangs.lock().unwrap_or_else(|e| e.into_inner()).get(&func).copied().unwrap_or(0);
        if hangs >= HANG_BUDGET {
            return Err(failure(
                FailureKind::Crash,
                format!("{call} not run: {func} already hung {hangs} times (limit {:?} per call)", self.time_limit),
            ));
        }
        let mut worker = self
            .take_worker()
            .map_err(|e| failure(FailureKind::Crash, format!("{call}: cannot start a patch worker: {e}")))?;
        let ranges = page_ranges(image);
        let reply = match worker.call(entry, image, location, value, &ranges, self.time_limit) {
            Ok(reply) => reply,
            Err(broken) => {
                if matches!(broken, Broken::Timeout) {
                    *self.hangs.lock().unwrap_or_else(|e| e.into_inner()).entry(func).or_default() += 1;
                }
                let what = worker.post_mortem(broken, self.time_limit);
                return Err(failure(FailureKind::Crash, format!("{call} {what}")));
            }
        };
        // Anything on the worker's stdout/stderr is the C talking where a
        // report is read: never allowed.
        let printed = worker.take_output();
        if reply.status != ST_UNUSABLE && reply.datalen == image.regions().map(|(_, _, b)| b.len()).sum::<usize>() {
            let mut at = REPLY_HEAD;
            for region in [Region::Code, Region::Data, Region::Trampolines, Region::Got] {
                let bytes = image.bytes_of_mut(region);
                let n = bytes.len();
                bytes.copy_from_slice(&worker.buf[at..at + n]);
                at += n;
            }
        } else if reply.status != ST_UNUSABLE {
            return Err(failure(
                FailureKind::Crash,
                format!("{call} garbled the patch worker's reply ({} bytes of image back)", reply.datalen),
            ));
        }
        let healthy = matches!(reply.status, ST_OK | ST_ASSERT | ST_UNUSABLE | ST_STRAY) && printed.is_empty();
        if healthy {
            self.pool.lock().unwrap_or_else(|e| e.into_inner()).push(worker);
        }
        let outcome = match reply.status {
            ST_OK => Ok(()),
            ST_ASSERT | ST_STRAY => Err(failure(FailureKind::Assert, reply.message)),
            // A wild access: what the ports report as an access outside the
            // image, so the same kind.
            ST_FAULT => Err(failure(FailureKind::Assert, format!("{call}: {}", reply.message))),
            ST_UNUSABLE => Err(PatchAssert::unusable(func, location, value, reply.message)),
            ST_CRASH => Err(failure(FailureKind::Crash, format!("{call}: {}", reply.message))),
            other => Err(failure(FailureKind::Crash, format!("{call}: the patch worker answered status {other}"))),
        };
        if printed.is_empty() {
            return outcome;
        }
        let wrote = format!("wrote to stdout or stderr: {}", quoted(&printed, 200));
        Err(match outcome {
            Ok(()) => failure(FailureKind::Crash, format!("{call} {wrote}")),
            Err(mut e) => {
                if !e.message.starts_with(&call) {
                    e.message = format!("{call}: {}", e.message);
                }
                e.message.push_str(&format!("; it also {wrote}"));
                e.kind = FailureKind::Crash;
                e
            }
        })
    }

    fn name(&self) -> &str {
        &self.name
    }

    /// The C runs on this host (x86-64 Linux): only the 47-bit user space
    /// can be mapped, whatever the stencils' target allows.
    fn address_space(&self) -> std::ops::Range<u64> {
        crate::target::x86_64::USER_SPACE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = r#"
#include "Python.h"
// a comment with patch_fake(unsigned char *location, uint64_t value) { }
static uint32_t
get_bits(uint64_t value, uint8_t value_start, uint8_t width)
{
    assert(width <= 32);
    return (value >> value_start) & ((1ULL << width) - 1);
}
static const char *s = "patch_str { ";
#define IS_THING(I) (((I) & 0xF) == 0x1)
#define UNUSED 3
static int unused(void) { return '}'; }
struct foo { int a; };
#if 0
void
patch_32(unsigned char *location, uint64_t value) { old(); }
#if 1
#endif
#else
#endif
void
patch_32(unsigned char *location, uint64_t value)
{
    /* } */ assert(IS_THING(get_bits(value, 0, 4)));
    *(uint32_t *)location = (uint32_t)value;
}
void
patch_tramp(unsigned char *location, int ordinal, some_state *state)
{
    patch_32(location, (uintptr_t)table_from_the_header[ordinal] + state->x);
}
"#;

    #[test]
    fn scan_finds_functions_and_macros_and_skips_comments_and_strings() {
        let items = scan(SRC);
        let names: Vec<_> = items.iter().map(|i| (i.kind, i.name.as_str())).collect();
        assert_eq!(
            names,
            [
                (ItemKind::Function, "get_bits"),
                (ItemKind::Macro, "IS_THING"),
                (ItemKind::Macro, "UNUSED"),
                (ItemKind::Function, "unused"),
                (ItemKind::Function, "patch_32"),
                (ItemKind::Function, "patch_tramp"),
            ]
        );
        assert_eq!(items[4].line, 22);
        assert!(items[4].text.ends_with('}'));
    }

    #[test]
    fn extract_keeps_what_the_patch_functions_use() {
        let ex = extract(SRC);
        let names: Vec<_> = ex.items.iter().map(|i| i.name.as_str()).collect();
        // patch_tramp's signature is not (location, value): left out, with
        // the header-only names it uses.
        assert_eq!(names, ["get_bits", "IS_THING", "patch_32"]);
        assert_eq!(ex.entry_points, ["patch_32"]);
        let c = generate(&ex, "jit.c");
        assert!(c.contains("{ \"patch_32\", sc_entry_0 }") && c.contains("int\nmain("), "{c}");
    }

    #[test]
    fn function_heads_with_attributes_storage_classes_and_qualifiers() {
        for (head, name, params) in [
            ("__attribute__((noinline)) static void\nh(void)", "h", "(void)"),
            ("static inline __attribute__((always_inline, unused)) uint32_t g(uint64_t v)", "g", "(uint64_t v)"),
            (
                "void __attribute__((cold)) k(unsigned char *location, uint64_t value)",
                "k",
                "(unsigned char *location, uint64_t value)",
            ),
            ("static void m(int x) __attribute__((nonnull(1)))", "m", "(int x)"),
            ("[[gnu::noinline]] static const char *const_name(void)", "const_name", "(void)"),
            ("extern _Alignas(16) volatile int *vp(void)", "vp", "(void)"),
            ("static void __declspec(noinline) w(void)", "w", "(void)"),
            ("int f(void) __asm__(\"other_name\")", "f", "(void)"),
            ("void (*handler(int sig))(int)", "handler", "(int sig)"),
            ("static _Atomic(int) *atomic_ptr(void) /* (comment) */", "atomic_ptr", "(void)"),
        ] {
            let h = parse_head(head).unwrap_or_else(|| panic!("{head}"));
            assert_eq!((h.name.as_str(), h.params.trim()), (name, params), "{head}");
        }
        for not_a_function in ["struct s", "static int table[] = ", "enum e", "__attribute__((packed)) struct p"] {
            assert_eq!(parse_head(not_a_function), None, "{not_a_function}");
        }
    }

    #[test]
    fn an_attributed_static_helper_is_extracted_under_its_own_name() {
        let src = r#"
__attribute__((noinline)) static void
helper(unsigned char *location, uint64_t value)
{
    *(uint64_t *)location = value;
}
void __attribute__((hot))
patch_64(unsigned char *location, uint64_t value)
{
    helper(location, value);
}
"#;
        let ex = extract(src);
        let names: Vec<_> = ex.items.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["helper", "patch_64"]);
        assert_eq!(ex.entry_points, ["patch_64"]);
    }
}
