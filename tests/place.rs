//! Stage tests of placement (`src/place.rs`): determinism, legality of every
//! relative hole, the layout families, and impossible placements.
//!
//! Stencils are built by hand; the placement is checked against the holes'
//! own arithmetic (`data + addend − (code + offset)` must fit a rel32), not
//! against place.rs's internals.

use common::{place, placements, USER_END, USER_MIN};
use std::collections::BTreeSet;
use stencilcheck::model::{DataComment, DataCommentKind, EmitOp, PatchFn, RelocKind, Section, Stencil, Term};
use stencilcheck::patch::{self, Ports};
use stencilcheck::place::{Layout, Placement, PAGE};
mod common;
use common::{hole, reloc, slot};

const REACH: i64 = 1 << 31;
const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// A uop with several relative data holes (three GOT loads, a rodata `lea`,
/// a GOT jump), one extern reached directly by a PC32 hole, and targets:
///
/// ```text
///  0: 48 8b 05 ..   mov rax, [rip+slot PyFoo]      @3  REX_GOTPCRELX PyFoo-4
///  7: 48 8b 0d ..   mov rcx, [rip+slot PyBar]      @10 REX_GOTPCRELX PyBar-4
/// 14: 48 8d 15 ..   lea rdx, [rip+.L.str]          @17 PC32 .L.str-4
/// 21: ff 25 ..      jmp [rip+slot JUMP_TARGET]     @23 GOTPCRELX _JIT_JUMP_TARGET-4
/// 27: e8 ..         call PyNear                    @28 PC32 PyNear-4
/// 32: ff 25 ..      jmp [rip+slot ERROR_TARGET]    @34 GOTPCRELX _JIT_ERROR_TARGET-4
/// 38: ff 25 ..      jmp [rip+slot TOP]             @40 GOTPCRELX _JIT_TOP-4
/// 44: end
/// ```
fn multi(name: &str) -> Stencil {
    let mut code = Vec::new();
    code.extend([0x48, 0x8b, 0x05, 0, 0, 0, 0]);
    code.extend([0x48, 0x8b, 0x0d, 0, 0, 0, 0]);
    code.extend([0x48, 0x8d, 0x15, 0, 0, 0, 0]);
    code.extend([0xff, 0x25, 0, 0, 0, 0]);
    code.extend([0xe8, 0, 0, 0, 0]);
    code.extend([0xff, 0x25, 0, 0, 0, 0]);
    code.extend([0xff, 0x25, 0, 0, 0, 0]);
    assert_eq!(code.len(), 44);
    let mut data = b"hello\0\0\0".to_vec();
    data.resize(48, 0);
    Stencil {
        locals: Default::default(),
        ordinals: Default::default(),
        trampoline_mask: Vec::new(),
        got_mask: Vec::new(),
        name: name.into(),
        line: 1,
        code,
        data,
        instructions: vec![],
        relocations: vec![
            reloc(3, RelocKind::X86_64_REX_GOTPCRELX, "PyFoo", -4),
            reloc(10, RelocKind::X86_64_REX_GOTPCRELX, "PyBar", -4),
            reloc(17, RelocKind::X86_64_PC32, ".L.str", -4),
            reloc(23, RelocKind::X86_64_GOTPCRELX, "_JIT_JUMP_TARGET", -4),
            reloc(28, RelocKind::X86_64_PC32, "PyNear", -4),
            reloc(34, RelocKind::X86_64_GOTPCRELX, "_JIT_ERROR_TARGET", -4),
            reloc(40, RelocKind::X86_64_GOTPCRELX, "_JIT_TOP", -4),
        ],
        data_comments: vec![
            DataComment { offset: 0, kind: DataCommentKind::Bytes, line: 0 },
            slot(8, Term::Symbol("PyFoo".into())),
            slot(16, Term::Symbol("PyBar".into())),
            slot(24, Term::JumpTarget),
            slot(32, Term::ErrorTarget),
            slot(40, Term::Top),
        ],
        emit: vec![
            EmitOp::CopyData { line: 0 },
            hole(PatchFn::P64, Section::Data, 8, Term::Symbol("PyFoo".into()), 0),
            hole(PatchFn::P64, Section::Data, 16, Term::Symbol("PyBar".into()), 0),
            hole(PatchFn::P64, Section::Data, 24, Term::JumpTarget, 0),
            hole(PatchFn::P64, Section::Data, 32, Term::ErrorTarget, 0),
            hole(PatchFn::P64, Section::Data, 40, Term::Top, 0),
            EmitOp::CopyCode { line: 0 },
            hole(PatchFn::X86_64_32rx, Section::Code, 3, Term::Data, 8 - 4),
            hole(PatchFn::X86_64_32rx, Section::Code, 10, Term::Data, 16 - 4),
            hole(PatchFn::P32r, Section::Code, 17, Term::Data, -4),
            hole(PatchFn::X86_64_32rx, Section::Code, 23, Term::Data, 24 - 4),
            hole(PatchFn::P32r, Section::Code, 28, Term::Symbol("PyNear".into()), -4),
            hole(PatchFn::X86_64_32rx, Section::Code, 34, Term::Data, 32 - 4),
            hole(PatchFn::X86_64_32rx, Section::Code, 40, Term::Data, 40 - 4),
        ],
    }
}

