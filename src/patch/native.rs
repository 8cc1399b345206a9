//! [`NativePatcher`]: the user's own `Python/jit.c` patch functions, compiled
//! at run time and called on an exact byte image of the placed memory.
//!
//! 1. [`extract`] reads `jit.c` with a small C-aware scanner (comments,
//!    strings, character literals, preprocessor lines, brace depth) and keeps
//!    every top-level `patch_*(unsigned char *, uint64_t)` function
//!    definition plus, transitively, every
//!    function and `#define` they name (`get_bits`, `set_bits`,
//!    `IS_AARCH64_*`, ...). Nothing else of `jit.c` is compiled (it needs
//!    `Python.h`).
//! 2. [`generate`] writes a C file: standard headers, an `assert` that
//!    records the condition, function and `jit.c` line and `siglongjmp`s back,
//!    the extracted code under `#line` directives (so asserts and compiler
//!    errors name `jit.c`'s own lines), and one exported wrapper
//!    `int sc_call_<name>(unsigned char *loc, uint64_t value, char *msg, size_t msglen)`
//!    per two-argument `patch_*` function: it installs a SIGSEGV/SIGBUS
//!    handler for the duration of the call (a wild access becomes a finding,
//!    not a crash), calls the function, and returns 0 (done), 1 (assert
//!    fired) or 2 (fault).
//! 3. The system C compiler (`$CC`, else `cc`) is run through
//!    `std::process::Command` (`-shared -fPIC -O2`); the library is cached by
//!    a content hash of the generated C under `$XDG_CACHE_HOME/stencilcheck`
//!    (else `~/.cache/stencilcheck`, else the temp dir) and loaded with
//!    `libloading`.
//! 4. Each patch call needs the pages covering the image's code and data
//!    mapped AT THEIR PLACED ADDRESSES in this process (`MAP_FIXED_NOREPLACE`;
//!    kept from the previous call when the pages are the same, so one emit
//!    maps once), copies the image in, calls the C function with the real
//!    `location` and `value`, copies the bytes back and checks that no byte
//!    of those pages outside code and data changed (a stray write is a
//!    finding). Calls are serialised by a process-wide mutex.
//!
//! When a placed address range is already taken in our own process (or lies
//! below `vm.mmap_min_addr`), the call fails with a [`PatchAssert`] of kind
//! [`FailureKind::Unusable`]: the placement cannot be reproduced here.
//! With the placements stencilcheck makes (random 47-bit addresses) this is
//! rare.

