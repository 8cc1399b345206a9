//! Mach-O and COFF objects: the stencils written for these tests
//! (`tests/fixtures/objects/*.s`, assembled by
//! `scripts/make-object-fixtures.sh`) and the corpus templates compiled for
//! darwin (`corpus/*-apple-darwin/`): what the loader derives, that they
//! verify and cross-check clean, that damaged objects are refused naming
//! file and section, and that a mutated object is caught.

mod common;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use stencilcheck::model::{DataCommentKind, PatchFn, RelocKind, Section, Stencil, Symbol, Term, Value};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/objects").join(format!("{name}.o"))
}

fn load(name: &str) -> Stencil {
    let set = stencilcheck::load::load_path(&fixture(name)).expect("fixture loads");
    assert_eq!(set.stencils.len(), 1);
    set.stencils.into_iter().next().unwrap()
}

fn hole(s: &Stencil, section: Section, offset: u64) -> (PatchFn, Value) {
    let h = s.holes().find(|h| h.section == section && h.offset == offset);
    let h = h.unwrap_or_else(|| panic!("no hole at {section}+{offset:#x}: {:?}", s.emit));
    (h.func, h.value.clone())
}

fn stencilcheck(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stencilcheck")).args(args).output().expect("runs")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Verify through the binary; (exit code, output).
fn verify(path: &Path, placements: &str) -> (Option<i32>, String) {
    let o = stencilcheck(&["verify", path.to_str().unwrap(), "--placements", placements]);
    (o.status.code(), text(&o))
}

#[test]
fn macho_x86_64_section_relative_signed_is_its_true_referent() {
    let s = load("macho_x86_64");
    let set = stencilcheck::load::load_path(&fixture("macho_x86_64")).unwrap();
    assert_eq!(set.target.to_string(), "x86_64 Mach-O CPython 3.13");
    // __text is 0x2f bytes; its final `jmp _JIT_CONTINUE` (e9, 0x2a) is cut.
    assert_eq!(s.code.len(), 0x2a);
    // __const lands at data+0 (address 0x2f − 0x2f bytes of code); the lea
    // refers to Ltab+3 = __const+5: S = data, A = 5 − 4 (not CPython's
    // data + code size + field − 4).
    assert_eq!(hole(&s, Section::Code, 0xe), (PatchFn::P32r, Value::new(Term::Data, 1)));
    // The oracle names the place as the header's listing does: the object
    // address (0x2f + 5) less 4, from `__const` standing for address 0.
    let r = s.relocations.iter().find(|r| r.offset == 0xe).expect("the SIGNED relocation");
    assert_eq!(
        (r.kind, &r.symbol, r.addend),
        (RelocKind::MachO_X86_64_SIGNED, &Symbol::Local("__const".into()), 0x2f + 5 - 4)
    );
    assert_eq!(s.locals.get("__const"), Some(&0x2fu64.wrapping_neg()));
    assert_eq!(&s.data[2..10], &0x1122334455667788u64.to_le_bytes());
    // GOT loads: the addend is in the field (0) less 4; slots after the
    // 10 bytes of __const padded to 16, in relocation-table order (Mach-O
    // lists the last relocation first).
    assert_eq!(hole(&s, Section::Code, 0x1d), (PatchFn::X86_64_32rx, Value::new(Term::Data, 0x10 - 4)));
    assert_eq!(hole(&s, Section::Code, 0x4), (PatchFn::X86_64_32rx, Value::new(Term::Data, 0x18 - 4)));
    assert_eq!(hole(&s, Section::Data, 0x10), (PatchFn::P64, Value::new(Term::ErrorTarget, 0)));
    assert_eq!(hole(&s, Section::Data, 0x18), (PatchFn::P64, Value::new(Term::Oparg, 0)));
    assert!(!s.relocations.iter().any(|r| r.symbol == Symbol::Continue), "the cut jump leaves the oracle");
}

#[test]
fn macho_arm64_addend_pairs_and_the_far_call_veneer() {
    let s = load("macho_arm64");
    // ARM64_RELOC_ADDEND pairs: +16 on the extern, +2 on the local string
    // (__cstring at data+0).
    let table = Value::new(Term::Symbol("ext_table".into()), 16);
    assert_eq!(hole(&s, Section::Code, 0x18), (PatchFn::Aarch64_21r, table.clone()));
    assert_eq!(hole(&s, Section::Code, 0x1c), (PatchFn::Aarch64_12, table));
    assert_eq!(hole(&s, Section::Code, 0x24), (PatchFn::Aarch64_21r, Value::new(Term::Data, 2)));
    assert_eq!(hole(&s, Section::Code, 0x28), (PatchFn::Aarch64_12, Value::new(Term::Data, 2)));
    assert_eq!(&s.data[..13], b"stencilcheck\0");
    // The GOT pair folds into one 33rx.
    assert_eq!(hole(&s, Section::Code, 0x8).0, PatchFn::Aarch64_33rx);
    // `bl _ext_fn` (0x30) reaches a veneer at 0x40 (code padded to 8 first):
    // movz/movk x8 ×4 of &ext_fn, br x8; the final `b _JIT_CONTINUE` stays.
    assert_eq!(&s.code[0x30..0x34], &(0x9400_0000u32 | (0x10 >> 2)).to_le_bytes());
    assert_eq!(&s.code[0x50..0x54], &0xd61f_0100u32.to_le_bytes());
    assert_eq!(s.code.len(), 0x58);
    for (k, f) in
        [PatchFn::Aarch64_16a, PatchFn::Aarch64_16b, PatchFn::Aarch64_16c, PatchFn::Aarch64_16d].into_iter().enumerate()
    {
        assert_eq!(hole(&s, Section::Code, 0x40 + 4 * k as u64), (f, Value::new(Term::Symbol("ext_fn".into()), 0)));
    }
    assert!(!s.holes().any(|h| h.offset == 0x30), "the branch itself is resolved in the body");
    assert_eq!(hole(&s, Section::Code, 0x38), (PatchFn::Aarch64_26r, Value::new(Term::Continue, 0)));
    // The listing keeps the branch as objdump printed it (`bl .`).
    assert_eq!(s.instruction_at(0x30).unwrap().bytes, 0x9400_0000u32.to_le_bytes());
    let kinds: Vec<RelocKind> = s.relocations.iter().map(|r| r.kind).collect();
    assert!(kinds.contains(&RelocKind::MachO_ARM64_BRANCH26) && kinds.contains(&RelocKind::Aarch64_MOVW_UABS_G3));
}

#[test]
fn coff_imports_are_got_slots_and_the_final_jump_is_cut() {
    let s = load("coff_x86_64");
    // .text is 0x2e bytes; the final `rex.W jmp *__imp__JIT_CONTINUE` (0x27) is cut.
    assert_eq!(s.code.len(), 0x27);
    // .rdata (19 bytes) at data+0, padded to 24; then the slots.
    assert_eq!(&s.data[..19], b"stencilcheck: coff\0");
    assert_eq!(s.data.len(), 0x18 + 2 * 8, "no slot for the continuation: only the cut jump used it");
    assert_eq!(hole(&s, Section::Code, 0x7), (PatchFn::X86_64_32rx, Value::new(Term::Data, 0x18 - 4)));
    // REL32 against the .rdata section symbol, field 4: the string + 4.
    assert_eq!(hole(&s, Section::Code, 0x15), (PatchFn::X86_64_32rx, Value::new(Term::Data, 0)));
    assert_eq!(hole(&s, Section::Code, 0x1f), (PatchFn::X86_64_32rx, Value::new(Term::Data, 0x20 - 4)));
    assert_eq!(hole(&s, Section::Data, 0x20), (PatchFn::P64, Value::new(Term::Symbol("PyFx_Helper".into()), 0)));
    let r = s.relocations.iter().find(|r| r.offset == 0x1f).unwrap();
    assert_eq!(
        (r.kind, &r.symbol, r.addend),
        (RelocKind::Coff_AMD64_REL32_Import, &Symbol::External("PyFx_Helper".into()), -4)
    );
    assert_eq!(r.text, "000000000000001f:  IMAGE_REL_AMD64_REL32 __imp_PyFx_Helper");
}

/// Windows on Arm: every COFF ARM64 relocation type CPython's objects use,
/// and a pointer in .rdata (ADDR64) that is a slot of the data.
#[test]
fn coff_arm64_relocation_types_and_a_pointer_in_rdata() {
    let s = load("coff_arm64");
    let kinds: Vec<RelocKind> = s.relocations.iter().map(|r| r.kind).collect();
    for k in [
        RelocKind::Coff_ARM64_PAGEBASE_REL21,
        RelocKind::Coff_ARM64_PAGEOFFSET_12L_Import,
        RelocKind::Coff_ARM64_PAGEOFFSET_12A,
        RelocKind::Coff_ARM64_BRANCH19,
        RelocKind::Coff_ARM64_BRANCH26,
    ] {
        assert!(kinds.contains(&k), "{k:?} missing from {kinds:?}");
    }
    assert_eq!(hole(&s, Section::Data, 0), (PatchFn::P64, Value::new(Term::Symbol("PyFx_Table".into()), 0)));
    let slot = s.data_comments.iter().find(|c| c.offset == 0 && matches!(c.kind, DataCommentKind::Slot(_)));
    assert!(slot.is_some(), "the pointer is a slot: {:?}", s.data_comments);
    let s = load("coff_x86_64_slot");
    assert_eq!(hole(&s, Section::Data, 0), (PatchFn::P64, Value::new(Term::Symbol("PyFx_Table".into()), 0)));
}

#[test]
fn fixtures_and_darwin_corpus_verify_and_cross_check_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut inputs: Vec<PathBuf> = ["macho_x86_64", "macho_arm64", "coff_x86_64", "coff_x86_64_slot", "coff_arm64"]
        .iter()
        .map(|n| fixture(n))
        .collect();
    inputs.push(root.join("corpus/x86_64-apple-darwin"));
    inputs.push(root.join("corpus/aarch64-apple-darwin"));
    for p in inputs {
        let o = stencilcheck(&["verify", p.to_str().unwrap(), "--placements", "16", "--cross-check-objdump"]);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(0), "{t}");
        assert!(t.contains(", 0 with findings (0 findings)"), "{t}");
        assert!(t.contains("loader and llvm-objdump") || t.contains("not on PATH: skipped"), "{t}");
    }
}

