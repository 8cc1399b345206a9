//! x86-64 patch functions of CPython 3.13's `Python/jit.c`: the relaxing
//! GOT load `patch_x86_64_32rx`. (The plain `patch_64`/`patch_32`/`patch_32r`
//! it builds on are shared with aarch64 and live in the parent module.)

use super::{patch_32r_in, FailureKind, Image, PatchAssert, Site};
use crate::model::PatchFn;

/// `patch_x86_64_32rx`: a `R_X86_64_(REX_)GOTPCRELX` hole. `value` is the GOT
/// slot's address minus 4 (the header passes `(uintptr_t)data + slot - 4`).
/// When the symbol the slot holds is within reach, rewrites
/// `mov reg, [rip+slot]` → `lea reg, [rip+S]`, `call [rip+slot]` →
/// `nop; call S` and `jmp [rip+slot]` → `nop; jmp S`; anything else (e.g.
/// `movzwl`) keeps the GOT load. Then patches the displacement with `patch_32r`.
///
/// Faithful to 3.13, quirks included: the slot is read through
/// `*(uint64_t *)(value + 4)` (so the slot must already hold its final value:
/// data is patched before code), and the reach test is
/// `relaxed - location >= -2^31 && relaxed - location + 1 < 2^31`, so a symbol
/// whose displacement would be exactly `2^31 - 1` is NOT relaxed.
pub fn patch_x86_64_32rx(image: &mut Image, location: u64, value: u64) -> Result<(), PatchAssert> {
    let site = Site::new(PatchFn::X86_64_32rx, location, value);
    let mut value = value;
    // uint64_t relaxed = *(uint64_t *)(value + 4) - 4;
    let what = "relaxation read of *(uint64_t *)(value + 4)";
    let slot = value.wrapping_add(4);
    let opcode_at = location.wrapping_sub(2);
    let modrm_at = location.wrapping_sub(1);
    let Some(relaxed) = image.read_u64(slot).map(|v| v.wrapping_sub(4)) else {
        // The C reads it for every hole, but only a relaxable instruction
        // uses it: a REL32 `jcc` (COFF patches every REL32 with 32rx) reads
        // 8 bytes of its target's code, mapped in CPython and not ours to
        // model. The bytes before the field may lie outside the stencil too
        // (a `jmp` at code+0: the previous uop's last byte), unknown as well.
        let (opcode, modrm) = (image.read_u8(opcode_at), image.read_u8(modrm_at));
        // Relaxable, or unknown (so possibly relaxable).
        let relaxable = matches!(
            (opcode, modrm),
            (Some(0x8b), _) | (Some(0xff), Some(0x15 | 0x25)) | (Some(0xff), None) | (None, _)
        );
        if !relaxable {
            return patch_32r_in(&site, image, location, value);
        }
        if !image.outside_mapped {
            // A GOT load whose slot is not the stencil's: a wild read.
            return Err(site.outside(what, slot));
        }
        // i686's REL32: the read lands on the symbol itself, memory the
        // process has and we do not model; CPython would rewrite the bytes
        // before the field if the 8 bytes there happen to lie in reach.
        let shown = |b: Option<u8>| b.map_or("unknown".to_string(), |b| format!("{b:#04x}"));
        let (opcode, modrm) = (shown(opcode), shown(modrm));
        return Err(PatchAssert {
            kind: FailureKind::Undetermined,
            ..site.fail(format!(
                "{what} at {slot:#x} reads process memory outside the stencil, and whether the bytes before location ({opcode} {modrm}) are rewritten as a relaxation depends on it"
            ))
        });
    };
    // (int64_t)relaxed - (int64_t)location (+ 1), wrapping as the machine does.
    let delta = (relaxed as i64).wrapping_sub(location as i64);
    if delta >= -(1i64 << 31) && delta.wrapping_add(1) < (1i64 << 31) {
        let opcode = site.read_u8(image, opcode_at, "read of location[-2]")?;
        if opcode == 0x8b {
            // mov reg, qword ptr [rip + AAA] -> lea reg, [rip + XXX]
            site.write(image, opcode_at, &[0x8d])?;
            value = relaxed;
        } else if opcode == 0xff {
            match site.read_u8(image, modrm_at, "read of location[-1]")? {
                // call qword ptr [rip + AAA] -> nop; call XXX
                0x15 => {
                    site.write(image, opcode_at, &[0x90, 0xe8])?;
                    value = relaxed;
                }
                // jmp qword ptr [rip + AAA] -> nop; jmp XXX
                0x25 => {
                    site.write(image, opcode_at, &[0x90, 0xe9])?;
                    value = relaxed;
                }
                _ => {}
            }
        }
    }
    patch_32r_in(&site, image, location, value)
}

