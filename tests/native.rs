//! The user's own `jit.c` as the patcher (`--jit-c`, `diff-patch`).
//!
//! The synthetic-jit.c tests always run. The CPython tests need CPython
//! 3.13.5's source and stencils (`scripts/verify-cpython.sh` makes them):
//! `/tmp/cpython-src/Python-3.13.5/Python/jit.c` and
//! `/tmp/cpython-stencils/3.13.5/x86_64-unknown-linux-gnu/jit_stencils.h`;
//! without them they print a note and pass. The mutants are made here, at
//! test time, from that file: no CPython code is kept in this repository.

mod common;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use stencilcheck::model::PatchFn;
use stencilcheck::patch::native::{self, NativePatcher};
use stencilcheck::patch::{FailureKind, Image, Patcher, Ports};

const JIT_C: &str = "/tmp/cpython-src/Python-3.13.5/Python/jit.c";
const HEADER: &str = "/tmp/cpython-stencils/3.13.5/x86_64-unknown-linux-gnu/jit_stencils.h";
const HEADER_A64: &str = "/tmp/cpython-stencils/3.13.5/aarch64-unknown-linux-gnu/jit_stencils.h";

fn cpython() -> Option<(String, PathBuf)> {
    if !have_cc() {
        return None;
    }
    if !Path::new(JIT_C).exists() || !Path::new(HEADER).exists() {
        common::skip(&format!("{JIT_C} or {HEADER} missing; skipped (run scripts/verify-cpython.sh)"));
        return None;
    }
    Some((std::fs::read_to_string(JIT_C).unwrap(), PathBuf::from(HEADER)))
}

/// The command line, run in this process (`cli::run`): the shared target
/// directory's binary may belong to another branch's build.
fn run(args: &[&str]) -> (i32, String, String) {
    let (code, out, err) = stencilcheck::cli::run(std::iter::once("stencilcheck").chain(args.iter().copied()));
    (code as i32, out, err)
}

/// The system C compiler `--jit-c` needs (`$CC`, else `cc`).
fn have_cc() -> bool {
    let cc = std::env::var("CC").ok().filter(|c| !c.trim().is_empty()).unwrap_or_else(|| "cc".into());
    let ok = std::process::Command::new(&cc).arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        common::skip(&format!("no C compiler ({cc}); skipped"));
    }
    ok
}

/// Writes `src` as `<tempdir>/Python/jit.c`.
fn write_jit_c(src: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("Python")).unwrap();
    let path = dir.path().join("Python/jit.c");
    std::fs::write(&path, src).unwrap();
    (dir, path.display().to_string())
}

/// `src` with `from` replaced (exactly once) by `to`.
fn mutate(src: &str, from: &str, to: &str) -> String {
    assert_eq!(src.matches(from).count(), 1, "mutation site {from:?} not unique in jit.c");
    src.replacen(from, to, 1)
}

// -- synthetic jit.c (always runs) --------------------------------------------

/// Not CPython's code: a tiny jit.c-shaped file with a helper, a macro, an
/// assert, a wild read and a function taking other arguments.
const SYNTHETIC: &str = r#"
#include "Python.h"   /* never compiled: only the patch functions are */
static void not_needed(void) { PyErr_SetString(NULL, "x { }"); }
#define IN_RANGE(V) ((int64_t)(V) >= -(1LL << 31) && (int64_t)(V) < (1LL << 31))
static uint32_t low32(uint64_t v) { return (uint32_t)v; }  // helper
void
patch_64(unsigned char *location, uint64_t value)
{
    *(uint64_t *)location = value;
}
void
patch_32r(unsigned char *location, uint64_t value)
{
    value -= (uintptr_t)location;
    assert(IN_RANGE(value));
    *(uint32_t *)location = low32(value);
}
void
patch_x86_64_32rx(unsigned char *location, uint64_t value)
{
    /* a wild read: value is not an address */
    uint64_t relaxed = *(uint64_t *)value;
    patch_32r(location, relaxed);
}
void
patch_32(unsigned char *location, uint64_t value)
{
    *(uint64_t *)location = value;  /* 4 bytes too many */
}
void
patch_other(unsigned char *location, int ordinal, void *state)
{
    (void)location; (void)ordinal; (void)state;
}
"#;

const CODE: u64 = 0x3456_7000_1000;

fn image() -> Image {
    Image::new(CODE, vec![0x90; 32], CODE + 0x40, vec![0; 32])
}

