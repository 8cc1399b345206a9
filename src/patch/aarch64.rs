//! AArch64 patch functions of CPython 3.13's `Python/jit.c`: the bit-field
//! helpers, the instruction-class tests and every `patch_aarch64_*`.
//!
//! Instructions are 32-bit little-endian words; each port reads the word at
//! the absolute location, checks what jit.c asserts, and writes it back.

use super::{Image, PatchAssert, Site};
use crate::model::{hex_signed, PatchFn};

// jit.c's gloves -------------------------------------------------------------

/// `get_bits`: `value[start : start + width]` (width <= 32).
pub fn get_bits(value: u64, start: u32, width: u32) -> u32 {
    debug_assert!(width <= 32);
    ((value >> start) & ((1u64 << width) - 1)) as u32
}

/// `set_bits`: `loc[loc_start : loc_start + width] = value[value_start : value_start + width]`.
/// (jit.c's asserts here only restate the arithmetic; `loc_start + width <= 32`
/// holds for every call below.)
pub fn set_bits(loc: &mut u32, loc_start: u32, value: u64, value_start: u32, width: u32) {
    debug_assert!(loc_start + width <= 32);
    *loc &= !((((1u64 << width) - 1) << loc_start) as u32);
    *loc |= get_bits(value, value_start, width) << loc_start;
}

/// `IS_AARCH64_ADD_OR_SUB`: ADD/SUB (immediate).
pub fn is_add_or_sub(i: u32) -> bool {
    i & 0x11C0_0000 == 0x1100_0000
}
/// `IS_AARCH64_ADRP`.
pub fn is_adrp(i: u32) -> bool {
    i & 0x9F00_0000 == 0x9000_0000
}
/// `IS_AARCH64_BRANCH`: B or BL (immediate).
pub fn is_branch(i: u32) -> bool {
    i & 0x7C00_0000 == 0x1400_0000
}
/// B.cond, or CBZ/CBNZ: the branches with a 19-bit word offset at bit 5.
pub fn is_branch19(i: u32) -> bool {
    i & 0xFF00_0010 == 0x5400_0000 || i & 0x7E00_0000 == 0x3400_0000
}
/// `IS_AARCH64_LDR_OR_STR`: LDR/STR (unsigned immediate offset).
pub fn is_ldr_or_str(i: u32) -> bool {
    i & 0x3B00_0000 == 0x3900_0000
}
/// `IS_AARCH64_MOV`: 64-bit MOVN/MOVZ/MOVK.
pub fn is_mov(i: u32) -> bool {
    i & 0x9F80_0000 == 0x9280_0000
}

const NOP: u32 = 0xD503_201F;

fn read_insn(site: &Site, image: &Image, at: u64) -> Result<u32, PatchAssert> {
    let what = if at == site.location {
        "read of the instruction at location"
    } else {
        "read of the instruction at location + 4"
    };
    site.read_u32(image, at, what)
}

fn write_insn(site: &Site, image: &mut Image, at: u64, insn: u32) -> Result<(), PatchAssert> {
    site.write(image, at, &insn.to_le_bytes())
}

// The ports ------------------------------------------------------------------

/// `patch_aarch64_12`: the low 12 bits of an absolute address into an
/// ADD (immediate) or an LDR/STR, scaled by the access size LDR/STR implies.
pub fn patch_aarch64_12(image: &mut Image, location: u64, value: u64) -> Result<(), PatchAssert> {
    patch_12_in(&Site::new(PatchFn::Aarch64_12, location, value), image, location, value)
}

fn patch_12_in(site: &Site, image: &mut Image, location: u64, value: u64) -> Result<(), PatchAssert> {
    let mut insn = read_insn(site, image, location)?;
    site.check(is_ldr_or_str(insn) || is_add_or_sub(insn), || {
        format!(
            "patch_aarch64_12: instruction {insn:#010x} at {location:#x} is neither LDR/STR (immediate) nor ADD/SUB (immediate)"
        )
    })?;
    // There might be an implicit shift encoded in the instruction:
    let mut shift = 0;
    if is_ldr_or_str(insn) {
        shift = get_bits(insn as u64, 30, 2);
        site.check(get_bits(insn as u64, 23, 1) == 0 || get_bits(insn as u64, 26, 1) == 0, || {
            format!(
                "patch_aarch64_12: LDR/STR {insn:#010x} has bits 23 and 26 both set (a 128-bit access, shift 4, which jit.c does not handle)"
            )
        })?;
    }
    let value = get_bits(value, 0, 12) as u64;
    site.check(get_bits(value, 0, shift) == 0, || {
        format!("patch_aarch64_12: low 12 bits {value:#x} are not a multiple of the {}-byte access size", 1u32 << shift)
    })?;
    set_bits(&mut insn, 10, value, shift, 12);
    write_insn(site, image, location, insn)
}