/// Where the named section's header is in a Mach-O object, and its
/// relocation table (offset, count).
fn macho_section(b: &[u8], sect: &[u8; 16], seg: &[u8; 16]) -> (usize, usize, usize) {
    let mut name = sect.to_vec();
    name.extend_from_slice(seg);
    let at = b.windows(32).position(|w| w == name.as_slice()).expect("section header");
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) as usize;
    (at, u32_at(at + 56), u32_at(at + 60))
}

fn padded(s: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..s.len()].copy_from_slice(s.as_bytes());
    out
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Exit 2, one line naming the file and `what` (a section, a message).
fn refused(path: &Path, what: &[&str]) {
    let (code, t) = verify(path, "1");
    assert_eq!(code, Some(2), "{t}");
    assert_eq!(t.trim().lines().count(), 1, "{t}");
    assert!(t.contains(path.file_name().unwrap().to_str().unwrap()), "{t}");
    for w in what {
        assert!(t.contains(w), "`{w}` not in: {t}");
    }
}

#[test]
fn damaged_macho_relocation_tables_are_refused_naming_file_and_section() {
    let tmp = tempfile::tempdir().unwrap();
    let good = std::fs::read(fixture("macho_arm64")).unwrap();
    let (hdr, reloff, n) = macho_section(&good, &padded("__text"), &padded("__TEXT"));
    assert!(n >= 10);
    let info = |b: &[u8], k: usize| u32::from_le_bytes(b[reloff + 8 * k + 4..reloff + 8 * k + 8].try_into().unwrap());
    let set_info =
        |b: &mut Vec<u8>, k: usize, v: u32| b[reloff + 8 * k + 4..reloff + 8 * k + 8].copy_from_slice(&v.to_le_bytes());

    // The table moved past the end of the file.
    let mut b = good.clone();
    b[hdr + 56..hdr + 60].copy_from_slice(&(good.len() as u32).to_le_bytes());
    refused(&write(tmp.path(), "past.o", &b), &["__text+0x0", "lies outside the file"]);

    // One entry more than the file holds.
    let mut b = good.clone();
    b[hdr + 60..hdr + 64].copy_from_slice(&(((good.len() - reloff) / 8 + 1) as u32).to_le_bytes());
    refused(&write(tmp.path(), "count.o", &b), &["__text+0x0", "lies outside the file"]);

    // An unknown relocation type (15).
    let mut b = good.clone();
    let v = info(&b, 0);
    set_info(&mut b, 0, (v & 0x0fff_ffff) | (15 << 28));
    refused(&write(tmp.path(), "type.o", &b), &["__text+", "unknown relocation type 15"]);

    // A wrong r_length (a 26-bit branch claiming 8 bytes).
    let mut b = good.clone();
    let v = info(&b, 0);
    set_info(&mut b, 0, v | (3 << 25));
    refused(&write(tmp.path(), "length.o", &b), &["__text+", "r_length 3"]);

    // An ARM64_RELOC_ADDEND whose relocation became a branch.
    let k = (0..n).find(|&k| info(&good, k) >> 28 == 10).expect("an ADDEND entry");
    let mut b = good.clone();
    let v = info(&b, k + 1);
    set_info(&mut b, k + 1, (v & 0x0fff_ffff) | (2 << 28));
    refused(&write(tmp.path(), "addend.o", &b), &["__text+0x0", "ARM64_RELOC_ADDEND not followed"]);

    // A scattered entry (the `object` iterator would skip it).
    let mut b = good.clone();
    b[reloff + 3] |= 0x80;
    refused(&write(tmp.path(), "scattered.o", &b), &["__text+0x0", "scattered"]);
}

