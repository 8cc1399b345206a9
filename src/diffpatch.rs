//! `stencilcheck diff-patch --jit-c PATH`: differential test of the Rust
//! ports ([`patch::Ports`]) against the user's own `jit.c` patch functions
//! ([`NativePatcher`]) on random and boundary inputs.
//!
//! Every case is an image (64 bytes of code, 64 of data, placed at random
//! 47-bit addresses, data near or far from the code) holding an instruction
//! template at the location (x86-64: `mov/call/jmp/lea/movzwl [rip]`;
//! aarch64: `adrp/ldr/add/b/bl/movz/movk`, an `adrp; ldr` pair for
//! `patch_aarch64_33rx`, and random words so asserts are exercised too),
//! and a value that is in, out of, or exactly at the edge of the function's
//! reach (for the relaxing functions: the data slot's content is). Both
//! patchers run on copies of the same image; the outcomes (resulting bytes,
//! or "an assert fired") must be the same. Assert messages may differ.
//!
//! Cases whose placement cannot be mapped in the patch worker
//! (a `FailureKind::Unusable` failure) are counted as skipped. A jit.c that
//! ends, hangs or crashes its worker, writes output or damages its heap
//! (a `FailureKind::Crash` failure) always differs, even where the ports
//! assert: a crash is never "the same outcome".

use crate::model::{hex_bytes, PatchFn};
use crate::patch::native::NativePatcher;
use crate::patch::{self, FailureKind, Image, PatchAssert, Patcher};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::fmt::Write as _;

const LEN: usize = 64;
const PAGE: u64 = 0x1000;
const GIB: u64 = 1 << 30;

/// One input both patchers were given.
#[derive(Clone, Debug)]
pub struct Case {
    pub func: PatchFn,
    pub what: String,
    pub image: Image,
    pub location: u64,
    pub value: u64,
}

/// A case on which the two patchers disagree.
#[derive(Clone, Debug)]
pub struct Difference {
    pub case: Case,
    pub ports: Result<Image, PatchAssert>,
    pub native: Result<Image, PatchAssert>,
}

#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub cases: u64,
    pub skipped: u64,
    pub differences: Vec<Difference>,
    /// Functions compared, with their case counts.
    pub per_func: Vec<(PatchFn, u64)>,
}

fn outcome(r: &Result<Image, PatchAssert>, case: &Case) -> String {
    match r {
        Err(a) if a.kind == FailureKind::Crash => format!("crashed: {}", a.message.replace('\n', " ")),
        Err(a) => format!("assert: {}", a.message.replace('\n', " ")),
        Ok(im) => {
            // Bytes around the location (where a patch writes).
            let from = case.location.saturating_sub(4);
            let mut out = String::new();
            for a in from..from + 16 {
                match im.read_u8(a) {
                    Some(b) => write!(out, "{b:02x} ").unwrap(),
                    None => out.push_str(".. "),
                }
            }
            let mut changed = Vec::new();
            for (base, before, after) in
                [(case.image.code_addr, &case.image.code, &im.code), (case.image.data_addr, &case.image.data, &im.data)]
            {
                for (k, (x, y)) in before.iter().zip(after.iter()).enumerate() {
                    if x != y {
                        changed.push(base + k as u64);
                    }
                }
            }
            format!("ok; bytes at {from:#x}: {}; {} byte(s) changed", out.trim_end(), changed.len())
        }
    }
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.case;
        let from = c.location.saturating_sub(4);
        let before: Vec<u8> = (from..from + 16).filter_map(|a| c.image.read_u8(a)).collect();
        writeln!(f, "DIFFERENCE {}({:#x}, {:#x}) [{}]", c.func, c.location, c.value, c.what)?;
        writeln!(f, "  code at     {:#x}, data at {:#x}", c.image.code_addr, c.image.data_addr)?;
        writeln!(f, "  before      bytes at {from:#x}: {}", hex_bytes(&before))?;
        if let Some(slot) = c.image.read_u64(c.value.wrapping_add(4)) {
            writeln!(f, "  *(value+4)  {slot:#x}")?;
        }
        if let Some(slot) = c.image.read_u64(c.value) {
            writeln!(f, "  *(value)    {slot:#x}")?;
        }
        writeln!(f, "  ports       {}", outcome(&self.ports, c))?;
        write!(f, "  jit.c       {}", outcome(&self.native, c))
    }
}