/// Only GOT loads of externs (no extern has a direct relative hole):
/// `mov rax, [rip+slot PyFoo]` @3, `mov rcx, [rip+slot PyBar]` @10, then a GOT jump to CONTINUE @16.
fn got_only(name: &str) -> Stencil {
    let mut s = multi(name);
    s.code = vec![0x48, 0x8b, 0x05, 0, 0, 0, 0, 0x48, 0x8b, 0x0d, 0, 0, 0, 0, 0xff, 0x25, 0, 0, 0, 0];
    s.data = vec![0; 24];
    s.relocations = vec![
        reloc(3, RelocKind::X86_64_REX_GOTPCRELX, "PyFoo", -4),
        reloc(10, RelocKind::X86_64_REX_GOTPCRELX, "PyBar", -4),
        reloc(16, RelocKind::X86_64_GOTPCRELX, "_JIT_CONTINUE", -4),
    ];
    s.data_comments =
        vec![slot(0, Term::Symbol("PyFoo".into())), slot(8, Term::Symbol("PyBar".into())), slot(16, Term::Continue)];
    s.emit = vec![
        EmitOp::CopyData { line: 0 },
        hole(PatchFn::P64, Section::Data, 0, Term::Symbol("PyFoo".into()), 0),
        hole(PatchFn::P64, Section::Data, 8, Term::Symbol("PyBar".into()), 0),
        hole(PatchFn::P64, Section::Data, 16, Term::Continue, 0),
        EmitOp::CopyCode { line: 0 },
        hole(PatchFn::X86_64_32rx, Section::Code, 3, Term::Data, -4),
        hole(PatchFn::X86_64_32rx, Section::Code, 10, Term::Data, 8 - 4),
        hole(PatchFn::X86_64_32rx, Section::Code, 16, Term::Data, 16 - 4),
    ];
    s
}

/// Displacement of every relative code hole: (hole offset, term, displacement).
fn displacements(s: &Stencil, p: &Placement) -> Vec<(u64, Term, i64)> {
    s.holes()
        .filter(|h| h.section == Section::Code && matches!(h.func, PatchFn::P32r | PatchFn::X86_64_32rx))
        .map(|h| {
            let value = p.value(&h.value, s);
            let location = p.code + h.offset;
            (h.offset, h.value.term.clone(), value.wrapping_sub(location) as i64)
        })
        .collect()
}

fn in_user(addr: u64, len: u64) -> bool {
    addr >= USER_MIN && addr.checked_add(len).is_some_and(|e| e <= USER_END)
}

// ---------------------------------------------------------------------------
// Determinism
// ---------------------------------------------------------------------------