#[test]
fn damaged_coff_relocation_tables_are_refused_naming_file_and_section() {
    let tmp = tempfile::tempdir().unwrap();
    let good = std::fs::read(fixture("coff_x86_64")).unwrap();
    // The first section header (.text) follows the 20-byte file header.
    assert_eq!(&good[20..25], b".text");
    let text = 20;
    let reloff = u32::from_le_bytes(good[text + 24..text + 28].try_into().unwrap()) as usize;

    let mut b = good.clone();
    b[text + 24..text + 28].copy_from_slice(&(good.len() as u32 + 100).to_le_bytes());
    refused(&write(tmp.path(), "past.o", &b), &[".text+0x0", "lies outside the file"]);

    let mut b = good.clone();
    b[reloff + 8..reloff + 10].copy_from_slice(&0x11u16.to_le_bytes());
    refused(&write(tmp.path(), "type.o", &b), &[".text+0x7", "unknown relocation type 0x11"]);

    let mut b = good.clone();
    b[reloff..reloff + 4].copy_from_slice(&0x2cu32.to_le_bytes());
    refused(&write(tmp.path(), "outside.o", &b), &[".text+0x2c", "outside its section"]);

    let mut b = good.clone();
    b[reloff + 4..reloff + 8].copy_from_slice(&0xffffu32.to_le_bytes());
    refused(&write(tmp.path(), "symbol.o", &b), &[".text+0x7", "bad symbol index"]);
}