/// `patch_aarch64_12x`: never relaxed on its own (a pair becomes 33rx at
/// build time); patches like `patch_aarch64_12`.
pub fn patch_aarch64_12x(image: &mut Image, location: u64, value: u64) -> Result<(), PatchAssert> {
    patch_12_in(&Site::new(PatchFn::Aarch64_12x, location, value), image, location, value)
}

/// `patch_aarch64_16a..d`: 16-bit part `part` (0..=3) of an absolute value
/// into a MOVZ/MOVK whose `hw` field must say the same part.
fn patch_16(func: PatchFn, part: u32, image: &mut Image, location: u64, value: u64) -> Result<(), PatchAssert> {
    let site = Site::new(func, location, value);
    let mut insn = read_insn(&site, image, location)?;
    site.check(is_mov(insn), || {
        format!("{func}: instruction {insn:#010x} at {location:#x} is not a 64-bit MOVN/MOVZ/MOVK")
    })?;
    let hw = get_bits(insn as u64, 21, 2);
    site.check(hw == part, || {
        format!("{func}: MOV {insn:#010x} has shift field hw = {hw}, expected {part} (lsl #{})", 16 * part)
    })?;
    set_bits(&mut insn, 5, value, 16 * part, 16);
    write_insn(&site, image, location, insn)
}

pub fn patch_aarch64_16a(image: &mut Image, location: u64, value: u64) -> Result<(), PatchAssert> {
    patch_16(PatchFn::Aarch64_16a, 0, image, location, value)
}
pub fn patch_aarch64_16b(image: &mut Image, location: u64, value: u64) -> Result<(), PatchAssert> {
    patch_16(PatchFn::Aarch64_16b, 1, image, location, value)
}
pub fn patch_aarch64_16c(image: &mut Image, location: u64, value: u64) -> Result<(), PatchAssert> {
    patch_16(PatchFn::Aarch64_16c, 2, image, location, value)
}
pub fn patch_aarch64_16d(image: &mut Image, location: u64, value: u64) -> Result<(), PatchAssert> {
    patch_16(PatchFn::Aarch64_16d, 3, image, location, value)
}

/// `patch_aarch64_21r`: the signed 21-bit page count from this instruction's
/// page to `value`'s page into an ADRP. (3.13 does not check that the
/// instruction is an ADRP.)
pub fn patch_aarch64_21r(image: &mut Image, location: u64, value: u64) -> Result<(), PatchAssert> {
    patch_21r_in(&Site::new(PatchFn::Aarch64_21r, location, value), image, location, value)
}

fn patch_21r_in(site: &Site, image: &mut Image, location: u64, value: u64) -> Result<(), PatchAssert> {
    // value = (value >> 12) - ((uintptr_t)location >> 12);
    let pages = (value >> 12).wrapping_sub(location >> 12);
    let signed = pages as i64;
    site.check(signed >= -(1i64 << 20), || {
        format!(
            "patch_aarch64_21r: page delta out of signed 21-bit range: {} pages (assert (int64_t)value >= -(1 << 20))",
            hex_signed(signed)
        )
    })?;
    site.check(signed < (1i64 << 20), || {
        format!(
            "patch_aarch64_21r: page delta out of signed 21-bit range: {} pages (assert (int64_t)value < (1 << 20))",
            hex_signed(signed)
        )
    })?;
    let mut insn = read_insn(site, image, location)?;
    // value[0:2] goes in loc[29:31], value[2:21] goes in loc[5:26]:
    set_bits(&mut insn, 29, pages, 0, 2);
    set_bits(&mut insn, 5, pages, 2, 19);
    write_insn(site, image, location, insn)
}