/// `patch_x86_64_trampoline(location, ordinal, state)` (3.14+, Mach-O
/// `X86_64_RELOC_BRANCH` to an extern): a `call`/`jmp rel32` to `value` (the
/// ordinal's symbol) directly when the displacement fits in 32 bits;
/// otherwise a `jmp *0(%rip)` veneer with the 64-bit target is written at
/// `slot` and the branch goes there. The relocation's `-4` is the patch
/// function's to apply (the header's argument is the ordinal). The
/// displacement is patched by `patcher`'s `patch_32r`.
pub fn patch_x86_64_trampoline(
    patcher: &dyn super::Patcher,
    image: &mut Image,
    location: u64,
    value: u64,
    slot: Option<u64>,
) -> Result<(), PatchAssert> {
    let site = Site::new(PatchFn::X86_64_Trampoline, location, value);
    let range = value.wrapping_sub(4).wrapping_sub(location) as i64;
    if (-(1i64 << 31)..(1i64 << 31)).contains(&range) {
        return patcher.patch(PatchFn::P32r, image, location, value.wrapping_sub(4));
    }
    let slot = slot.ok_or_else(|| {
        site.fail("patch_x86_64_trampoline: the ordinal has no trampoline (its bit is not in the trampoline mask)")
    })?;
    let mut veneer = vec![0xff, 0x25, 0, 0, 0, 0];
    veneer.extend_from_slice(&value.to_le_bytes());
    veneer.extend_from_slice(&[0xcc, 0xcc]);
    site.write(image, slot, &veneer)?;
    patcher.patch(PatchFn::P32r, image, location, slot.wrapping_sub(4))
}

#[cfg(test)]
mod tests {
    use super::super::{patch_32, patch_32r, patch_64, Patcher, Ports};
    use super::*;

    const CODE: u64 = 0x7f12_3456_0000;
    const DATA: u64 = CODE + 0x1000;
    /// The GOT slot used by the tests; the header passes `slot - 4`.
    const SLOT: u64 = DATA + 8;

    /// An image with `insn` at code+0x10 (rest `int3`) and `s` in the slot.
    fn image(insn: &[u8], s: u64) -> Image {
        let mut code = vec![0xcc; 0x40];
        code[0x10..0x10 + insn.len()].copy_from_slice(insn);
        let mut data: Vec<u8> = (0xa0..0xc0).collect();
        data[8..16].copy_from_slice(&s.to_le_bytes());
        Image::new(CODE, code, DATA, data)
    }

    fn disp(im: &Image, at: u64) -> i32 {
        im.read_u32(at).unwrap() as i32
    }

    /// Patch the displacement that starts `disp_at` bytes into the instruction.
    fn rx(insn: &[u8], disp_at: u64, s: u64) -> (Image, Result<(), PatchAssert>) {
        let mut im = image(insn, s);
        let r = patch_x86_64_32rx(&mut im, CODE + 0x10 + disp_at, SLOT - 4);
        (im, r)
    }

    const MOV_RAX: [u8; 7] = [0x48, 0x8b, 0x05, 0, 0, 0, 0];
    const CALL: [u8; 6] = [0xff, 0x15, 0, 0, 0, 0];
    const JMP: [u8; 6] = [0xff, 0x25, 0, 0, 0, 0];
    const MOVZWL: [u8; 7] = [0x0f, 0xb7, 0x05, 0, 0, 0, 0];

    #[test]
    fn mov_is_relaxed_to_lea_when_in_reach() {
        let s = CODE + 0x1234;
        let (im, r) = rx(&MOV_RAX, 3, s);
        r.unwrap();
        assert_eq!(im.code[0x10..0x13], [0x48, 0x8d, 0x05]);
        // lea's target = next pc + disp = S.
        assert_eq!((CODE + 0x17).wrapping_add(disp(&im, CODE + 0x13) as u64), s);
    }

    #[test]
    fn mov_stays_a_got_load_when_out_of_reach() {
        let s = CODE + (1 << 32);
        let (im, r) = rx(&MOV_RAX, 3, s);
        r.unwrap();
        assert_eq!(im.code[0x10..0x13], [0x48, 0x8b, 0x05]);
        assert_eq!((CODE + 0x17).wrapping_add(disp(&im, CODE + 0x13) as u64), SLOT);
    }