#[test]
fn same_seed_stencil_and_index_give_the_same_placement() {
    let s = multi("_MULTI");
    for seed in [0, 1, 42, u64::MAX] {
        for index in 0..16 {
            let a = place(&s, seed, index).unwrap();
            let b = place(&s, seed, index).unwrap();
            assert_eq!(format!("{a:?}"), format!("{b:?}"), "seed {seed} index {index}");
            assert_eq!(a.index, index);
        }
    }
    // `placements` is the same as placing one index at a time.
    let all = placements(&s, 7, 16).unwrap();
    for (i, p) in all.iter().enumerate() {
        assert_eq!(format!("{p:?}"), format!("{:?}", place(&s, 7, i as u32).unwrap()));
    }
}

#[test]
fn a_different_seed_moves_the_code() {
    let s = multi("_MULTI");
    for index in 0..16 {
        let codes: BTreeSet<u64> = (0..8u64).map(|seed| place(&s, seed, index).unwrap().code).collect();
        // `High` code sits a few pages below the top: 96 possible addresses,
        // so 8 seeds may repeat one. Every other layout draws from a vast range.
        let want = if place(&s, 0, index).unwrap().layout == Layout::High { 5 } else { 8 };
        assert!(codes.len() >= want, "index {index}: 8 seeds gave only {} code addresses", codes.len());
    }
    // And different indices under one seed differ too.
    let codes: BTreeSet<u64> = (0..32).map(|i| place(&s, 3, i).unwrap().code).collect();
    assert_eq!(codes.len(), 32);
}

#[test]
fn streams_are_per_stencil() {
    let a = multi("_A");
    let before: Vec<String> = (0..16).map(|i| format!("{:?}", place(&a, 9, i).unwrap())).collect();
    // Placing other stencils in between (whatever their names) changes nothing for A.
    for other in ["_B", "_BB", "_LOAD_FAST", ""] {
        let b = multi(other);
        for i in 0..16 {
            let _ = place(&b, 9, i).unwrap();
            assert_eq!(format!("{:?}", place(&a, 9, i).unwrap()), before[i as usize], "after placing {other:?}");
        }
    }
    // The stream is keyed by the name: the same bytes under another name are placed elsewhere.
    let b1 = multi("_B1");
    let b2 = multi("_B2");
    for i in 0..8 {
        assert_ne!(place(&b1, 9, i).unwrap().code, place(&b2, 9, i).unwrap().code, "index {i}");
        assert_ne!(place(&a, 9, i).unwrap().code, place(&b1, 9, i).unwrap().code, "index {i}");
    }
}

// ---------------------------------------------------------------------------
// Legality
// ---------------------------------------------------------------------------

fn check_legal(s: &Stencil, p: &Placement) {
    let what = format!("{} seed-index {} ({:?})", s.name, p.index, p.layout);
    for (offset, term, d) in displacements(s, p) {
        assert!((-REACH..REACH).contains(&d), "{what}: hole code+{offset:#x} ({term:?}) displacement {d:#x}");
    }
    // Code and data do not overlap.
    let (c0, c1) = (p.code, p.code + s.code_size());
    let (d0, d1) = (p.data, p.data + s.data_size());
    assert!(c1 <= d0 || d1 <= c0, "{what}: code {c0:#x}..{c1:#x} overlaps data {d0:#x}..{d1:#x}");
    // Everything in user space.
    assert!(in_user(p.code, s.code_size()), "{what}: code {:#x}", p.code);
    assert!(in_user(p.data, s.data_size()), "{what}: data {:#x}", p.data);
    assert!(in_user(p.heap, p.heap_size), "{what}: heap {:#x}", p.heap);
    for (name, &a) in &p.externs {
        assert!(in_user(a, 1), "{what}: extern {name} at {a:#x}");
        assert!(!(c0..c1).contains(&a) && !(d0..d1).contains(&a), "{what}: extern {name} inside the image");
    }
    for (t, a) in [("jump", p.jump_target), ("error", p.error_target), ("top", p.top)] {
        assert!(in_user(a, 1), "{what}: {t} target {a:#x}");
        assert!(!(c0..c1).contains(&a), "{what}: {t} target {a:#x} inside the code");
    }
    for (t, a) in
        [("executor", p.executor), ("frame", p.frame), ("stack_pointer", p.stack_pointer), ("tstate", p.tstate)]
    {
        assert!((p.heap..p.heap + p.heap_size).contains(&a), "{what}: {t} {a:#x} outside the heap");
    }
    assert!((p.heap..p.heap + p.heap_size).contains(&(p.machine_sp - 8)), "{what}: machine sp");
    assert_eq!(p.machine_sp % 16, 0, "{what}: machine sp {:#x}", p.machine_sp);
    // Targets distinct from each other and from the continuation.
    let cont = p.continuation(s);
    let targets = [p.jump_target, p.error_target, p.top, cont];
    let distinct: BTreeSet<u64> = targets.iter().copied().collect();
    assert_eq!(distinct.len(), 4, "{what}: jump/error/top/continue {targets:x?}");
}