/// `patch_aarch64_21rx`: never relaxed on its own; patches like `patch_aarch64_21r`.
pub fn patch_aarch64_21rx(image: &mut Image, location: u64, value: u64) -> Result<(), PatchAssert> {
    patch_21r_in(&Site::new(PatchFn::Aarch64_21rx, location, value), image, location, value)
}

/// `patch_aarch64_26r`: a B/BL to `value` (±128 MiB, 4-byte aligned).
pub fn patch_aarch64_26r(image: &mut Image, location: u64, value: u64) -> Result<(), PatchAssert> {
    let site = Site::new(PatchFn::Aarch64_26r, location, value);
    let mut insn = read_insn(&site, image, location)?;
    site.check(is_branch(insn), || {
        format!("patch_aarch64_26r: instruction {insn:#010x} at {location:#x} is not B/BL")
    })?;
    let delta = value.wrapping_sub(location);
    let signed = delta as i64;
    site.check(signed >= -(1i64 << 27), || {
        format!(
            "patch_aarch64_26r: value - location out of signed 28-bit range: {} (assert (int64_t)value >= -(1 << 27))",
            hex_signed(signed)
        )
    })?;
    site.check(signed < (1i64 << 27), || {
        format!(
            "patch_aarch64_26r: value - location out of signed 28-bit range: {} (assert (int64_t)value < (1 << 27))",
            hex_signed(signed)
        )
    })?;
    site.check(get_bits(delta, 0, 2) == 0, || {
        format!("patch_aarch64_26r: value - location = {} is not 4-byte aligned", hex_signed(signed))
    })?;
    set_bits(&mut insn, 0, delta, 2, 26);
    write_insn(&site, image, location, insn)
}

/// `patch_aarch64_19r`: a B.cond/CBZ/CBNZ to `value` (±1 MiB, 4-byte
/// aligned; 3.14+ `R_AARCH64_CONDBR19`).
pub fn patch_aarch64_19r(image: &mut Image, location: u64, value: u64) -> Result<(), PatchAssert> {
    let site = Site::new(PatchFn::Aarch64_19r, location, value);
    let mut insn = read_insn(&site, image, location)?;
    site.check(is_branch19(insn), || {
        format!("patch_aarch64_19r: instruction {insn:#010x} at {location:#x} is not B.cond/CBZ/CBNZ")
    })?;
    let delta = value.wrapping_sub(location);
    let signed = delta as i64;
    site.check((-(1i64 << 20)..(1i64 << 20)).contains(&signed), || {
        format!("patch_aarch64_19r: value - location out of signed 21-bit range: {}", hex_signed(signed))
    })?;
    site.check(get_bits(delta, 0, 2) == 0, || {
        format!("patch_aarch64_19r: value - location = {} is not 4-byte aligned", hex_signed(signed))
    })?;
    set_bits(&mut insn, 5, delta, 2, 19);
    write_insn(&site, image, location, insn)
}

/// CPython's aarch64 veneer: `ldr x8, #8; br x8` and the 64-bit target.
pub const TRAMPOLINE: [u32; 2] = [0x5800_0048, 0xD61F_0100];

/// `patch_aarch64_trampoline(location, ordinal, state)` (3.14+): a B/BL to
/// `value` (the ordinal's symbol) directly when within ±128 MiB; otherwise
/// the veneer is written at `slot` (the ordinal's trampoline in the trace)
/// and the branch goes there. The branch itself is patched by `patcher`'s
/// `patch_aarch64_26r`, so a jit.c under test patches it with its own.
pub fn patch_aarch64_trampoline(
    patcher: &dyn super::Patcher,
    image: &mut Image,
    location: u64,
    value: u64,
    slot: Option<u64>,
) -> Result<(), PatchAssert> {
    let site = Site::new(PatchFn::Aarch64_Trampoline, location, value);
    let range = value.wrapping_sub(location) as i64;
    if (-(1i64 << 27)..(1i64 << 27)).contains(&range) {
        return patcher.patch(PatchFn::Aarch64_26r, image, location, value);
    }
    let slot = slot.ok_or_else(|| {
        site.fail("patch_aarch64_trampoline: the ordinal has no trampoline (its bit is not in the trampoline mask)")
    })?;
    let mut veneer = Vec::with_capacity(16);
    for word in TRAMPOLINE {
        veneer.extend_from_slice(&word.to_le_bytes());
    }
    veneer.extend_from_slice(&value.to_le_bytes());
    site.write(image, slot, &veneer)?;
    patcher.patch(PatchFn::Aarch64_26r, image, location, slot)
}