/// Runs one case on both patchers. `None` when native could not map it.
pub fn compare(case: &Case, native: &dyn Patcher) -> Option<Option<Difference>> {
    let run = |p: &dyn Patcher| {
        let mut im = case.image.clone();
        p.patch(case.func, &mut im, case.location, case.value).map(|()| im)
    };
    let n = run(native);
    if let Err(a) = &n {
        if a.is_unusable() {
            return None;
        }
    }
    let p = run(&patch::Ports);
    let same = match (&p, &n) {
        (Ok(a), Ok(b)) => a == b,
        (Err(_), Err(b)) => b.kind != FailureKind::Crash,
        _ => false,
    };
    Some((!same).then(|| Difference { case: case.clone(), ports: p, native: n }))
}

fn random_image(rng: &mut ChaCha8Rng, data_far: bool) -> Image {
    let code = rng.gen_range(0x10_0000..0x7000_0000u64) * PAGE + rng.gen_range(0..PAGE / 2) / 16 * 16;
    let data = if data_far {
        // Anywhere, possibly more than 2 GiB away (the unrelaxed path asserts).
        let d = rng.gen_range(0x10_0000..0x7000_0000u64) * PAGE;
        if d.abs_diff(code) < 2 * PAGE {
            code + 4 * PAGE
        } else {
            d
        }
    } else {
        code + LEN as u64 + rng.gen_range(0..64) * 8
    };
    let mut c = vec![0u8; LEN];
    let mut d = vec![0u8; LEN];
    rng.fill(&mut c[..]);
    rng.fill(&mut d[..]);
    Image::new(code, c, data, d)
}

/// A signed distance: at an edge of `bits` signed bits (±1), small, or anywhere.
fn distance(rng: &mut ChaCha8Rng, bits: u32) -> i64 {
    let edge = 1i64 << (bits - 1);
    match rng.gen_range(0..6) {
        0 => -edge + rng.gen_range(-2..=2),
        1 => edge + rng.gen_range(-3..=2),
        2 => rng.gen_range(-4096..4096),
        3 => rng.gen_range(-edge..edge),
        4 => rng.gen_range(-(4 * edge)..(4 * edge)),
        _ => rng.gen::<i32>() as i64 * rng.gen_range(1..1 << 20),
    }
}

const X86_RX: &[(&str, &[u8])] = &[
    ("mov rax, [rip+slot]", &[0x48, 0x8b, 0x05]),
    ("mov r12, [rip+slot]", &[0x4c, 0x8b, 0x25]),
    ("mov eax, [rip+slot]", &[0x8b, 0x05]),
    ("call [rip+slot]", &[0xff, 0x15]),
    ("jmp [rip+slot]", &[0xff, 0x25]),
    ("lea rax, [rip+slot]", &[0x48, 0x8d, 0x05]),
    ("movzwl [rip+slot]", &[0x0f, 0xb7, 0x05]),
];