#[test]
fn every_relative_hole_reaches_at_many_placements() {
    for s in [multi("_MULTI"), got_only("_GOT"), multi("_X")] {
        for seed in 0..40u64 {
            for index in 0..16 {
                let p = place(&s, seed, index).unwrap();
                check_legal(&s, &p);
                // The ports agree: no patch assert fires at a legal placement.
                patch::emit(&s, &p, &Ports).unwrap_or_else(|e| panic!("seed {seed} index {index}: {e}"));
            }
        }
    }
}

#[test]
fn a_hole_on_its_own_extern_keeps_it_in_reach_in_every_layout() {
    let s = multi("_MULTI");
    for seed in 0..20u64 {
        for index in 0..8 {
            let p = place(&s, seed, index).unwrap();
            let near = p.externs["PyNear"];
            let d = near.wrapping_sub(4).wrapping_sub(p.code + 28) as i64;
            assert!((-REACH..REACH).contains(&d), "{:?}: PyNear displacement {d:#x}", p.layout);
        }
    }
}

// ---------------------------------------------------------------------------
// Layouts
// ---------------------------------------------------------------------------

const ALL_LAYOUTS: [Layout; 7] = [
    Layout::Compact,
    Layout::Scattered,
    Layout::RelativeEdge,
    Layout::FarExterns,
    Layout::RelaxEdge,
    Layout::Low,
    Layout::High,
];

#[test]
fn any_eight_consecutive_indices_cover_every_layout() {
    let s = multi("_MULTI");
    for start in 0..24 {
        let seen: Vec<Layout> = (start..start + 8).map(|i| place(&s, 1, i).unwrap().layout).collect();
        for l in ALL_LAYOUTS {
            assert!(seen.contains(&l), "indices {start}..{}: no {l:?} in {seen:?}", start + 8);
        }
    }
}

/// The first `count` placements of `layout` under seeds 0.., index < 64.
fn of_layout(s: &Stencil, layout: Layout, count: usize) -> Vec<Placement> {
    let mut out = Vec::new();
    'seeds: for seed in 0..1000u64 {
        for index in 0..64 {
            let p = place(s, seed, index).unwrap();
            if p.layout == layout {
                out.push(p);
                if out.len() == count {
                    break 'seeds;
                }
            }
        }
    }
    assert_eq!(out.len(), count);
    out
}

#[test]
fn relative_edge_puts_a_hole_exactly_on_the_rel32_edge() {
    for s in [multi("_MULTI"), got_only("_GOT")] {
        for p in of_layout(&s, Layout::RelativeEdge, 40) {
            let ds = displacements(&s, &p);
            // 3.13 puts a trace's data after its code: the upper edge.
            let on_edge = ds.iter().any(|(_, t, d)| *t == Term::Data && *d == REACH - 1);
            assert!(on_edge, "{} index {}: no data hole on the edge: {ds:x?}", s.name, p.index);
            check_legal(&s, &p);
        }
    }
}

#[test]
fn far_externs_are_out_of_relaxation_reach() {
    let s = got_only("_GOT");
    for p in of_layout(&s, Layout::FarExterns, 40) {
        assert_eq!(p.externs.len(), 2);
        for (name, &a) in &p.externs {
            assert!(a.abs_diff(p.code) > 1 << 31, "index {}: {name} at {a:#x}, code {:#x}", p.index, p.code);
            // Then the GOT loads stay loads.
        }
        let image = patch::emit(&s, &p, &Ports).unwrap();
        assert_eq!(image.code[1], 0x8b, "PyFoo load relaxed at a far placement");
        assert_eq!(image.code[8], 0x8b, "PyBar load relaxed at a far placement");
    }
}