/// `patch_aarch64_33rx`: an `adrp reg, slot@PAGE; ldr reg, [reg, slot@PAGEOFF]`
/// GOT load, relaxed as one: `movz`+`nop` when the slot's contents are below
/// 2^16, `movz`+`movk` below 2^32, `ldr reg, slot` (literal) + `nop` when the
/// slot is within ±512 KiB and aligned, else the two patched normally. Reads
/// `*(uint64_t *)value`, so the slot must hold its final contents.
pub fn patch_aarch64_33rx(image: &mut Image, location: u64, value: u64) -> Result<(), PatchAssert> {
    let site = Site::new(PatchFn::Aarch64_33rx, location, value);
    let second = location.wrapping_add(4);
    let i0 = read_insn(&site, image, location)?;
    site.check(is_adrp(i0), || format!("patch_aarch64_33rx: instruction {i0:#010x} at {location:#x} is not ADRP"))?;
    let reg = get_bits(i0 as u64, 0, 5);
    let i1 = read_insn(&site, image, second)?;
    site.check(is_ldr_or_str(i1), || {
        format!("patch_aarch64_33rx: instruction {i1:#010x} at {second:#x} is not LDR/STR (immediate)")
    })?;
    // There should be only one register involved:
    let rt = get_bits(i1 as u64, 0, 5);
    site.check(reg == rt, || format!("patch_aarch64_33rx: ADRP writes x{reg} but the LDR's output register is x{rt}"))?;
    let rn = get_bits(i1 as u64, 5, 5);
    site.check(reg == rn, || format!("patch_aarch64_33rx: ADRP writes x{reg} but the LDR's input register is x{rn}"))?;
    let relaxed = site.read_u64(image, value, "relaxation read of *(uint64_t *)value")?;
    if relaxed < (1u64 << 16) {
        // adrp reg, AAA; ldr reg, [reg + BBB] -> movz reg, XXX; nop
        write_insn(&site, image, location, 0xD280_0000 | (get_bits(relaxed, 0, 16) << 5) | reg)?;
        return write_insn(&site, image, second, NOP);
    }
    if relaxed < (1u64 << 32) {
        // adrp reg, AAA; ldr reg, [reg + BBB] -> movz reg, XXX; movk reg, YYY
        write_insn(&site, image, location, 0xD280_0000 | (get_bits(relaxed, 0, 16) << 5) | reg)?;
        return write_insn(&site, image, second, 0xF2A0_0000 | (get_bits(relaxed, 16, 16) << 5) | reg);
    }
    let delta = value.wrapping_sub(location);
    if delta & 0x3 == 0 && (delta as i64) >= -(1i64 << 19) && (delta as i64) < (1i64 << 19) {
        // adrp reg, AAA; ldr reg, [reg + BBB] -> ldr reg, XXX; nop
        write_insn(&site, image, location, 0x5800_0000 | (get_bits(delta, 2, 19) << 5) | reg)?;
        return write_insn(&site, image, second, NOP);
    }
    // Couldn't do it. Just patch the two instructions normally:
    patch_21r_in(&site, image, location, value)?;
    patch_12_in(&site, image, second, value)
}

#[cfg(test)]
mod tests {
    use super::super::{Patcher, Ports};
    use super::*;

    const CODE: u64 = 0x4000_1234_5000;
    const DATA: u64 = CODE + 0x3000;

    const ADRP_X1: u32 = 0x9000_0001;
    const ADD_X1: u32 = 0x9100_0021;
    const LDR_X1: u32 = 0xF940_0021;
    const LDR_W1: u32 = 0xB940_0021;
    const LDRB_W1: u32 = 0x3940_0021;
    const LDR_Q1: u32 = 0x3DC0_0021;
    const B: u32 = 0x1400_0000;
    const BL: u32 = 0x9400_0000;
    const MOVZ: u32 = 0xD280_0001;
    const MOVK16: u32 = 0xF2A0_0001;
    const MOVK32: u32 = 0xF2C0_0001;
    const MOVK48: u32 = 0xF2E0_0001;