fn x86_case(rng: &mut ChaCha8Rng, func: PatchFn) -> Case {
    let far = rng.gen_bool(0.25);
    let mut image = random_image(rng, far);
    let (name, op) = X86_RX[rng.gen_range(0..X86_RX.len())];
    let off = 8 + rng.gen_range(0..32u64);
    let location = image.code_addr + off;
    image.write(location - op.len() as u64, op).unwrap();
    match func {
        PatchFn::X86_64_32rx => {
            // value = slot - 4, the slot inside data; the slot holds S.
            let slot_off = rng.gen_range(0..(LEN as u64 - 8) / 8) * 8;
            let unrelaxed_edge = rng.gen_bool(0.2);
            if unrelaxed_edge {
                // The slot itself at an edge of the unrelaxed displacement
                // (value - location = slot - 4 - location = ±2^31 ± a few).
                let edge = 1i64 << 31;
                let d = if rng.gen_bool(0.5) { -edge + rng.gen_range(-2..=2) } else { edge + rng.gen_range(-3..=2) };
                image.data_addr = (location as i64 + 4 + d) as u64 - slot_off;
            }
            let slot = image.data_addr + slot_off;
            let d = distance(rng, 32);
            let s = match rng.gen_range(0..4) {
                _ if unrelaxed_edge => (location as i64 + (1i64 << 40) + d) as u64, // never relaxed
                0 => rng.gen::<u64>() & 0x7fff_ffff_ffff,
                _ => (location as i64 + 4 + d) as u64,
            };
            image.write(slot, &s.to_le_bytes()).unwrap();
            let value = slot.wrapping_sub(4);
            Case { func, what: format!("{name}, slot {s:#x} at {slot:#x}"), image, location, value }
        }
        _ => {
            let d = distance(rng, 32);
            let value = (location as i64).wrapping_add(d) as u64;
            Case { func, what: format!("{name}, value - location = {d:#x}"), image, location, value }
        }
    }
}

fn abs_case(rng: &mut ChaCha8Rng, func: PatchFn) -> Case {
    let far = rng.gen_bool(0.5);
    let image = random_image(rng, far);
    let location = image.code_addr + rng.gen_range(0..(LEN as u64 - 8));
    let value = match rng.gen_range(0..4) {
        0 => (1u64 << 32).wrapping_add(rng.gen_range(-2i64..=2) as u64),
        1 => rng.gen::<u32>() as u64,
        _ => rng.gen(),
    };
    Case { func, what: "absolute".into(), image, location, value }
}

fn a64_word(rng: &mut ChaCha8Rng, func: PatchFn) -> (String, u32) {
    let rd = rng.gen_range(0..31u32);
    let rn = rng.gen_range(0..31u32);
    let fitting = match func {
        PatchFn::Aarch64_12 | PatchFn::Aarch64_12x => {
            let size = rng.gen_range(0..4u32);
            if rng.gen_bool(0.5) {
                ("ldr/str".to_string(), 0x3940_0000 | (size << 30) | (rn << 5) | rd | (rng.gen_range(0..2u32) << 22))
            } else {
                ("add/sub".to_string(), 0x9100_0000 | (rng.gen_range(0..2u32) << 30) | (rn << 5) | rd)
            }
        }
        PatchFn::Aarch64_16a | PatchFn::Aarch64_16b | PatchFn::Aarch64_16c | PatchFn::Aarch64_16d => {
            let hw = rng.gen_range(0..4u32);
            let base = if rng.gen_bool(0.5) { 0xd280_0000 } else { 0xf280_0000 };
            (format!("movz/movk hw={hw}"), base | (hw << 21) | rd)
        }
        PatchFn::Aarch64_21r | PatchFn::Aarch64_21rx => ("adrp".to_string(), 0x9000_0000 | rd),
        PatchFn::Aarch64_26r => {
            if rng.gen_bool(0.5) {
                ("b".to_string(), 0x1400_0000)
            } else {
                ("bl".to_string(), 0x9400_0000)
            }
        }
        _ => ("word".to_string(), rng.gen()),
    };
    if rng.gen_bool(0.1) {
        ("random word".to_string(), rng.gen())
    } else {
        fitting
    }
}