#[test]
fn relax_edge_puts_externs_on_the_edge_of_their_got_site() {
    let s = got_only("_GOT");
    let mut sides = BTreeSet::new();
    for p in of_layout(&s, Layout::RelaxEdge, 40) {
        let image = patch::emit(&s, &p, &Ports).unwrap();
        for (name, site, opcode_at) in [("PyFoo", 3u64, 1usize), ("PyBar", 10, 8)] {
            let loc = p.code + site;
            // patch_x86_64_32rx relaxes iff S − 4 − location ∈ [−2^31, 2^31 − 1).
            let delta = p.externs[name].wrapping_sub(4).wrapping_sub(loc) as i64;
            let edges = [-REACH, -REACH - 1, REACH - 2, REACH - 1];
            assert!(edges.contains(&delta), "index {}: {name} delta {delta:#x} not at an edge", p.index);
            let relaxed = (-REACH..REACH - 1).contains(&delta);
            assert_eq!(image.code[opcode_at] == 0x8d, relaxed, "index {}: {name} delta {delta:#x}", p.index);
            sides.insert(delta);
        }
    }
    // Over 40 placements both sides of both edges show up.
    assert_eq!(sides.len(), 4, "edges seen: {sides:x?}");
}

#[test]
fn low_and_high_layouts_sit_at_the_ends_of_user_space() {
    for s in [multi("_MULTI"), got_only("_GOT")] {
        for p in of_layout(&s, Layout::Low, 20) {
            assert!(p.code < 16 * MIB, "Low code at {:#x}", p.code);
            assert!(p.code >= USER_MIN);
            check_legal(&s, &p);
        }
        for p in of_layout(&s, Layout::High, 20) {
            let end = p.code + s.code_size();
            assert!(end <= USER_END && USER_END - end <= 4 * GIB, "High code at {:#x}", p.code);
            check_legal(&s, &p);
        }
    }
}

#[test]
fn compact_puts_data_after_the_code() {
    let s = multi("_MULTI");
    for p in of_layout(&s, Layout::Compact, 20) {
        let gap = p.data.wrapping_sub(p.code + s.code_size());
        assert!(gap < 64 * 1024, "Compact data {gap:#x} after the code");
        // Externs the GOT reaches are within relaxation reach.
        for name in ["PyFoo", "PyBar"] {
            assert!(p.externs[name].abs_diff(p.code) < GIB + PAGE, "{name}");
        }
    }
}

// ---------------------------------------------------------------------------
// Impossible placements
// ---------------------------------------------------------------------------

/// Two `patch_32r` holes on `data` whose addends are `apart` bytes apart.
fn two_data_holes(apart: i64, code_len: usize, data_len: usize, a0: i64) -> Stencil {
    Stencil {
        locals: Default::default(),
        ordinals: Default::default(),
        trampoline_mask: Vec::new(),
        got_mask: Vec::new(),
        name: "_FAR_APART".into(),
        line: 77,
        code: vec![0x90; code_len],
        data: vec![0; data_len],
        instructions: vec![],
        relocations: vec![],
        data_comments: vec![],
        emit: vec![
            EmitOp::CopyData { line: 0 },
            EmitOp::CopyCode { line: 0 },
            hole(PatchFn::P32r, Section::Code, 0, Term::Data, a0),
            hole(PatchFn::P32r, Section::Code, 4, Term::Data, a0 + apart),
        ],
    }
}