    #[test]
    fn call_and_jmp_become_nop_plus_direct_branch() {
        for (insn, op) in [(CALL, 0xe8), (JMP, 0xe9)] {
            let s = CODE - 0x5000; // below the code: a negative displacement
            let (im, r) = rx(&insn, 2, s);
            r.unwrap();
            assert_eq!(im.code[0x10..0x12], [0x90, op]);
            assert_eq!((CODE + 0x16).wrapping_add(disp(&im, CODE + 0x12) as u64), s);
            // Out of reach: the indirect form stays.
            let (im, r) = rx(&insn, 2, 0x1_0000);
            r.unwrap();
            assert_eq!(im.code[0x10..0x12], insn[..2]);
            assert_eq!((CODE + 0x16).wrapping_add(disp(&im, CODE + 0x12) as u64), SLOT);
        }
    }

    #[test]
    fn other_instructions_are_never_relaxed() {
        // movzwl (%rip), %eax: 0f b7 05, location[-2] is 0xb7.
        let (im, r) = rx(&MOVZWL, 3, CODE + 0x40);
        r.unwrap();
        assert_eq!(im.code[0x10..0x13], MOVZWL[..3]);
        assert_eq!((CODE + 0x17).wrapping_add(disp(&im, CODE + 0x13) as u64), SLOT);
        // ff /2 with another modrm (call *%rax-ish bytes) is not touched either.
        let (im, r) = rx(&[0xff, 0x35, 0, 0, 0, 0], 2, CODE + 0x40);
        r.unwrap();
        assert_eq!(im.code[0x10..0x12], [0xff, 0x35]);
    }

    /// `relaxed - location` for an instruction whose displacement is at code+0x13.
    const LOC: u64 = CODE + 0x13;

    #[test]
    fn relaxation_reach_upper_edge_is_one_short() {
        // relaxed - location = 2^31 - 2: relaxed (the last value that is).
        let s = LOC + (1 << 31) - 2 + 4;
        let (im, r) = rx(&MOV_RAX, 3, s);
        r.unwrap();
        assert_eq!(im.code[0x11], 0x8d);
        assert_eq!(disp(&im, LOC), i32::MAX - 1);
        // relaxed - location = 2^31 - 1: fits a rel32 but the C test's `+ 1`
        // keeps it unrelaxed.
        let (im, r) = rx(&MOV_RAX, 3, s + 1);
        r.unwrap();
        assert_eq!(im.code[0x11], 0x8b);
        assert_eq!((LOC + 4).wrapping_add(disp(&im, LOC) as u64), SLOT);
    }

    #[test]
    fn relaxation_reach_lower_edge() {
        // relaxed - location = -2^31: relaxed.
        let s = LOC - (1 << 31) + 4;
        let (im, r) = rx(&MOV_RAX, 3, s);
        r.unwrap();
        assert_eq!(im.code[0x11], 0x8d);
        assert_eq!(disp(&im, LOC), i32::MIN);
        assert_eq!((LOC + 4).wrapping_add(disp(&im, LOC) as u64), s);
        // One further down: not relaxed.
        let (im, r) = rx(&MOV_RAX, 3, s - 1);
        r.unwrap();
        assert_eq!(im.code[0x11], 0x8b);
    }

    #[test]
    fn relaxation_reads_the_slot_at_value_plus_4() {
        // A slot that is not in the image: the C code would read wild memory.
        let mut im = image(&MOV_RAX, 0);
        let e = patch_x86_64_32rx(&mut im, CODE + 0x13, DATA + 0x100).unwrap_err();
        assert_eq!(e.func, PatchFn::X86_64_32rx);
        assert_eq!(
            e.message,
            format!(
                "relaxation read of *(uint64_t *)(value + 4) at {:#x} is outside the stencil's code and data",
                DATA + 0x104
            )
        );
        assert_eq!(im, image(&MOV_RAX, 0), "nothing written");
        // Slot straddling the end of data: also wild.
        let mut im = image(&MOV_RAX, 0);
        assert!(patch_x86_64_32rx(&mut im, CODE + 0x13, DATA + 0x20 - 8).is_err());
    }

    #[test]
    fn a_jcc_to_a_target_outside_the_image_is_patched_like_32r() {
        // je rel32 (COFF REL32 to _JIT_ERROR_TARGET): the slot read would
        // land in another uop's code; nothing relaxes, the branch is plain.
        let code = [0x0f, 0x84, 0, 0, 0, 0];
        let mut im = image(&code, 0);
        let target = CODE + 0x12345;
        patch_x86_64_32rx(&mut im, CODE + 0x12, target - 4).unwrap();
        assert_eq!(&im.code[0x10..0x12], &[0x0f, 0x84]);
        assert_eq!((CODE + 0x16).wrapping_add(disp(&im, CODE + 0x12) as u64), target);
        // The same far value under a `mov` through a slot is still a finding.
        let e = patch_x86_64_32rx(&mut image(&MOV_RAX, 0), CODE + 0x13, target - 4).unwrap_err();
        assert!(e.message.starts_with("relaxation read of *(uint64_t *)(value + 4)"), "{e}");
    }