fn a64_case(rng: &mut ChaCha8Rng, func: PatchFn) -> Case {
    let far = rng.gen_bool(0.3);
    let mut image = random_image(rng, far);
    let location = image.code_addr + 8 + rng.gen_range(0..12u64) * 4;
    if func == PatchFn::Aarch64_33rx {
        let reg = rng.gen_range(0..31u32);
        let other = if rng.gen_bool(0.1) { (reg + 1) % 31 } else { reg };
        let adrp = 0x9000_0000 | reg;
        let ldr = 0xf940_0000 | (other << 5) | reg | (rng.gen_range(0..512u32) << 10);
        image.write(location, &adrp.to_le_bytes()).unwrap();
        image.write(location + 4, &ldr.to_le_bytes()).unwrap();
        let slot = image.data_addr + rng.gen_range(0..(LEN as u64 - 8) / 8) * 8;
        let relaxed: u64 = match rng.gen_range(0..5) {
            0 => rng.gen_range(0..1 << 16),
            1 => (1u64 << 16).wrapping_add(rng.gen_range(-2i64..=2) as u64),
            2 => (1u64 << 32).wrapping_add(rng.gen_range(-2i64..=2) as u64),
            3 => rng.gen_range(0..1u64 << 32),
            _ => rng.gen::<u64>() & 0x7fff_ffff_ffff,
        };
        image.write(slot, &relaxed.to_le_bytes()).unwrap();
        return Case {
            func,
            what: format!("adrp; ldr x{reg}, [x{other}], slot {relaxed:#x}"),
            image,
            location,
            value: slot,
        };
    }
    let (what, word) = a64_word(rng, func);
    image.write(location, &word.to_le_bytes()).unwrap();
    let value = match func {
        PatchFn::Aarch64_21r | PatchFn::Aarch64_21rx => {
            let pages = distance(rng, 21);
            ((location >> 12) as i64 + pages) as u64 * PAGE + rng.gen_range(0..PAGE)
        }
        PatchFn::Aarch64_26r => {
            let d = distance(rng, 28);
            let d = if rng.gen_bool(0.8) { d & !3 } else { d };
            (location as i64).wrapping_add(d) as u64
        }
        _ => match rng.gen_range(0..3) {
            0 => rng.gen::<u64>(),
            1 => rng.gen::<u64>() & !0xf,
            _ => rng.gen_range(0..GIB) << 12,
        },
    };
    Case { func, what: format!("{what} {word:#010x}"), image, location, value }
}

/// A random case for `func`.
pub fn case(rng: &mut ChaCha8Rng, func: PatchFn) -> Case {
    match func {
        PatchFn::X86_64_32rx | PatchFn::P32r => x86_case(rng, func),
        PatchFn::P64 | PatchFn::P32 => abs_case(rng, func),
        _ => a64_case(rng, func),
    }
}