    fn sext(v: u64, bits: u32) -> i64 {
        ((v << (64 - bits)) as i64) >> (64 - bits)
    }
    fn adrp_page(insn: u32, pc: u64) -> u64 {
        let imm = ((insn as u64 >> 29) & 3) | (((insn as u64 >> 5) & 0x7ffff) << 2);
        (pc & !0xfff).wrapping_add((sext(imm, 21) as u64) << 12)
    }
    fn imm12(insn: u32) -> u64 {
        (insn as u64 >> 10) & 0xfff
    }
    fn imm16(insn: u32) -> u64 {
        (insn as u64 >> 5) & 0xffff
    }
    fn branch_target(insn: u32, pc: u64) -> u64 {
        pc.wrapping_add((sext(insn as u64 & 0x3ff_ffff, 26) << 2) as u64)
    }

    /// Code image with `insns` at code+0x100, data of 0x40 bytes holding `slot`
    /// at data+0x10.
    fn image(insns: &[u32], slot: u64) -> Image {
        let mut code = vec![0; 0x200];
        for (i, w) in insns.iter().enumerate() {
            code[0x100 + 4 * i..][..4].copy_from_slice(&w.to_le_bytes());
        }
        let mut data = vec![0xee; 0x40];
        data[0x10..0x18].copy_from_slice(&slot.to_le_bytes());
        Image::new(CODE, code, DATA, data)
    }
    const LOC: u64 = CODE + 0x100;
    fn insn(im: &Image, at: u64) -> u32 {
        im.read_u32(at).unwrap()
    }

    #[test]
    fn bits() {
        assert_eq!(get_bits(0xabcd, 4, 8), 0xbc);
        assert_eq!(get_bits(u64::MAX, 32, 32), u32::MAX);
        let mut w = 0xffff_ffff;
        set_bits(&mut w, 5, 0x1234, 0, 16);
        assert_eq!(w, 0xffe2_469f);
        assert!(is_adrp(ADRP_X1) && is_add_or_sub(ADD_X1) && is_ldr_or_str(LDR_X1));
        assert!(is_branch(B) && is_branch(BL) && is_mov(MOVZ) && is_mov(MOVK48));
        assert!(!is_adrp(ADD_X1) && !is_branch(ADRP_X1) && !is_mov(NOP));
    }

    // -- 21r ------------------------------------------------------------------

    #[test]
    fn adrp_page_math_above_and_below() {
        for target in [
            LOC + 0x1234_5678,
            LOC - 0x1234_5678, // below: negative page delta
            LOC - 0x10,        // previous page
            LOC & !0xfff,
            LOC - (1 << 32) + 0x1000, // ~4 GiB below: the zero-extension trap
            LOC + (1 << 32) - 0x1000,
        ] {
            let mut im = image(&[ADRP_X1], 0);
            patch_aarch64_21r(&mut im, LOC, target).unwrap();
            let got = insn(&im, LOC);
            assert_eq!(got & 0x9f00_001f, ADRP_X1, "opcode and register kept");
            assert_eq!(adrp_page(got, LOC), target & !0xfff, "target {target:#x}");
        }
    }

    #[test]
    fn adrp_range_edges() {
        let page = LOC & !0xfff;
        let mut im = image(&[ADRP_X1], 0);
        patch_aarch64_21r(&mut im, LOC, page + ((1 << 20) - 1) * 0x1000 + 0xfff).unwrap();
        patch_aarch64_21r(&mut im, LOC, page - (1 << 20) * 0x1000).unwrap();
        assert_eq!(adrp_page(insn(&im, LOC), LOC), page - (1 << 32));
        let before = im.clone();
        let e = patch_aarch64_21r(&mut im, LOC, page + (1 << 20) * 0x1000).unwrap_err();
        assert!(e.message.contains("page delta out of signed 21-bit range: 0x100000 pages"), "{e}");
        let e = patch_aarch64_21r(&mut im, LOC, page - (1 << 20) * 0x1000 - 1).unwrap_err();
        assert!(e.message.contains("-0x100001 pages"), "{e}");
        assert_eq!(e.func, PatchFn::Aarch64_21r);
        assert_eq!(im, before);
    }