#[test]
fn synthetic_jit_c_patches_like_the_ports_and_reports_asserts_and_faults() {
    if !have_cc() {
        return;
    }
    let (_dir, path) = write_jit_c(SYNTHETIC);
    let native = NativePatcher::from_path(Path::new(&path)).unwrap();
    assert_eq!(native.entry_points, ["patch_64", "patch_32r", "patch_x86_64_32rx", "patch_32"]);
    assert!(native.name().contains("jit.c"));

    for (func, loc, value) in [
        (PatchFn::P64, CODE + 0x48, 0x1122_3344_5566_7788u64),
        (PatchFn::P32r, CODE + 4, CODE + 0x1000),
        (PatchFn::P32r, CODE + 4, CODE - 0x7fff_0000),
    ] {
        let (mut a, mut b) = (image(), image());
        Ports.patch(func, &mut a, loc, value).unwrap();
        native.patch(func, &mut b, loc, value).unwrap();
        assert_eq!(a, b, "{func} {loc:#x} {value:#x}");
    }

    // An assert: condition, function and jit.c line (16) are reported.
    let mut im = image();
    let err = native.patch(PatchFn::P32r, &mut im, CODE + 4, CODE + (1 << 32)).unwrap_err();
    assert!(err.message.contains("assert(IN_RANGE(value)) failed in patch_32r (jit.c line 15)"), "{}", err.message);
    assert_eq!(im, image(), "nothing written before the assert");

    // A wild read: a finding, not a crash; and the process keeps working.
    let err = native.patch(PatchFn::X86_64_32rx, &mut image(), CODE + 4, 0x10).unwrap_err();
    assert!(err.message.contains("SIGSEGV") && err.message.contains("accessed 0x10"), "{}", err.message);
    let mut im = image();
    native.patch(PatchFn::P64, &mut im, CODE, 7).unwrap();
    assert_eq!(im.read_u64(CODE), Some(7));

    // A write past the image (patch_32 writing 8 bytes at its last 4) is
    // reported; the next image on the same pages, at another offset, is not
    // confused by what the previous one left there.
    let err = native.patch(PatchFn::P32, &mut image(), CODE + 28, 5).unwrap_err();
    assert!(err.message.contains(&format!("wrote at {:#x}", CODE + 32)), "{}", err.message);
    for shift in [0u64, 8, 0x100, 0] {
        let mut im = Image::new(CODE + shift, vec![1; 32], CODE + shift + 0x40, vec![2; 32]);
        native.patch(PatchFn::P64, &mut im, CODE + shift + 0x40, 9).unwrap();
        native.patch(PatchFn::P32, &mut im, CODE + shift, 3).unwrap();
        assert_eq!(im.read_u64(CODE + shift), Some(3));
    }

    // A function the jit.c lacks.
    let err = native.patch(PatchFn::Aarch64_26r, &mut image(), CODE, 0).unwrap_err();
    assert!(err.message.contains("not defined"), "{}", err.message);
}

#[test]
fn a_placement_the_worker_cannot_map_is_unusable_and_ours_do_not_matter() {
    if !have_cc() {
        return;
    }
    let (_dir, path) = write_jit_c(SYNTHETIC);
    let native = NativePatcher::from_path(Path::new(&path)).unwrap();
    // Past the 47-bit user space: no process here can map it.
    let high = 1u64 << 47;
    let mut im = Image::new(high + 0x10, vec![0; 8], high + 0x4000, vec![0; 8]);
    let err = native.patch(PatchFn::P64, &mut im, high + 0x10, 1).unwrap_err();
    assert!(err.is_unusable(), "{}", err.message);
    assert!(err.message.contains("cannot map 0x800000000000..0x800000001000 in the patch worker"), "{}", err.message);
    // Memory of stencilcheck's own process is not in the way: the C runs
    // in the worker's address space, not ours.
    let mine = vec![0x77u8; 3 * 4096];
    let addr = (mine.as_ptr() as u64 + 4095) & !4095;
    let mut im = Image::new(addr, vec![0; 8], addr + 4096, vec![0; 8]);
    native.patch(PatchFn::P64, &mut im, addr, 0x1234).unwrap();
    assert_eq!(im.read_u64(addr), Some(0x1234));
    assert!(mine.iter().all(|&b| b == 0x77), "our own memory untouched");
}

#[test]
fn native_patching_is_safe_from_several_threads() {
    if !have_cc() {
        return;
    }
    let (_dir, path) = write_jit_c(SYNTHETIC);
    let native = NativePatcher::from_path(Path::new(&path)).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let native = &native;
            s.spawn(move || {
                for i in 0..200u64 {
                    let code = CODE + (t << 24) + i * 0x2000;
                    let mut im = Image::new(code, vec![0; 16], code + 16, vec![0; 16]);
                    native.patch(PatchFn::P32r, &mut im, code + 4, code + 0x100).unwrap();
                    assert_eq!(im.read_u32(code + 4), Some(0xfc));
                    assert!(native.patch(PatchFn::X86_64_32rx, &mut im, code, 8).is_err());
                }
            });
        }
    });
}