/// Single-byte damage anywhere never panics: a stencil or a located error.
#[test]
fn damaged_macho_and_coff_bytes_never_panic() {
    for name in ["macho_x86_64", "macho_arm64", "coff_x86_64", "coff_x86_64_slot", "coff_arm64"] {
        let good = std::fs::read(fixture(name)).unwrap();
        for i in 0..good.len() {
            for v in [0u8, 0xff, good[i] ^ 0x10] {
                let mut b = good.clone();
                b[i] = v;
                match stencilcheck::load::load_bytes(Path::new("t.o"), &b) {
                    Ok(set) => assert_eq!(set.stencils.len(), 1),
                    Err(e) => assert!(e.location.starts_with("t.o"), "{e}"),
                }
            }
        }
    }
}

#[test]
fn a_mutated_addend_is_a_finding_and_a_dropped_relocation_a_difference() {
    let tmp = tempfile::tempdir().unwrap();
    let good = std::fs::read(fixture("macho_x86_64")).unwrap();
    let (hdr, _, n) = macho_section(&good, &padded("__text"), &padded("__TEXT"));
    let code = u32::from_le_bytes(good[hdr + 48..hdr + 52].try_into().unwrap()) as usize;

    // The GOT load of the oparg (field at 0x4) with addend 0 instead of −4:
    // the instruction no longer reads the slot.
    let mut b = good.clone();
    assert_eq!(&b[code + 1..code + 4], &[0x48, 0x8b, 0x05]);
    b[code + 4] = 4;
    let (exit, t) = verify(&write(tmp.path(), "addend.o", &b), "4");
    assert_eq!(exit, Some(1), "{t}");
    assert!(t.contains("FINDING addend") && t.contains("code + 0x4"), "{t}");

    // The last table entry (the oparg's GOT load) dropped: a consistent
    // object the verifier cannot fault alone, but `diff` against the
    // object it came from names the lost relocation.
    let mut b = good.clone();
    b[hdr + 60..hdr + 64].copy_from_slice(&(n as u32 - 1).to_le_bytes());
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));
    std::fs::create_dir_all(&a_dir).unwrap();
    std::fs::create_dir_all(&b_dir).unwrap();
    std::fs::write(a_dir.join("x.o"), &good).unwrap();
    std::fs::write(b_dir.join("x.o"), &b).unwrap();
    let o = stencilcheck(&["diff", a_dir.to_str().unwrap(), b_dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("x: relocation only in the header (line 0): 0x4: X86_64_RELOC_GOT_LOAD _JIT_OPARG-0x4"));
}