/// `cases` cases for every function both sides have, from `seed`.
pub fn run(native: &NativePatcher, seed: u64, cases: u64) -> Summary {
    let mut summary = Summary::default();
    for &(func, _) in PatchFn::ALL {
        if !native.has(func) {
            continue;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (func as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut n = 0;
        for _ in 0..cases {
            let c = case(&mut rng, func);
            match compare(&c, native) {
                None => summary.skipped += 1,
                Some(d) => {
                    n += 1;
                    summary.cases += 1;
                    if let Some(d) = d {
                        summary.differences.push(d);
                    }
                }
            }
        }
        summary.per_func.push((func, n));
    }
    summary
}

/// The human report; differences first (at most `limit` per function).
pub fn report(s: &Summary, patcher: &str, limit: usize) -> String {
    let mut out = String::new();
    let mut shown: std::collections::HashMap<PatchFn, usize> = Default::default();
    for d in &s.differences {
        let k = shown.entry(d.case.func).or_default();
        *k += 1;
        if *k <= limit {
            writeln!(out, "{d}\n").unwrap();
        }
    }
    for (func, k) in &shown {
        if *k > limit {
            writeln!(out, "... {} more difference(s) in {func}\n", k - limit).unwrap();
        }
    }
    let funcs: Vec<String> = s.per_func.iter().map(|(f, n)| format!("{f} {n}")).collect();
    writeln!(
        out,
        "diff-patch: ports vs {patcher}: {} cases ({}), {} skipped (placement unusable)",
        s.cases,
        funcs.join(", "),
        s.skipped
    )
    .unwrap();
    if s.differences.is_empty() {
        writeln!(out, "no differences").unwrap();
    } else {
        let mut fs: Vec<String> = shown.keys().map(|f| f.to_string()).collect();
        fs.sort();
        writeln!(out, "{} difference(s) in {}", s.differences.len(), fs.join(", ")).unwrap();
    }
    out
}

// ---------------------------------------------------------------------------
// Whole emit functions of a header
// ---------------------------------------------------------------------------

/// Outcome of replaying a header's emit functions with both patchers.
#[derive(Clone, Debug, Default)]
pub struct EmitSummary {
    pub runs: u64,
    pub skipped: u64,
    /// One line (plus detail lines) per differing stencil run.
    pub differences: Vec<String>,
}

/// Replays every stencil of `set` at `placements` placements with the ports
/// and with `native` (as `verify` would patch, without running anything):
/// the images, or the failing call, must be the same. Works for headers
/// stencilcheck cannot execute yet (aarch64).
pub fn compare_emits(
    set: &crate::model::StencilSet,
    native: &NativePatcher,
    seed: u64,
    placements: u32,
) -> EmitSummary {
    use crate::model::Section;
    let mut s = EmitSummary::default();
    for st in &set.stencils {
        if st.code.is_empty() {
            continue;
        }
        for index in 0..placements {
            let Ok(p) = crate::place::place_within(set.target, &native.address_space(), st, seed, index) else {
                s.skipped += 1;
                continue;
            };
            let theirs = patch::emit(st, &p, native);
            if let Err(f) = &theirs {
                if f.assert.is_unusable() {
                    s.skipped += 1;
                    continue;
                }
            }
            s.runs += 1;
            let ours = patch::emit(st, &p, &patch::Ports);
            let head = format!("DIFFERENCE {} placement {index} ({:?} layout, seed {seed})", st.name, p.layout);
            match (&ours, &theirs) {
                (Ok(a), Ok(b)) if a == b => {}
                (Err(a), Err(b)) if a.call == b.call && b.assert.kind != FailureKind::Crash => {}
                (Ok(a), Ok(b)) => {
                    let mut first = None;
                    for (section, x, y) in [(Section::Code, &a.code, &b.code), (Section::Data, &a.data, &b.data)] {
                        if let Some(k) = x.iter().zip(y.iter()).position(|(u, v)| u != v) {
                            first = Some((section, k as u64));
                            break;
                        }
                    }
                    let (section, off) = first.unwrap_or((Section::Code, 0));
                    let call = st
                        .holes()
                        // x86 relaxation rewrites the two opcode bytes before the hole.
                        .filter(|c| c.section == section && off + 2 >= c.offset && off < c.offset + c.func.width())
                        .last();
                    let (base, x) = a.region(section);
                    let (_, y) = b.region(section);
                    let from = (off as usize).saturating_sub(4);
                    let to = (off as usize + 8).min(x.len());
                    let mut text = format!(
                        "{head}\n  first differing byte {section}+{off:#x} (at {:#x})\n  ports       {}\n  jit.c       {}",
                        base + off,
                        hex_bytes(&x[from..to]),
                        hex_bytes(&y[from..to])
                    );
                    if let Some(c) = call {
                        text.push_str(&format!(
                            "\n  hole        {}({} + {:#x}, {})    (line {})",
                            c.func, c.section, c.offset, c.value, c.line
                        ));
                    }
                    s.differences.push(text);
                }
                _ => {
                    let show = |r: &Result<Image, patch::EmitFailure>| match r {
                        Ok(_) => "patched without an assert".to_string(),
                        Err(f) => f.to_string(),
                    };
                    s.differences.push(format!(
                        "{head}\n  ports       {}\n  jit.c       {}",
                        show(&ours),
                        show(&theirs)
                    ));
                }
            }
        }
    }
    s
}