    #[test]
    fn relaxation_reads_location_minus_2_only_when_in_reach() {
        // Displacement at code+1: location[-2] is before the code.
        let mut im = image(&[], CODE + 8);
        let e = patch_x86_64_32rx(&mut im, CODE + 1, SLOT - 4).unwrap_err();
        assert!(e.message.starts_with("read of location[-2] at "), "{e}");
        // Out of reach, C never looks at the opcode.
        let mut im = image(&[], CODE + (1 << 40));
        patch_x86_64_32rx(&mut im, CODE + 1, SLOT - 4).unwrap();
    }

    #[test]
    fn unrelaxed_slot_out_of_reach_fires_patch_32r_assert() {
        let mut code = vec![0xcc; 0x20];
        code[..7].copy_from_slice(&MOV_RAX);
        let data_far = CODE + (1 << 31) + 7; // slot - 4 - location = 2^31
        let mut data = vec![0; 16];
        data[8..].copy_from_slice(&(CODE + (1 << 40)).to_le_bytes());
        let mut im = Image::new(CODE, code, data_far - 8, data);
        let e = patch_x86_64_32rx(&mut im, CODE + 3, data_far - 4).unwrap_err();
        assert_eq!(e.func, PatchFn::X86_64_32rx);
        assert!(e.message.contains("value - location out of signed 32-bit range: 0x80000000"), "{e}");
        assert!(e.to_string().starts_with("patch_x86_64_32rx(location 0x7f1234560003"), "{e}");
    }

    // -- patch_32r ------------------------------------------------------------

    #[test]
    fn patch_32r_edges() {
        let loc = CODE + 0x20;
        let mut im = image(&[], 0);
        patch_32r(&mut im, loc, loc + (1 << 31) - 1).unwrap();
        assert_eq!(disp(&im, loc), i32::MAX);
        patch_32r(&mut im, loc, loc - (1 << 31)).unwrap();
        assert_eq!(disp(&im, loc), i32::MIN);
        patch_32r(&mut im, loc, loc - 4).unwrap();
        assert_eq!(disp(&im, loc), -4);

        let before = im.clone();
        let e = patch_32r(&mut im, loc, loc + (1 << 31)).unwrap_err();
        assert_eq!(e.func, PatchFn::P32r);
        assert_eq!(e.value, loc + (1 << 31));
        assert!(e.message.starts_with("value - location out of signed 32-bit range: 0x80000000"));
        let e = patch_32r(&mut im, loc, loc - (1 << 31) - 1).unwrap_err();
        assert!(e.message.starts_with("value - location out of signed 32-bit range: -0x80000001"));
        assert_eq!(im, before, "a firing assert writes nothing");
        // Far below (wrapping to a huge unsigned difference): still signed-checked.
        assert!(patch_32r(&mut im, loc, 0).is_err());
    }

    #[test]
    fn patch_32r_outside_the_image_is_a_wild_write() {
        let mut im = image(&[], 0);
        let e = patch_32r(&mut im, CODE + 0x3e, CODE + 0x3e).unwrap_err();
        assert!(e.message.starts_with("write of 4 bytes at 0x"), "{e}");
    }

    // -- patch_32 / patch_64 ------------------------------------------------

    #[test]
    fn patch_32_checks_unsigned_range() {
        let mut im = image(&[], 0);
        patch_32(&mut im, DATA, 0xffff_ffff).unwrap();
        assert_eq!(im.read_u32(DATA), Some(0xffff_ffff));
        let e = patch_32(&mut im, DATA, 1 << 32).unwrap_err();
        assert_eq!(e.func, PatchFn::P32);
        assert!(e.message.contains("unsigned 32-bit"));
        assert_eq!(im.read_u32(DATA), Some(0xffff_ffff));
    }

    #[test]
    fn patch_64_writes_little_endian() {
        let mut im = image(&[], 0);
        patch_64(&mut im, DATA + 16, 0x0102_0304_0506_0708).unwrap();
        assert_eq!(im.data[16..24], [8, 7, 6, 5, 4, 3, 2, 1]);
        assert!(patch_64(&mut im, DATA + 0x1c, 0).is_err());
    }

    #[test]
    fn ports_dispatch_x86_functions() {
        let mut a = image(&MOV_RAX, CODE);
        let mut b = a.clone();
        Ports.patch(PatchFn::X86_64_32rx, &mut a, CODE + 0x13, SLOT - 4).unwrap();
        patch_x86_64_32rx(&mut b, CODE + 0x13, SLOT - 4).unwrap();
        assert_eq!(a, b);
        assert_eq!(Ports.name(), "ports");
    }
}