    #[test]
    fn adrp_21r_does_not_check_the_opcode_but_21rx_is_the_same() {
        let mut a = image(&[0], 0);
        patch_aarch64_21r(&mut a, LOC, LOC + 0x5000).unwrap();
        assert_eq!(insn(&a, LOC), (1 << 29) | (1 << 5)); // 5 pages: immlo 1, immhi 1
        let mut b = image(&[ADRP_X1], 0);
        let mut c = b.clone();
        patch_aarch64_21r(&mut b, LOC, LOC - 0x9000).unwrap();
        patch_aarch64_21rx(&mut c, LOC, LOC - 0x9000).unwrap();
        assert_eq!(b, c);
    }

    // -- 12 -------------------------------------------------------------------

    #[test]
    fn low12_into_add_is_unscaled() {
        let mut im = image(&[ADD_X1], 0);
        patch_aarch64_12(&mut im, LOC, 0x1234_5abc).unwrap();
        assert_eq!(insn(&im, LOC), ADD_X1 | (0xabc << 10));
    }

    #[test]
    fn low12_into_ldr_is_scaled_by_access_size() {
        let mut im = image(&[LDR_X1, LDR_W1, LDRB_W1], 0);
        patch_aarch64_12(&mut im, LOC, 0x7778).unwrap();
        assert_eq!(imm12(insn(&im, LOC)) * 8, 0x778);
        assert_eq!(insn(&im, LOC) & !(0xfff << 10), LDR_X1);
        patch_aarch64_12(&mut im, LOC + 4, 0xffc).unwrap();
        assert_eq!(imm12(insn(&im, LOC + 4)) * 4, 0xffc);
        patch_aarch64_12(&mut im, LOC + 8, 0xfff).unwrap();
        assert_eq!(imm12(insn(&im, LOC + 8)), 0xfff);
    }

    #[test]
    fn low12_asserts() {
        let mut im = image(&[LDR_X1, LDR_Q1, B], 0);
        let e = patch_aarch64_12(&mut im, LOC, 0x7774).unwrap_err();
        assert!(e.message.contains("not a multiple of the 8-byte access size"), "{e}");
        let e = patch_aarch64_12(&mut im, LOC + 4, 0x10).unwrap_err();
        assert!(e.message.contains("bits 23 and 26 both set"), "{e}");
        let e = patch_aarch64_12(&mut im, LOC + 8, 0x10).unwrap_err();
        assert!(e.message.contains("neither LDR/STR (immediate) nor ADD/SUB"), "{e}");
        let e = patch_aarch64_12x(&mut im, LOC + 8, 0x10).unwrap_err();
        assert_eq!(e.func, PatchFn::Aarch64_12x);
        assert_eq!(im, image(&[LDR_X1, LDR_Q1, B], 0));
    }

    // -- 16 -------------------------------------------------------------------

    #[test]
    fn movz_movk_chain_builds_the_value() {
        let v = 0xfedc_ba98_7654_3210;
        let mut im = image(&[MOVZ, MOVK16, MOVK32, MOVK48], 0);
        patch_aarch64_16a(&mut im, LOC, v).unwrap();
        patch_aarch64_16b(&mut im, LOC + 4, v).unwrap();
        patch_aarch64_16c(&mut im, LOC + 8, v).unwrap();
        patch_aarch64_16d(&mut im, LOC + 12, v).unwrap();
        let built = (0..4).fold(0, |acc, i| acc | imm16(insn(&im, LOC + 4 * i)) << (16 * i));
        assert_eq!(built, v);
        assert_eq!(insn(&im, LOC) & !(0xffff << 5), MOVZ);
    }