use super::{Region, Image, PatchAssert, Patcher};
use crate::error::BadInput;
use crate::model::{PatchFn, StencilSet, EmitOp};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;


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
                let head = &src[s..i];
                let head_code: String = strip_comments(head);
                let is_function = head_code.trim_end().ends_with(')') && !head_code.contains('=');
                if is_function {
                    if let Some(name) = function_name(&head_code) {
                        items.push(Item {
                            kind: ItemKind::Function,
                            name,
                            line: line_of(s),
                            text: src[s..end].to_string(),
                        });
                    }
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

/// The identifier before the first `(` of a function head.
fn function_name(head: &str) -> Option<String> {
    let paren = head.find('(')?;
    let before = head[..paren].trim_end();
    let name: String = before
        .bytes()
        .rev()
        .take_while(|&c| is_ident(c))
        .map(char::from)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    (!name.is_empty()).then_some(name)
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
                && is_location_value(it.signature())
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
        .filter(|it| is_location_value(it.signature()))
        .map(|it| it.name.clone())
        .collect();
    Extracted { items, entry_points }
}

/// True for `... name(unsigned char *x, uint64_t y)`.
fn is_location_value(signature: &str) -> bool {
    let Some(open) = signature.find('(') else { return false };
    let params: String = signature[open..].chars().filter(|c| !c.is_whitespace()).collect();
    let params = params.trim_start_matches('(').trim_end_matches(')');
    let parts: Vec<&str> = params.split(',').collect();
    parts.len() == 2
        && parts[0].starts_with("unsignedchar*")
        && (parts[1].starts_with("uint64_t") || parts[1].starts_with("uintptr_t"))
}

// ---------------------------------------------------------------------------
// The generated C
// ---------------------------------------------------------------------------

const PRELUDE: &str = r#"/* Generated by stencilcheck from a user's jit.c: do not commit. */
#define _GNU_SOURCE 1
#include <stdint.h>
#include <stddef.h>
#include <stdbool.h>
#include <string.h>
#include <stdio.h>
#include <stdlib.h>
#include <setjmp.h>
#include <signal.h>

static __thread sigjmp_buf sc_jmp;
static __thread volatile sig_atomic_t sc_active;
static __thread char sc_msg[512];
static __thread void *volatile sc_fault_addr;
static __thread volatile int sc_fault_sig;
static struct sigaction sc_old_segv, sc_old_bus;

static void
sc_assert_fail(const char *cond, const char *func, int line)
{
    snprintf(sc_msg, sizeof sc_msg, "assert(%s) failed in %s (jit.c line %d)", cond, func, line);
    if (sc_active) {
        siglongjmp(sc_jmp, 1);
    }
    abort();
}

static void
sc_on_fault(int sig, siginfo_t *info, void *context)
{
    (void)context;
    if (sc_active) {
        sc_fault_sig = sig;
        sc_fault_addr = info->si_addr;
        siglongjmp(sc_jmp, 2);
    }
    /* Not a fault of ours: put the previous handler back and let the
       instruction fault again. */
    sigaction(sig, sig == SIGBUS ? &sc_old_bus : &sc_old_segv, NULL);
}

#undef assert
#define assert(cond) ((cond) ? (void)0 : sc_assert_fail(#cond, __func__, __LINE__))
#ifndef Py_UNREACHABLE
#define Py_UNREACHABLE() sc_assert_fail("unreachable", __func__, __LINE__)
#endif
"#;

/// The C file: prelude, prototypes, the extracted items under `#line`
/// directives naming `path`, and the wrappers.
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
    c.push_str("#line 1 \"stencilcheck-wrappers\"\n");
    for name in &ex.entry_points {
        c.push_str(&format!(
            r#"
int
sc_call_{name}(unsigned char *loc, uint64_t value, char *msg, size_t msglen)
{{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = sc_on_fault;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &sc_old_segv);
    sigaction(SIGBUS, &sa, &sc_old_bus);
    sc_msg[0] = 0;
    sc_active = 1;
    int rc = sigsetjmp(sc_jmp, 1);
    if (rc == 0) {{
        {name}(loc, value);
    }}
    sc_active = 0;
    sigaction(SIGSEGV, &sc_old_segv, NULL);
    sigaction(SIGBUS, &sc_old_bus, NULL);
    if (rc == 2) {{
        snprintf(sc_msg, sizeof sc_msg, "%s: {name} accessed %p, outside the stencil's code and data",
                 sc_fault_sig == SIGBUS ? "SIGBUS" : "SIGSEGV", sc_fault_addr);
    }}
    if (msg && msglen) {{
        snprintf(msg, msglen, "%s", sc_msg);
    }}
    return rc;
}}
"#
        ));
    }
    c
}

// ---------------------------------------------------------------------------
// Compiling and loading
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