#[test]
fn holes_five_gib_apart_are_an_impossible_placement() {
    let s = two_data_holes(5 << 30, 16, 16, 0);
    for index in 0..8 {
        let err = place(&s, 1, index).unwrap_err();
        assert!(err.message.contains("impossible placement"), "{err}");
        assert!(err.message.contains("_FAR_APART"), "{err}");
        assert_eq!(err.location, "stencil:77");
    }
    assert!(placements(&s, 1, 4).is_err());
    // Negative distance too, and 4 GiB + a little (just past one rel32 window).
    assert!(place(&two_data_holes(-(5 << 30), 16, 16, 0), 1, 0).is_err());
    assert!(place(&two_data_holes((1 << 32) + 8, 16, 16, 0), 1, 0).is_err());
}

#[test]
fn holes_that_force_data_before_the_code_cannot_be_placed_in_a_3_13_trace() {
    // Hole 1's addend is 2^31 above hole 0's: data − code ∈ [−2^31, 4), so
    // data would have to sit below the code, which 3.13's _PyJIT_Compile
    // never does (all code, then all data).
    let s = two_data_holes(1 << 31, 16, 16, 0);
    for index in 0..8 {
        let err = place(&s, 1, index).unwrap_err();
        assert!(err.message.contains("cannot reach data after its code"), "{err}");
    }
}

#[test]
fn data_follows_the_code_and_targets_lie_in_the_trace_code() {
    let s = multi("_MULTI");
    for seed in 0..4 {
        for index in 0..16 {
            let p = place(&s, seed, index).unwrap();
            assert!(p.data >= p.code + s.code_size(), "{:?}: data before the code's end", p.layout);
            for t in [p.jump_target, p.error_target, p.top] {
                assert!(
                    t < p.data && t + (4 << 20) >= p.code,
                    "{:?}: target {t:#x} outside the trace's code",
                    p.layout
                );
                assert!(!(p.code..p.code + s.code_size()).contains(&t), "a target inside the stencil itself");
            }
        }
    }
}

/// A window 1 MiB wide, 2 GiB below (or above) the code: placeable (Scattered
/// etc. find it), but the Low layout puts the code at ~1 MiB, where a window
/// below lies outside user space (High likewise for one above), and
/// `pick_data` then calls `gen_range` on an empty range and panics.
#[test]
fn a_narrow_window_far_below_the_code_does_not_panic() {
    let mut panicked = Vec::new();
    // Window 2 GiB below the code, then 2 GiB above it.
    for apart in [(1i64 << 32) - 0x10_0000, -((1i64 << 32) - 0x10_0000)] {
        let s = two_data_holes(apart, 16, 16, 0);
        for index in 0..8 {
            match std::panic::catch_unwind(|| place(&s, 1, index)) {
                Ok(Ok(p)) => check_legal(&s, &p),
                Ok(Err(e)) => assert!(e.message.contains("impossible placement"), "{e}"),
                Err(_) => panicked.push((apart, LAYOUTS_BY_INDEX[index as usize])),
            }
        }
    }
    assert!(panicked.is_empty(), "place() panicked for (addends apart, layout) {panicked:?}");
}

const LAYOUTS_BY_INDEX: [Layout; 8] = [
    Layout::Compact,
    Layout::Scattered,
    Layout::FarExterns,
    Layout::RelativeEdge,
    Layout::Compact,
    Layout::RelaxEdge,
    Layout::Low,
    Layout::High,
];

/// The holes leave data − code only within `[-16, 8)`, where 32 bytes of data
/// always overlap 16 bytes of code: no placement exists. `place` should say so
/// (bad input, like the 5 GiB case); it returns a placement that breaks a hole.
#[test]
fn holes_that_only_fit_with_data_over_the_code_are_an_impossible_placement() {
    // Hole 0 (code+0, addend 2^31 - 16 below): data − code ∈ [−16, 2^32 − 16).
    // Hole 1 (code+4, addend a0 + apart):       data − code ∈ [−2^32 + 8, 8).
    let a0 = -(1i64 << 31) + 16;
    let apart = ((1i64 << 31) - 4) - a0;
    let s = two_data_holes(apart, 16, 32, a0);
    match place(&s, 1, 0) {
        Err(e) => assert!(e.message.contains("impossible placement"), "{e}"),
        Ok(p) => panic!("placed at code {:#x} data {:#x}: displacements {:x?}", p.code, p.data, displacements(&s, &p)),
    }
}