    #[test]
    fn movz_movk_asserts() {
        let mut im = image(&[MOVK16, ADD_X1], 0);
        let e = patch_aarch64_16a(&mut im, LOC, 1).unwrap_err();
        assert!(e.message.contains("hw = 1, expected 0"), "{e}");
        let e = patch_aarch64_16d(&mut im, LOC, 1).unwrap_err();
        assert!(e.message.contains("hw = 1, expected 3"), "{e}");
        let e = patch_aarch64_16b(&mut im, LOC + 4, 1).unwrap_err();
        assert!(e.message.contains("not a 64-bit MOVN/MOVZ/MOVK"), "{e}");
        patch_aarch64_16b(&mut im, LOC, 0x1_0000).unwrap();
        assert_eq!(imm16(insn(&im, LOC)), 1);
    }

    // -- 26r ------------------------------------------------------------------

    #[test]
    fn branch_targets_and_range() {
        let mut im = image(&[B, BL], 0);
        for (at, opcode) in [(LOC, B), (LOC + 4, BL)] {
            for target in [at + 0x40, at - 0x40, at + (1 << 27) - 4, at - (1 << 27), at] {
                patch_aarch64_26r(&mut im, at, target).unwrap();
                assert_eq!(branch_target(insn(&im, at), at), target);
                assert_eq!(insn(&im, at) & 0xfc00_0000, opcode);
            }
        }
        let e = patch_aarch64_26r(&mut im, LOC, LOC + (1 << 27)).unwrap_err();
        assert!(e.message.contains("out of signed 28-bit range: 0x8000000"), "{e}");
        let e = patch_aarch64_26r(&mut im, LOC, LOC - (1 << 27) - 4).unwrap_err();
        assert!(e.message.contains("out of signed 28-bit range: -0x8000004"), "{e}");
        let e = patch_aarch64_26r(&mut im, LOC, LOC + 6).unwrap_err();
        assert!(e.message.contains("0x6 is not 4-byte aligned"), "{e}");
    }

    #[test]
    fn branch_asserts_on_other_instructions() {
        let mut im = image(&[ADRP_X1], 0);
        let e = patch_aarch64_26r(&mut im, LOC, LOC + 8).unwrap_err();
        assert!(e.message.contains("is not B/BL"), "{e}");
    }

    // -- 33rx -----------------------------------------------------------------

    fn pair(slot: u64) -> Image {
        image(&[ADRP_X1, LDR_X1], slot)
    }
    const SLOT: u64 = DATA + 0x10;

    #[test]
    fn got_pair_small_value_becomes_movz_nop() {
        let mut im = pair(0xbeef);
        patch_aarch64_33rx(&mut im, LOC, SLOT).unwrap();
        assert_eq!(insn(&im, LOC), MOVZ | (0xbeef << 5));
        assert_eq!(insn(&im, LOC + 4), NOP);
    }

    #[test]
    fn got_pair_32_bit_value_becomes_movz_movk() {
        for v in [0x1_0000, 0xffff_ffff, 0x1234_5678] {
            let mut im = pair(v);
            patch_aarch64_33rx(&mut im, LOC, SLOT).unwrap();
            let (a, b) = (insn(&im, LOC), insn(&im, LOC + 4));
            assert_eq!(a & !(0xffff << 5), MOVZ);
            assert_eq!(b & !(0xffff << 5), MOVK16);
            assert_eq!(imm16(a) | imm16(b) << 16, v);
        }
    }

    #[test]
    fn got_pair_near_slot_becomes_ldr_literal() {
        let mut im = pair(1 << 40);
        patch_aarch64_33rx(&mut im, LOC, SLOT).unwrap();
        let a = insn(&im, LOC);
        assert_eq!(a & 0xff00_001f, 0x5800_0001);
        let off = sext((a as u64 >> 5) & 0x7ffff, 19) << 2;
        assert_eq!(LOC.wrapping_add(off as u64), SLOT);
        assert_eq!(insn(&im, LOC + 4), NOP);
    }

    /// Image whose data (one slot, holding a big value) sits `delta` from LOC.
    fn pair_with_slot_at(delta: i64) -> (Image, u64) {
        let slot = LOC.wrapping_add(delta as u64);
        let mut code = vec![0; 0x200];
        code[0x100..0x104].copy_from_slice(&ADRP_X1.to_le_bytes());
        code[0x104..0x108].copy_from_slice(&LDR_X1.to_le_bytes());
        (Image::new(CODE, code, slot, (1u64 << 40).to_le_bytes().to_vec()), slot)
    }