/// Compiles `c_src` to a shared library (cached by content hash); the
/// compiler's first error line on failure.
fn compile(c_src: &str, jit_c: &Path) -> Result<PathBuf, BadInput> {
    let cc = compiler();
    let hash = fnv1a(format!("{cc}\n{c_src}").as_bytes());
    let dir = cache_dir();
    let so = dir.join(format!("jitc-{hash:016x}.so"));
    if so.exists() {
        return Ok(so);
    }
    std::fs::create_dir_all(&dir)
        .map_err(|e| BadInput::in_file(dir.display(), format!("cannot create cache directory: {e}")))?;
    let unique = format!("{}-{:?}", std::process::id(), std::thread::current().id())
        .replace(|c: char| !c.is_ascii_alphanumeric(), "");
    let c_path = dir.join(format!("jitc-{hash:016x}-{unique}.c"));
    let tmp_so = dir.join(format!("jitc-{hash:016x}-{unique}.so.tmp"));
    std::fs::write(&c_path, c_src)
        .map_err(|e| BadInput::in_file(c_path.display(), format!("cannot write: {e}")))?;
    let out = std::process::Command::new(&cc)
        .args(["-shared", "-fPIC", "-O2", "-std=gnu11", "-w"])
        .args(["-Werror=implicit-function-declaration", "-Werror=implicit-int"])
        .arg("-o")
        .arg(&tmp_so)
        .arg(&c_path)
        .output()
        .map_err(|e| BadInput::in_file(jit_c.display(), format!("cannot run the C compiler `{cc}`: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let first = stderr
            .lines()
            .find(|l| l.contains("error"))
            .or_else(|| stderr.lines().find(|l| !l.trim().is_empty()))
            .unwrap_or("(no output)")
            .trim()
            .to_string();
        let _ = std::fs::remove_file(&tmp_so);
        return Err(BadInput::in_file(
            jit_c.display(),
            format!("the patch functions do not compile ({cc}; generated C kept at {}): {first}", c_path.display()),
        ));
    }
    let _ = std::fs::remove_file(&c_path);
    std::fs::rename(&tmp_so, &so)
        .map_err(|e| BadInput::in_file(so.display(), format!("cannot write: {e}")))?;
    Ok(so)
}

type Wrapper = unsafe extern "C" fn(*mut u8, u64, *mut libc::c_char, usize) -> libc::c_int;

/// The user's `jit.c` patch functions, compiled and loaded.
pub struct NativePatcher {
    name: String,
    funcs: std::collections::HashMap<PatchFn, Wrapper>,
    /// Every wrapped function by name (also those stencilcheck has no
    /// [`PatchFn`] for).
    pub entry_points: Vec<String>,
    _lib: libloading::Library,
}

/// One native patch at a time in the whole process: the mappings at placed
/// addresses and the signal handlers are process-wide. The mapping of the
/// last call is kept: the calls of one emit function share their image's
/// addresses, so one emit maps its pages once.
static NATIVE: Mutex<Option<Mapping>> = Mutex::new(None);

/// The parts of `ranges` outside the image's code and data.
fn outside(ranges: &[(u64, u64)], image: &Image) -> Vec<(u64, u64)> {
    let mut holes: Vec<(u64, u64)> = image.regions().map(|(_, a, b)| (a, a + b.len() as u64)).collect();
    holes.sort();
    let mut out = Vec::new();
    for &(s, e) in ranges {
        let mut at = s;
        for &(h0, h1) in &holes {
            if h1 <= at || h0 >= e {
                continue;
            }
            if h0 > at {
                out.push((at, h0));
            }
            at = at.max(h1);
        }
        if at < e {
            out.push((at, e));
        }
    }
    out
}

impl NativePatcher {
    /// Extracts, compiles (or reuses the cached library) and loads.
    pub fn from_path(jit_c: &Path) -> Result<NativePatcher, BadInput> {
        let src = std::fs::read_to_string(jit_c)
            .map_err(|e| BadInput::in_file(jit_c.display(), format!("cannot read: {e}")))?;
        let ex = extract(&src);
        if ex.entry_points.is_empty() {
            return Err(BadInput::in_file(jit_c.display(), "no patch_* function definitions found"));
        }
        let abs = std::fs::canonicalize(jit_c).unwrap_or_else(|_| jit_c.to_path_buf());
        let c_src = generate(&ex, &abs.display().to_string());
        let so = compile(&c_src, jit_c)?;
        // SAFETY: the library is ours, just compiled; it has no constructors.
        let lib = unsafe { libloading::Library::new(&so) }
            .map_err(|e| BadInput::in_file(so.display(), format!("cannot load: {e}")))?;
        let mut funcs = std::collections::HashMap::new();
        for name in &ex.entry_points {
            if let Some(func) = PatchFn::from_name(name) {
                let sym = format!("sc_call_{name}\0");
                // SAFETY: the wrapper has exactly the `Wrapper` signature (generated above).
                let f: libloading::Symbol<Wrapper> = unsafe { lib.get(sym.as_bytes()) }
                    .map_err(|e| BadInput::in_file(so.display(), format!("no sc_call_{name}: {e}")))?;
                funcs.insert(func, *f);
            }
        }
        Ok(NativePatcher {
            name: format!("jit.c@{}", jit_c.display()),
            funcs,
            entry_points: ex.entry_points,
            _lib: lib,
        })
    }

    pub fn has(&self, func: PatchFn) -> bool {
        self.funcs.contains_key(&func)
    }

    /// BadInput naming the first patch function `set` calls that the jit.c
    /// does not define.
    pub fn check_set(&self, set: &StencilSet, jit_c: &Path) -> Result<(), BadInput> {
        for st in &set.stencils {
            for op in &st.emit {
                if let EmitOp::Patch(call) = op {
                    if !self.has(call.func) {
                        return Err(BadInput::in_file(
                            jit_c.display(),
                            format!(
                                "{} (used by {} at {}:{}) is not defined here",
                                call.func, st.name, set.path.display(), call.line
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as u64 } else { 4096 }
}

/// Page-aligned `[start, end)` ranges covering the image's two regions,
/// merged when they touch.
fn page_ranges(image: &Image) -> Vec<(u64, u64)> {
    let ps = page_size();
    let mut ranges: Vec<(u64, u64)> = image
        .regions()
        .map(|(_, a, b)| (a & !(ps - 1), (a + b.len() as u64 + ps - 1) & !(ps - 1)))
        .collect();
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

/// Anonymous pages mapped at fixed addresses; unmapped on drop.
struct Mapping {
    ranges: Vec<(u64, u64)>,
    /// `(address, length)` of each region of the image whose outside bytes
    /// are known to be FILL.
    geometry: Option<Vec<(u64, usize)>>,
}

impl Mapping {
    fn new(ranges: &[(u64, u64)]) -> Result<Mapping, String> {
        let mut m = Mapping { ranges: Vec::new(), geometry: None };
        for &(start, end) in ranges {
            let len = (end - start) as usize;
            // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping.
            let p = unsafe {
                libc::mmap(
                    start as *mut libc::c_void,
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                let err = std::io::Error::last_os_error();
                return Err(format!("cannot map {start:#x}..{end:#x} in stencilcheck's process ({err})"));
            }
            if p as u64 != start {
                // Old kernels ignore the flag and map elsewhere.
                // SAFETY: p..p+len was just mapped by us.
                unsafe { libc::munmap(p, len) };
                return Err(format!("{start:#x}..{end:#x} is taken in stencilcheck's process"));
            }
            m.ranges.push((start, end));
        }
        Ok(m)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        for &(start, end) in &self.ranges {
            // SAFETY: mapped by Mapping::new, nobody else holds pointers into it.
            unsafe { libc::munmap(start as *mut libc::c_void, (end - start) as usize) };
        }
    }
}

/// Fill byte for mapped bytes outside the image (a write there is reported).
const FILL: u8 = 0xa5;

impl Patcher for NativePatcher {
    fn patch(&self, func: PatchFn, image: &mut Image, location: u64, value: u64) -> Result<(), PatchAssert> {
        let fail = |message: String| PatchAssert { func, location, value, message, kind: Default::default() };
        let Some(&wrapper) = self.funcs.get(&func) else {
            return Err(fail(format!("{func} is not defined in {}", self.name)));
        };
        let mut kept = NATIVE.lock().unwrap_or_else(|e| e.into_inner());
        let ranges = page_ranges(image);
        let geometry: Vec<(u64, usize)> = image.regions().map(|(_, a, b)| (a, b.len())).collect();
        if kept.as_ref().is_none_or(|m| m.ranges != ranges) {
            *kept = None; // unmaps the previous emit's pages first
            *kept = Some(Mapping::new(&ranges).map_err(|m| PatchAssert::unusable(func, location, value, m))?);
        }
        let mapping = kept.as_mut().expect("mapped above");
        if mapping.geometry.as_ref() != Some(&geometry) {
            // New pages, or the same pages holding another image: every byte
            // outside this image must be FILL.
            // SAFETY: the ranges are mapped RW.
            unsafe {
                for &(s, e) in &mapping.ranges {
                    std::ptr::write_bytes(s as *mut u8, FILL, (e - s) as usize);
                }
            }
            mapping.geometry = Some(geometry);
        }
        // SAFETY: every region lies in the kept mapping (same ranges).
        unsafe {
            for (_, addr, bytes) in image.regions() {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), addr as *mut u8, bytes.len());
            }
        }
        let mut msg = [0 as libc::c_char; 512];
        // SAFETY: the wrapper catches asserts and faults itself; `location` is
        // the placed address the C function would get at run time.
        let rc = unsafe { wrapper(location as *mut u8, value, msg.as_mut_ptr(), msg.len()) };
        // SAFETY: as above.
        unsafe {
            for region in [Region::Code, Region::Data, Region::Trampolines, Region::Got] {
                let (addr, _) = image.bytes_of(region);
                let bytes = image.bytes_of_mut(region);
                std::ptr::copy_nonoverlapping(addr as *const u8, bytes.as_mut_ptr(), bytes.len());
            }
        }
        let mut stray = None;
        for (s, e) in outside(&ranges, image) {
            // SAFETY: s..e lies in the kept mapping.
            let bytes = unsafe { std::slice::from_raw_parts_mut(s as *mut u8, (e - s) as usize) };
            if let Some(k) = bytes.iter().position(|&b| b != FILL) {
                stray.get_or_insert(s + k as u64);
                bytes.fill(FILL); // clean for the next call
            }
        }
        drop(kept);
        let text = {
            // SAFETY: the wrapper NUL-terminates within msglen.
            let c = unsafe { std::ffi::CStr::from_ptr(msg.as_ptr()) };
            c.to_string_lossy().into_owned()
        };
        match rc {
            0 => match stray {
                Some(a) => Err(fail(format!("{func} wrote at {a:#x}, outside the stencil's code and data"))),
                None => Ok(()),
            },
            _ => Err(fail(text)),
        }
    }

    fn name(&self) -> &str {
        &self.name
    }

    /// The C runs here, on x86-64 Linux: only the 47-bit user space can be
    /// mapped, whatever the stencils' target allows.
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
        assert!(generate(&ex, "jit.c").contains("sc_call_patch_32("));
    }
}