#[test]
fn a_jit_c_that_does_not_compile_is_bad_input_with_the_first_error_line() {
    if !have_cc() {
        return;
    }
    let broken = SYNTHETIC.replace("value -= (uintptr_t)location;", "value -= (uintptr_t)location");
    let (_dir, path) = write_jit_c(&broken);
    let (code, _, err) = run(&["diff-patch", "--jit-c", &path, "--cases", "10"]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("do not compile") && err.contains("jit.c:14") && err.contains("error"), "{err}");
}

#[test]
fn a_jit_c_without_patch_functions_is_bad_input() {
    let (_dir, path) = write_jit_c("int main(void) { return 0; }\n");
    let (code, _, err) = run(&["diff-patch", "--jit-c", &path]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no patch_* function"), "{err}");
}

#[test]
fn diff_patch_finds_the_synthetic_wild_read_and_agrees_elsewhere() {
    if !have_cc() {
        return;
    }
    let (_dir, path) = write_jit_c(SYNTHETIC);
    let (code, out, err) = run(&["diff-patch", "--jit-c", &path, "--cases", "300", "--seed", "3"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("DIFFERENCE patch_x86_64_32rx"), "{out}");
    assert!(!out.contains("in patch_64") && !out.contains("DIFFERENCE patch_32r"), "{out}");
    assert!(out.contains("patch_32r 300"), "{out}");
}

// -- CPython 3.13.5's jit.c ---------------------------------------------------

#[test]
fn cpython_313_jit_c_agrees_with_the_ports() {
    let Some(_) = cpython() else { return };
    let (code, out, err) = run(&["diff-patch", "--jit-c", JIT_C, "--cases", "3000"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("no differences") && out.contains("patch_aarch64_33rx 3000"), "{out}");
}

#[test]
fn cpython_313_header_verifies_with_its_own_jit_c() {
    let Some(_) = cpython() else { return };
    let (code, out, err) = run(&["verify", HEADER, "--jit-c", JIT_C, "--placements", "8"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("235 stencils: 235 correct"), "{out}");
}

#[test]
fn a_header_patch_function_missing_from_jit_c_is_bad_input() {
    let Some(_) = cpython() else { return };
    let (_dir, path) = write_jit_c(SYNTHETIC.replace("patch_x86_64_32rx", "patch_renamed").as_str());
    let (code, _, err) = run(&["verify", HEADER, "--jit-c", &path, "--placements", "1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("patch_x86_64_32rx") && err.contains("not defined"), "{err}");
}

/// Verifies the x86-64 header with a mutant; returns the report.
fn verify_mutant(mutant: &str) -> String {
    let (_dir, path) = write_jit_c(mutant);
    let (code, out, err) = run(&["verify", HEADER, "--jit-c", &path, "--placements", "8"]);
    assert_eq!(code, 1, "mutant not caught:\n{out}{err}");
    assert!(out.contains("FINDING _"), "{out}");
    assert!(out.contains(&format!("--jit-c {path}")), "replay names the jit.c:\n{out}");
    out
}

#[test]
fn mutant_wrong_sign_in_the_relaxed_displacement_is_caught() {
    let Some((src, _)) = cpython() else { return };
    let m = mutate(
        &src,
        "loc8[-2] = 0x8D;\n            value = relaxed;",
        "loc8[-2] = 0x8D;\n            value = 2 * (uint64_t)location - relaxed;",
    );
    let out = verify_mutant(&m);
    assert!(out.contains("[wrong_value]") && out.contains("lea "), "{out}");
    assert!(out.contains("hole         patch_x86_64_32rx(code + 0x"), "{out}");
}

#[test]
fn mutant_relaxing_call_star_to_jmp_is_caught() {
    let Some((src, _)) = cpython() else { return };
    let m = mutate(&src, "loc8[-1] = 0xE8;", "loc8[-1] = 0xE9;");
    // The relaxed `jmp` reaches S like the `call` would; the site is named
    // because a call must stay a call.
    let out = verify_mutant(&m);
    assert!(out.contains("[mangled_site]") && out.contains("is now a jump after patching"), "{out}");
    assert!(out.contains("hole         patch_x86_64_32rx(code + 0x"), "{out}");
}

#[test]
fn mutant_missing_minus_4_is_caught() {
    let Some((src, _)) = cpython() else { return };
    let m = mutate(&src, "*(uint64_t *)(value + 4) - 4;", "*(uint64_t *)(value + 4);");
    let out = verify_mutant(&m);
    assert!(out.contains("[wrong_value]"), "{out}");
    assert!(out.contains("hole         patch_x86_64_32rx(code + 0x"), "{out}");
}

#[test]
fn mutant_without_range_checks_is_caught_at_far_placements() {
    let Some((src, _)) = cpython() else { return };
    // Always relax, and let patch_32r truncate silently.
    let m = mutate(
        &src,
        "if ((int64_t)relaxed - (int64_t)location >= -(1LL << 31) &&\n        (int64_t)relaxed - (int64_t)location + 1 < (1LL << 31))",
        "if (1)",
    );
    let m = mutate(
        &m,
        "    assert((int64_t)value >= -(1LL << 31));\n    assert((int64_t)value < (1LL << 31));\n    *loc32 = (uint32_t)value;",
        "    *loc32 = (uint32_t)value;",
    );
    let out = verify_mutant(&m);
    assert!(out.contains("FarExterns") || out.contains("Scattered"), "{out}");
    assert!(!out.contains("[patch_assert]"), "no assert is left to fire:\n{out}");
}

#[test]
fn mutant_aarch64_wrong_bit_field_is_caught_by_diff_patch() {
    let Some((src, _)) = cpython() else { return };
    for (from, to, func) in [
        ("set_bits(loc32, 29, value, 0, 2);", "set_bits(loc32, 28, value, 0, 2);", "patch_aarch64_21r"),
        ("set_bits(loc32, 5, value, 32, 16);", "set_bits(loc32, 5, value, 31, 16);", "patch_aarch64_16c"),
        ("set_bits(loc32, 0, value, 2, 26);", "set_bits(loc32, 0, value, 1, 26);", "patch_aarch64_26r"),
    ] {
        let (_dir, path) = write_jit_c(&mutate(&src, from, to));
        let (code, out, err) = run(&["diff-patch", "--jit-c", &path, "--cases", "500"]);
        assert_eq!(code, 1, "{to}: {out}{err}");
        assert!(out.contains(&format!("DIFFERENCE {func}(")), "{to}: {out}");
    }
}

/// A patcher whose every call finds its placement taken.
struct Taken;

impl Patcher for Taken {
    fn patch(
        &self,
        func: PatchFn,
        _: &mut Image,
        location: u64,
        value: u64,
    ) -> Result<(), stencilcheck::patch::PatchAssert> {
        Err(stencilcheck::patch::PatchAssert::unusable(func, location, value, "test"))
    }
    fn name(&self) -> &str {
        "taken"
    }
}

#[test]
fn an_unusable_placement_is_inconclusive_not_a_finding() {
    let Some((_, header)) = cpython() else { return };
    let set = stencilcheck::load::load_path(&header).unwrap();
    for strict in [false, true] {
        let options = stencilcheck::pipeline::Options {
            seed: 1,
            placements: 3,
            stencils: vec!["_BINARY_OP".into()],
            placement: None,
            instruction_limit: stencilcheck::execute::DEFAULT_INSTRUCTION_LIMIT,
            threads: 1,
            strict,
            explore: 0,
            patcher: &Taken,
            engine: stencilcheck::execute::EngineKind::Unicorn,
        };
        let outcome = stencilcheck::pipeline::verify(&set, &options).unwrap();
        let r = &outcome.results[0];
        if strict {
            assert_eq!(r.findings.len(), 1, "--strict counts it");
        } else {
            assert!(r.findings.is_empty());
            assert_eq!(r.inconclusive, 3);
            assert!(r.first_inconclusive.as_ref().unwrap().1.starts_with("placement unusable"));
        }
    }
}

#[test]
fn mutant_off_by_one_reach_checks_are_caught_by_diff_patch() {
    let Some((src, _)) = cpython() else { return };
    for (from, to, func) in [
        // patch_32r's upper bound.
        ("assert((int64_t)value < (1LL << 31));", "assert((int64_t)value <= (1LL << 31));", "patch_"),
        // patch_x86_64_32rx's relaxation reach without its `+ 1`.
        (
            "(int64_t)relaxed - (int64_t)location + 1 < (1LL << 31)",
            "(int64_t)relaxed - (int64_t)location < (1LL << 31)",
            "patch_x86_64_32rx",
        ),
    ] {
        let (_dir, path) = write_jit_c(&mutate(&src, from, to));
        let (code, out, err) = run(&["diff-patch", "--jit-c", &path, "--cases", "2000"]);
        assert_eq!(code, 1, "{to}: {out}{err}");
        assert!(out.contains(&format!("DIFFERENCE {func}")), "{to}: {out}");
    }
}

#[test]
fn diff_patch_replays_the_aarch64_header_with_both_patchers() {
    let Some((src, _)) = cpython() else { return };
    if !Path::new(HEADER_A64).exists() {
        common::skip(&format!("{HEADER_A64} missing; skipped"));
        return;
    }
    let (code, out, err) = run(&["diff-patch", "--jit-c", JIT_C, "--cases", "10", "--header", HEADER_A64]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("stencil runs replayed with both, 0 skipped (placement unusable), no differences"), "{out}");

    let m = mutate(&src, "set_bits(loc32, 29, value, 0, 2);", "set_bits(loc32, 28, value, 0, 2);");
    let (_dir, path) = write_jit_c(&m);
    let (code, out, err) = run(&["diff-patch", "--jit-c", &path, "--cases", "10", "--header", HEADER_A64]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("DIFFERENCE _") && out.contains("first differing byte code+0x"), "{out}");
    assert!(out.contains("hole        patch_aarch64_21r"), "{out}");
}

// -- hostile or broken C: the worker takes the blow ---------------------------

/// Not CPython's code: a patch_64 that misbehaves in the way `value` asks.
const HOSTILE: &str = r#"
void
patch_64(unsigned char *location, uint64_t value)
{
    switch (value) {
    case 1: exit(0);
    case 2: exit(1);
    case 3: for (;;) { __asm__ volatile(""); }
    case 4: abort();
    case 5: *(volatile int *)0 = 1; break;
    case 6: { volatile uint64_t zero = 0; value /= zero; break; }
    case 7: __builtin_trap();
    case 8: fclose(stdout); break;
    case 9: printf("FINDING forged by jit.c\n"); break;
    case 10: { char *p = malloc(8); for (volatile int i = 0; i < 64; i++) p[i] = 'x'; free(p); break; }
    case 11: { char *p = malloc(8); for (volatile int i = 0; i < 12; i++) p[i] = 'x'; break; }  /* kept: found after the call */
    case 12: fprintf(stderr, "boom\n"); break;
    case 13: _exit(0);
    case 14: raise(SIGKILL); break;
    case 15: { static char *leak; leak = malloc(16); memset(leak, 1, 16); break; }  /* a clean leak */
    case 16: { volatile char pad[4096]; pad[0] = 1; patch_64(location, value); pad[1] = pad[0]; break; }
    }
    *(uint64_t *)location = value;
}
"#;

const AT: u64 = 0x2345_6000_1000;

fn small_image() -> Image {
    Image::new(AT, vec![0x90; 32], AT + 0x40, vec![0; 32])
}

#[test]
fn hostile_calls_fail_in_the_worker_and_the_next_call_works() {
    if !have_cc() {
        return;
    }
    let (_dir, path) = write_jit_c(HOSTILE);
    let limit = Duration::from_millis(300);
    let native = NativePatcher::from_path(Path::new(&path)).unwrap().with_time_limit(limit);
    assert_eq!(native.time_limit(), limit);
    for (value, kind, words) in [
        (1u64, FailureKind::Crash, "ended the patch worker process with exit status 0"),
        (2, FailureKind::Crash, "exit status 1"),
        (3, FailureKind::Crash, "did not return within 300ms"),
        (4, FailureKind::Crash, "killed the patch worker process with SIGABRT"),
        (5, FailureKind::Assert, "SIGSEGV: patch_64 accessed 0x0"),
        (6, FailureKind::Crash, "SIGFPE (integer divide by zero) in patch_64"),
        (7, FailureKind::Crash, "SIGILL: patch_64 executed an illegal instruction"),
        (8, FailureKind::Crash, "patch_64 closed or replaced its stdout or stderr"),
        (9, FailureKind::Crash, r#"wrote to stdout or stderr: "FINDING forged by jit.c\n""#),
        (
            10,
            FailureKind::Crash,
            "heap damage: patch_64 wrote outside a 8-byte block it allocated with malloc (found when it was freed)",
        ),
        (
            11,
            FailureKind::Crash,
            "heap damage: patch_64 wrote outside a 8-byte block it allocated with malloc (found after the call)",
        ),
        (12, FailureKind::Crash, r#"wrote to stdout or stderr: "boom\n""#),
        (13, FailureKind::Crash, "exit status 0"),
        (14, FailureKind::Crash, "killed the patch worker process with SIGKILL"),
        (16, FailureKind::Assert, "SIGSEGV: patch_64 accessed 0x"),
    ] {
        let started = Instant::now();
        let mut im = small_image();
        let err = native.patch(PatchFn::P64, &mut im, AT + 0x40, value).unwrap_err();
        assert_eq!(err.kind, kind, "value {value}: {}", err.message);
        assert!(err.message.contains(words), "value {value}: {}", err.message);
        if kind == FailureKind::Crash {
            assert!(
                err.message.starts_with(&format!("patch_64(location {:#x}, value {value:#x})", AT + 0x40)),
                "the call is named: {}",
                err.message
            );
        }
        assert!(started.elapsed() < limit + Duration::from_secs(2), "value {value} took {:?}", started.elapsed());
        // The next call gets a healthy worker.
        let mut im = small_image();
        native.patch(PatchFn::P64, &mut im, AT + 0x40, 0x4242).unwrap();
        assert_eq!(im.read_u64(AT + 0x40), Some(0x4242), "after value {value}");
    }
    // A clean leak is no damage; the guard of a block still allocated is
    // checked after every later call and stays intact.
    for _ in 0..3 {
        native.patch(PatchFn::P64, &mut small_image(), AT + 0x40, 15).unwrap();
    }
}

#[test]
fn a_function_that_keeps_hanging_is_not_run_again_after_the_budget() {
    if !have_cc() {
        return;
    }
    let (_dir, path) = write_jit_c(HOSTILE);
    let native = NativePatcher::from_path(Path::new(&path)).unwrap().with_time_limit(Duration::from_millis(200));
    let started = Instant::now();
    for k in 0..10 {
        let err = native.patch(PatchFn::P64, &mut small_image(), AT, 3).unwrap_err();
        assert_eq!(err.kind, FailureKind::Crash);
        if k < native::HANG_BUDGET {
            assert!(err.message.contains("did not return within"), "{}", err.message);
        } else {
            assert!(err.message.contains("not run: patch_64 already hung 3 times"), "{}", err.message);
        }
    }
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}

#[test]
fn an_undefined_helper_is_refused_at_build_time_naming_it() {
    if !have_cc() {
        return;
    }
    let src = SYNTHETIC.replace(
        "*(uint64_t *)location = value;\n}",
        "*(uint64_t *)location = value;\n    not_defined_anywhere(value);\n}",
    );
    let (_dir, path) = write_jit_c(&src);
    let (code, out, err) = run(&["diff-patch", "--jit-c", &path, "--cases", "5"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("do not compile") && err.contains("not_defined_anywhere") && err.contains("jit.c:10"),
        "{err}"
    );
}

#[test]
fn diff_patch_counts_a_crash_as_a_difference_even_where_the_ports_assert() {
    if !have_cc() {
        return;
    }
    // patch_32r exits where it should assert: both "fail", but a crash is
    // never the same outcome.
    let src = SYNTHETIC.replace("assert(IN_RANGE(value));", "if (!IN_RANGE(value)) exit(0);");
    let (_dir, path) = write_jit_c(&src);
    let (code, out, err) = run(&["diff-patch", "--jit-c", &path, "--cases", "300", "--seed", "3"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("DIFFERENCE patch_32r") && out.contains("crashed: patch_32r(location 0x"), "{out}");
    assert!(out.contains("exit status 0"), "{out}");
}

// -- hostile mutants of CPython 3.13.5's jit.c --------------------------------

/// The x86-64 header's stencil the hostile mutants are run on (patch_64 and
/// patch_x86_64_32rx calls) and how many patch calls it makes.
const HOSTILE_STENCIL: &str = "_BINARY_OP_ADD_INT";
const HOSTILE_STENCIL_CALLS: u32 = 12;

/// Inserts `stmt` at the top of a real patch function of CPython's jit.c.
fn insert_into(src: &str, func: &str, stmt: &str) -> String {
    let site = match func {
        "patch_64" => "    uint64_t *loc64 = (uint64_t *)location;\n    *loc64 = value;\n",
        "patch_x86_64_32rx" => "    uint8_t *loc8 = (uint8_t *)location;\n",
        _ => unreachable!(),
    };
    mutate(src, site, &format!("{site}    {stmt}\n"))
}

/// `verify HEADER --jit-c MUTANT --placements 2 --stencil ...`: ends in
/// time, exits 1 with a patch_assert finding naming `func`, and prints the
/// report (and nothing of the C's).
fn verify_hostile(src: &str, func: &str, stmt: &str, words: &str) {
    let (_dir, path) = write_jit_c(&insert_into(src, func, stmt));
    let started = Instant::now();
    let (code, out, err) =
        run(&["verify", HEADER, "--jit-c", &path, "--placements", "2", "--stencil", HOSTILE_STENCIL]);
    let took = started.elapsed();
    assert_eq!(code, 1, "{stmt}: {out}{err}");
    assert!(out.contains(&format!("FINDING {HOSTILE_STENCIL} [patch_assert]: {func}(")), "{stmt}: {out}");
    assert!(out.contains(words), "{stmt}: {out}");
    assert!(out.contains("1 with findings"), "the report is printed: {out}");
    assert!(!out.lines().any(|l| l.starts_with("FINDING forged")), "{out}");
    // At most the time limit for every call, plus building the worker.
    let bound = native::DEFAULT_TIME_LIMIT * 2 * HOSTILE_STENCIL_CALLS + Duration::from_secs(30);
    assert!(took < bound, "{stmt}: {took:?}");
}

#[test]
fn cpython_mutant_calling_exit_0_or_1_is_a_finding() {
    let Some((src, _)) = cpython() else { return };
    verify_hostile(&src, "patch_64", "exit(0);", "ended the patch worker process with exit status 0");
    verify_hostile(&src, "patch_64", "exit(1);", "ended the patch worker process with exit status 1");
}

#[test]
fn cpython_mutant_that_loops_forever_is_a_finding_within_the_time_limit() {
    let Some((src, _)) = cpython() else { return };
    verify_hostile(&src, "patch_x86_64_32rx", "for (;;) { __asm__ volatile(\"\"); }", "did not return within 2s");
}

#[test]
fn cpython_mutants_dying_of_a_signal_are_findings() {
    let Some((src, _)) = cpython() else { return };
    verify_hostile(&src, "patch_64", "abort();", "killed the patch worker process with SIGABRT");
    verify_hostile(&src, "patch_x86_64_32rx", "*(volatile int *)0 = 1;", "SIGSEGV: patch_x86_64_32rx accessed 0x0");
    // A stack overflow: the fault is caught on the worker's alternate stack.
    verify_hostile(
        &src,
        "patch_x86_64_32rx",
        "{ volatile char pad[4096]; pad[0] = 1; patch_x86_64_32rx(location, value); pad[1] = pad[0]; }",
        "SIGSEGV: patch_x86_64_32rx accessed 0x",
    );
    verify_hostile(
        &src,
        "patch_x86_64_32rx",
        "{ volatile uint64_t zero = 0; value /= zero; }",
        "SIGFPE (integer divide by zero) in patch_x86_64_32rx",
    );
    verify_hostile(
        &src,
        "patch_x86_64_32rx",
        "__builtin_trap();",
        "SIGILL: patch_x86_64_32rx executed an illegal instruction",
    );
}

#[test]
fn cpython_mutants_touching_stdout_are_findings() {
    let Some((src, _)) = cpython() else { return };
    verify_hostile(&src, "patch_64", "fclose(stdout);", "patch_64 closed or replaced its stdout or stderr");
    verify_hostile(
        &src,
        "patch_64",
        r#"printf("FINDING forged by jit.c: all clear\n");"#,
        r#"wrote to stdout or stderr: "FINDING forged by jit.c: all clear\n""#,
    );
}

#[test]
fn cpython_mutant_overflowing_the_heap_is_a_finding() {
    let Some((src, _)) = cpython() else { return };
    verify_hostile(
        &src,
        "patch_64",
        "{ char *p = malloc(8); for (volatile int i = 0; i < 64; i++) p[i] = 1; free(p); }",
        "heap damage: patch_64 wrote outside a 8-byte block",
    );
}

#[test]
fn cpython_mutant_calling_an_undefined_helper_is_refused_naming_it() {
    let Some((src, _)) = cpython() else { return };
    let (_dir, path) = write_jit_c(&insert_into(&src, "patch_64", "undefined_helper(value);"));
    let (code, out, err) =
        run(&["verify", HEADER, "--jit-c", &path, "--placements", "2", "--stencil", HOSTILE_STENCIL]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("do not compile") && err.contains("undefined_helper") && err.contains("jit.c:"), "{err}");
}

/// patch_64's store moved into an attributed static helper.
fn with_attributed_helper(src: &str, extra: &str) -> String {
    let m = mutate(
        src,
        "// 64-bit absolute address.\nvoid\npatch_64(",
        &format!(
            "__attribute__((noinline)) static void\nstore_64(unsigned char *location, uint64_t value)\n{{\n{extra}    *(uint64_t *)location = value;\n}}\n\n// 64-bit absolute address.\nvoid\npatch_64("
        ),
    );
    mutate(&m, "    uint64_t *loc64 = (uint64_t *)location;\n    *loc64 = value;\n", "    store_64(location, value);\n")
}

#[test]
fn cpython_with_an_attributed_static_helper_verifies_and_its_crash_is_a_finding() {
    let Some((src, _)) = cpython() else { return };
    let (_dir, path) = write_jit_c(&with_attributed_helper(&src, ""));
    let (code, out, err) = run(&["verify", HEADER, "--jit-c", &path, "--placements", "2"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("235 stencils: 235 correct"), "{out}");

    let (_dir, path) = write_jit_c(&with_attributed_helper(&src, "    abort();\n"));
    let (code, out, err) =
        run(&["verify", HEADER, "--jit-c", &path, "--placements", "2", "--stencil", HOSTILE_STENCIL]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains(&format!("FINDING {HOSTILE_STENCIL} [patch_assert]: patch_64(")) && out.contains("SIGABRT"),
        "{out}"
    );
}

#[test]
fn diff_patch_reports_cpython_crashes_as_differences_in_cases_and_emits() {
    let Some((src, _)) = cpython() else { return };
    let (_dir, path) = write_jit_c(&insert_into(&src, "patch_64", "exit(0);"));
    let (code, out, err) =
        run(&["diff-patch", "--jit-c", &path, "--cases", "20", "--header", HEADER, "--placements", "1"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("DIFFERENCE patch_64(") && out.contains("crashed: patch_64(location 0x"), "{out}");
    assert!(out.contains("DIFFERENCE _") && out.contains("ended the patch worker process with exit status 0"), "{out}");
    assert!(!out.contains("DIFFERENCE patch_32r("), "other functions still agree: {out}");

    // A hang: a difference, and the run still ends (the budget stops it).
    let (_dir, path) = write_jit_c(&insert_into(&src, "patch_64", "for (;;) { __asm__ volatile(\"\"); }"));
    let started = Instant::now();
    let (code, out, err) = run(&["diff-patch", "--jit-c", &path, "--cases", "50"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("did not return within 2s") && out.contains("not run: patch_64 already hung"), "{out}");
    assert!(
        started.elapsed() < native::DEFAULT_TIME_LIMIT * (native::HANG_BUDGET + 1) + Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

/// The aarch64 relocation bugs of the issue, planted in a copy of 3.13's
/// jit.c, each caught by `verify --jit-c` on the aarch64 header, naming the
/// stencil, the site and the patch function that wrote it.
#[test]
fn aarch64_mutants_are_caught_by_verify_on_the_aarch64_header() {
    let Some((src, _)) = cpython() else { return };
    if !Path::new(HEADER_A64).exists() {
        common::skip(&format!("{HEADER_A64} missing; skipped"));
        return;
    }
    let cases = [
        // lo12 written unscaled into an 8-byte ldr.
        (
            "    set_bits(loc32, 10, value, shift, 12);",
            "    set_bits(loc32, 10, value, 0, 12);",
            "R_AARCH64_LD64_GOT_LO12_NC",
            "patch_aarch64_12x",
        ),
        // branch26 offset off by 4.
        (
            "    assert(IS_AARCH64_BRANCH(*loc32));\n    value -= (uintptr_t)location;",
            "    assert(IS_AARCH64_BRANCH(*loc32));\n    value -= (uintptr_t)location - 4;",
            "R_AARCH64_JUMP26",
            "patch_aarch64_26r",
        ),
        // ADRP immlo from the wrong bits of the page delta.
        (
            "    set_bits(loc32, 29, value, 0, 2);",
            "    set_bits(loc32, 29, value, 1, 2);",
            "R_AARCH64_ADR_GOT_PAGE",
            "patch_aarch64_21rx",
        ),
        // page delta from the unaligned difference.
        (
            "    value = (value >> 12) - ((uintptr_t)location >> 12);",
            "    value = (value - (uintptr_t)location) >> 12;",
            "R_AARCH64_ADR_GOT_PAGE",
            "patch_aarch64_21rx",
        ),
    ];
    for (from, to, reloc, func) in cases {
        let (_dir, path) = write_jit_c(&mutate(&src, from, to));
        let (code, out, err) =
            run(&["verify", HEADER_A64, "--jit-c", &path, "--placements", "4", "--stencil", "_BINARY_OP"]);
        assert_eq!(code, 1, "{to}: not caught\n{out}{err}");
        let finding = out
            .split("\nFINDING ")
            .find(|f| f.contains(reloc))
            .unwrap_or_else(|| panic!("{to}: no {reloc} finding\n{out}"));
        assert!(finding.starts_with("_BINARY_OP "), "{to}: names the stencil\n{finding}");
        assert!(finding.contains("at code+0x"), "{to}: names the site\n{finding}");
        assert!(finding.contains(&format!("hole         {func}(code + 0x")), "{to}: names the function\n{finding}");
    }
    // The unmodified jit.c is clean on the same stencil.
    let (code, out, err) =
        run(&["verify", HEADER_A64, "--jit-c", JIT_C, "--placements", "4", "--stencil", "_BINARY_OP"]);
    assert_eq!(code, 0, "{out}{err}");
}