    #[test]
    fn got_pair_ldr_literal_edges_then_fallback() {
        // Highest reach of the ±2^19 check (jit.c's, half of LDR literal's range).
        for (delta, literal) in
            [((1i64 << 19) - 8, true), (1i64 << 19, false), (-(1i64 << 19), true), (-(1i64 << 19) - 8, false)]
        {
            let (mut im, slot) = pair_with_slot_at(delta);
            patch_aarch64_33rx(&mut im, LOC, slot).unwrap();
            let (a, b) = (insn(&im, LOC), insn(&im, LOC + 4));
            if literal {
                assert_eq!(a & 0xff00_0000, 0x5800_0000, "delta {delta:#x}");
                let off = sext((a as u64 >> 5) & 0x7ffff, 19) << 2;
                assert_eq!(LOC.wrapping_add(off as u64), slot);
                assert_eq!(b, NOP);
            } else {
                assert!(is_adrp(a), "delta {delta:#x}: {a:#x}");
                assert_eq!(adrp_page(a, LOC) + imm12(b) * 8, slot);
                assert_eq!(b & !(0xfff << 10), LDR_X1);
            }
        }
    }

    #[test]
    fn got_pair_far_slot_is_patched_normally() {
        let (mut im, slot) = pair_with_slot_at(-0x1234_5678);
        patch_aarch64_33rx(&mut im, LOC, slot).unwrap();
        let (a, b) = (insn(&im, LOC), insn(&im, LOC + 4));
        assert_eq!(adrp_page(a, LOC) + imm12(b) * 8, slot);
        // A misaligned far slot trips patch_aarch64_12's alignment assert,
        // reported against the 33rx call.
        let (mut im, slot) = pair_with_slot_at(-0x1234_5674);
        let e = patch_aarch64_33rx(&mut im, LOC, slot).unwrap_err();
        assert_eq!(e.func, PatchFn::Aarch64_33rx);
        assert!(e.message.contains("patch_aarch64_12: low 12 bits"), "{e}");
    }

    #[test]
    fn got_pair_asserts() {
        let mut im = image(&[ADD_X1, LDR_X1], 5);
        assert!(patch_aarch64_33rx(&mut im, LOC, SLOT).unwrap_err().message.contains("is not ADRP"));
        let mut im = image(&[ADRP_X1, ADD_X1], 5);
        let e = patch_aarch64_33rx(&mut im, LOC, SLOT).unwrap_err();
        assert!(e.message.contains("is not LDR/STR"), "{e}");
        let mut im = image(&[ADRP_X1, 0xF940_0022], 5); // ldr x2, [x1]
        let e = patch_aarch64_33rx(&mut im, LOC, SLOT).unwrap_err();
        assert!(e.message.contains("output register is x2"), "{e}");
        let mut im = image(&[ADRP_X1, 0xF940_0041], 5); // ldr x1, [x2]
        let e = patch_aarch64_33rx(&mut im, LOC, SLOT).unwrap_err();
        assert!(e.message.contains("input register is x2"), "{e}");
        let mut im = pair(5);
        let e = patch_aarch64_33rx(&mut im, LOC, DATA + 0x100).unwrap_err();
        assert!(e.message.starts_with("relaxation read of *(uint64_t *)value at 0x400012348100 is outside"), "{e}");
        assert_eq!(im, pair(5));
    }

    #[test]
    fn ports_dispatch_aarch64_functions() {
        let cases: [(PatchFn, &[u32], u64, u64); 5] = [
            (PatchFn::Aarch64_12, &[ADD_X1], LOC, 0x123),
            (PatchFn::Aarch64_16c, &[MOVK32], LOC, 1 << 33),
            (PatchFn::Aarch64_21rx, &[ADRP_X1], LOC, LOC - 0x10_0000),
            (PatchFn::Aarch64_26r, &[BL], LOC, LOC + 0x100),
            (PatchFn::Aarch64_33rx, &[ADRP_X1, LDR_X1], LOC, SLOT),
        ];
        for (func, insns, loc, value) in cases {
            let mut im = image(insns, 0xbeef);
            Ports.patch(func, &mut im, loc, value).unwrap();
            assert_ne!(im, image(insns, 0xbeef), "{func}");
        }
    }
}