/// CPython's own 3.13.5 objects and headers, when built on this machine.
#[test]
fn cpython_macho_and_coff_objects_verify_and_diff_as_explained() {
    let root = Path::new("/tmp/cpython-stencils/3.13.5");
    for (triple, stencils, differences) in
        [("x86_64-apple-darwin", 235, 44), ("aarch64-apple-darwin", 234, 0), ("x86_64-pc-windows-msvc", 235, 0)]
    {
        let (objs, header) = (root.join(triple).join("objs"), root.join(triple).join("jit_stencils.h"));
        if !objs.is_dir() || !header.is_file() {
            common::skip(&format!("{} absent (scripts/verify-cpython.sh builds it): skipped", objs.display()));
            continue;
        }
        let (code, t) = verify(&objs, "4");
        assert_eq!(code, Some(0), "{triple}: {t}");
        assert!(t.contains(&format!("{stencils} stencils: {stencils} correct")), "{triple}: {t}");
        let o = stencilcheck(&["diff", header.to_str().unwrap(), objs.to_str().unwrap()]);
        let t = text(&o);
        assert!(t.contains(&format!("objects: {differences} difference")), "{triple}: {t}");
        // x86-64 darwin: CPython's section-relative X86_64_RELOC_SIGNED, 22
        // sites × (its hole, ours); the relocations themselves agree.
        for line in t.lines().filter(|l| l.contains(": ") && !l.contains("header stencils")) {
            assert!(line.contains("hole only in the") && line.contains("patch_32r(code + "), "{line}");
        }
    }
}

/// Which sections are the stencil's: a COFF section is skipped when it is
/// unwind info (.pdata/.xdata, also `$`-suffixed), debug info, or
/// discardable / removed / linker info, or not readable. Each variant
/// renames or re-flags the .rdata that the code points into: skipped, the
/// code's relocation names a section that was not copied (refused);
/// copied, the stencil loads.
#[test]
fn coff_sections_are_copied_or_skipped_by_name_and_characteristics() {
    const READ: u32 = 0x4000_0000;
    const INIT: u32 = 0x40;
    let good = std::fs::read(fixture("coff_x86_64_slot")).unwrap();
    let rdata = 20 + 3 * 40;
    assert_eq!(&good[rdata..rdata + 6], b".rdata");
    let variant = |name: &[u8], characteristics: u32| {
        let mut b = good.clone();
        let mut n = [0u8; 8];
        n[..name.len()].copy_from_slice(name);
        b[rdata..rdata + 8].copy_from_slice(&n);
        b[rdata + 36..rdata + 40].copy_from_slice(&characteristics.to_le_bytes());
        stencilcheck::load::load_bytes(Path::new("v.o"), &b)
    };
    assert!(variant(b".rdata", READ | INIT).is_ok());
    assert!(variant(b".rdata2", READ).is_ok());
    let skipped: [(&[u8], u32); 9] = [
        (b".pdata", READ | INIT),
        (b".xdata", READ | INIT),
        (b".pdata$x", READ | INIT),
        (b".xdata$x", READ | INIT),
        (b".debug", READ | INIT),
        (b".rdata", READ | INIT | 0x0200_0000), // discardable
        (b".rdata", READ | INIT | 0x800),       // LNK_REMOVE
        (b".rdata", READ | INIT | 0x200),       // LNK_INFO
        (b".rdata", INIT),                      // not readable
    ];
    for (name, c) in skipped {
        let shown = String::from_utf8_lossy(name);
        let e = variant(name, c).err().unwrap_or_else(|| panic!("{shown} {c:#x} was copied"));
        assert!(e.to_string().contains("not copied"), "{shown} {c:#x}: {e}");
    }
}

/// Mach-O: debug sections, __eh_frame and __compact_unwind are skipped;
/// any other section is the stencil's.
#[test]
fn macho_sections_are_copied_or_skipped_by_name_and_attributes() {
    let good = std::fs::read(fixture("macho_arm64")).unwrap();
    let (at, _, _) = macho_section(&good, &padded("__cstring"), &padded("__TEXT"));
    let variant = |name: &str, flags: u32| {
        let mut b = good.clone();
        b[at..at + 16].copy_from_slice(&padded(name));
        b[at + 64..at + 68].copy_from_slice(&flags.to_le_bytes());
        stencilcheck::load::load_bytes(Path::new("v.o"), &b)
    };
    assert!(variant("__cstring", 2).is_ok());
    assert!(variant("__const", 0).is_ok());
    for (name, flags) in [("__eh_frame", 0), ("__compact_unwind", 0), ("__cstring", 2 | 0x0200_0000)] {
        let e = variant(name, flags).err().unwrap_or_else(|| panic!("{name} {flags:#x} was copied"));
        assert!(e.to_string().contains("not copied"), "{name} {flags:#x}: {e}");
    }
}
