//! Patch: replay a stencil's `emit_*` function onto a byte image of the
//! placed memory, the way `_PyJIT_Compile` runs it.
//!
//! Everything here works by ABSOLUTE address, like the C code does: a
//! [`Patcher`] gets the image, the location and the value exactly as CPython's
//! `patch_*` functions get `unsigned char *location` and `uint64_t value`.
//! That keeps the door open for a patcher that runs CPython's own `jit.c`
//! (compiled from a user's tree) on the same bytes.
//!
//! [`Ports`] is the Rust port of CPython 3.13's `Python/jit.c` patch
//! functions, asserts and quirks included. Each architecture's logic lives in
//! its own file ([`x86_64`], [`aarch64`]); the three architecture-neutral
//! functions (`patch_64`, `patch_32`, `patch_32r`) live here because both
//! targets use them.
//!
//! The image starts out holding STALE bytes (memory reused from an earlier
//! trace, see [`stale_bytes`]) so a stencil that patches before it copies, or
//! relaxes code against a slot that has not been written yet, produces a
//! visibly different image instead of happening to work on zeros.

pub mod aarch64;
pub mod native;
pub mod x86_64;

use crate::model::{hex_signed, EmitOp, PatchCall, PatchFn, Section, Stencil, Term};
use crate::place::Placement;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::fmt;

// ---------------------------------------------------------------------------
// The image
// ---------------------------------------------------------------------------

/// The bytes of one stencil's placed code and data, addressed absolutely,
/// and (3.14+) the trace's trampolines and GOT the stencil's patches write.
/// No two regions overlap (checked by [`Image::new`] and [`Image::with_trace`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    pub code_addr: u64,
    pub code: Vec<u8>,
    pub data_addr: u64,
    pub data: Vec<u8>,
    /// 3.14+: the trace's trampolines (empty for 3.13).
    pub trampolines_addr: u64,
    pub trampolines: Vec<u8>,
    /// 3.14+: the trace's GOT (empty for 3.13).
    pub got_addr: u64,
    pub got: Vec<u8>,
    /// Memory outside the regions belongs to the process (mapped, contents
    /// unknown) rather than being a wild address: see
    /// [`crate::place::Placement::symbols_readable`].
    pub outside_mapped: bool,
}

/// Offset of `addr` in the region `[base, base + len)`, if it lies there.
fn offset_in(base: u64, len: usize, addr: u64) -> Option<usize> {
    let off = addr.checked_sub(base)?;
    (off < len as u64).then_some(off as usize)
}

/// The regions of an image, for byte addressing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Region {
    Code,
    Data,
    Trampolines,
    Got,
}

const REGIONS: [Region; 4] = [Region::Code, Region::Data, Region::Trampolines, Region::Got];

impl Image {
    /// Panics when the two regions overlap: placements never do that, and a
    /// patch could not say which bytes it wrote.
    pub fn new(code_addr: u64, code: Vec<u8>, data_addr: u64, data: Vec<u8>) -> Image {
        let image = Image {
            code_addr,
            code,
            data_addr,
            data,
            trampolines_addr: 0,
            trampolines: Vec::new(),
            got_addr: 0,
            got: Vec::new(),
            outside_mapped: false,
        };
        image.assert_disjoint();
        image
    }

    /// The same image with the trace's trampolines and GOT beside it (3.14+).
    pub fn with_trace(mut self, trampolines_addr: u64, trampolines: Vec<u8>, got_addr: u64, got: Vec<u8>) -> Image {
        self.trampolines_addr = trampolines_addr;
        self.trampolines = trampolines;
        self.got_addr = got_addr;
        self.got = got;
        self.assert_disjoint();
        self
    }

    fn assert_disjoint(&self) {
        for (i, a) in REGIONS.iter().enumerate() {
            for b in &REGIONS[i + 1..] {
                let (a0, ab) = self.bytes_of(*a);
                let (b0, bb) = self.bytes_of(*b);
                let (a1, b1) = (a0 as u128 + ab.len() as u128, b0 as u128 + bb.len() as u128);
                assert!(
                    ab.is_empty() || bb.is_empty() || a1 <= b0 as u128 || b1 <= a0 as u128,
                    "{a:?} {a0:#x}+{:#x} and {b:?} {b0:#x}+{:#x} overlap",
                    ab.len(),
                    bb.len()
                );
            }
        }
    }

    /// `(address, bytes)` of one region.
    pub fn bytes_of(&self, region: Region) -> (u64, &[u8]) {
        match region {
            Region::Code => (self.code_addr, &self.code),
            Region::Data => (self.data_addr, &self.data),
            Region::Trampolines => (self.trampolines_addr, &self.trampolines),
            Region::Got => (self.got_addr, &self.got),
        }
    }

    pub fn bytes_of_mut(&mut self, region: Region) -> &mut Vec<u8> {
        match region {
            Region::Code => &mut self.code,
            Region::Data => &mut self.data,
            Region::Trampolines => &mut self.trampolines,
            Region::Got => &mut self.got,
        }
    }

    /// `(address, bytes)` of the region a patch call's section names.
    pub fn region(&self, section: Section) -> (u64, &[u8]) {
        self.bytes_of(match section {
            Section::Code => Region::Code,
            Section::Data => Region::Data,
            Section::Got => Region::Got,
        })
    }

    /// Every non-empty region with its address, in a fixed order.
    pub fn regions(&self) -> impl Iterator<Item = (Region, u64, &[u8])> {
        REGIONS.iter().map(|r| (*r, self.bytes_of(*r))).filter(|(_, (_, b))| !b.is_empty()).map(|(r, (a, b))| (r, a, b))
    }

    /// Which region byte `addr` lies in, and its offset there.
    pub fn locate(&self, addr: u64) -> Option<(Region, usize)> {
        REGIONS.iter().find_map(|r| {
            let (base, bytes) = self.bytes_of(*r);
            offset_in(base, bytes.len(), addr).map(|off| (*r, off))
        })
    }

    /// True when every byte of `addr..addr+len` lies in code or data.
    pub fn contains(&self, addr: u64, len: usize) -> bool {
        (0..len as u64).all(|i| addr.checked_add(i).and_then(|a| self.locate(a)).is_some())
    }

    /// `len` bytes at `addr`. They must all lie in ONE region (a slice cannot
    /// span two vectors); use [`Image::read_u32`]/[`Image::read_u64`] for
    /// values that might straddle adjacent code and data.
    pub fn read(&self, addr: u64, len: usize) -> Option<&[u8]> {
        for region in REGIONS {
            let (base, bytes) = self.bytes_of(region);
            if let Some(off) = addr.checked_sub(base) {
                let end = off.checked_add(len as u64)?;
                if end <= bytes.len() as u64 && (off < bytes.len() as u64 || len == 0) {
                    return Some(&bytes[off as usize..end as usize]);
                }
            }
        }
        (len == 0).then_some(&[][..])
    }

    fn byte(&self, addr: u64) -> Option<u8> {
        self.locate(addr).map(|(region, off)| self.bytes_of(region).1[off])
    }

    fn read_array<const N: usize>(&self, addr: u64) -> Option<[u8; N]> {
        let mut out = [0u8; N];
        for (i, b) in out.iter_mut().enumerate() {
            *b = self.byte(addr.checked_add(i as u64)?)?;
        }
        Some(out)
    }

    pub fn read_u8(&self, addr: u64) -> Option<u8> {
        self.byte(addr)
    }

    /// Little-endian, as both targets store it.
    pub fn read_u32(&self, addr: u64) -> Option<u32> {
        self.read_array::<4>(addr).map(u32::from_le_bytes)
    }

    pub fn read_u64(&self, addr: u64) -> Option<u64> {
        self.read_array::<8>(addr).map(u64::from_le_bytes)
    }

    /// Writes all of `bytes` at `addr`, or nothing (None) when any byte would
    /// land outside code and data.
    pub fn write(&mut self, addr: u64, bytes: &[u8]) -> Option<()> {
        let mut places = Vec::with_capacity(bytes.len());
        for i in 0..bytes.len() as u64 {
            places.push(self.locate(addr.checked_add(i)?)?);
        }
        for ((region, off), b) in places.into_iter().zip(bytes) {
            self.bytes_of_mut(region)[off] = *b;
        }
        Some(())
    }
}

// ---------------------------------------------------------------------------
// Asserts and the patcher interface
// ---------------------------------------------------------------------------

/// A C `assert` in `jit.c` that would have fired, or a memory access the C
/// code would have made outside the stencil's code and data (a wild read or
/// write). `func`/`location`/`value` are the arguments of the call the header
/// made (an assert inside a helper, e.g. `patch_32r` called by
/// `patch_x86_64_32rx`, is reported against the outer call; the message
/// names the helper).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatchAssert {
    pub func: PatchFn,
    pub location: u64,
    pub value: u64,
    pub message: String,
    pub kind: FailureKind,
}

/// Why a patch call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FailureKind {
    /// The patch function's own check fired (or it touched memory outside
    /// the stencil's regions): the stencil or the patcher is wrong.
    #[default]
    Assert,
    /// The placement cannot be reproduced by this patcher (its addresses
    /// are taken in stencilcheck's own process): nobody's fault.
    Unusable,
    /// The patch code ended or hung the process running it, died of a
    /// signal other than a wild access, wrote output or damaged its heap
    /// (`--jit-c`): always wrong, never "the same" as another patcher's
    /// assert.
    Crash,
    /// What the patch does depends on process memory stencilcheck does not
    /// model (i686: `patch_x86_64_32rx` reading 8 bytes at a C function
    /// before an instruction it could relax): the run says nothing.
    Undetermined,
}

impl PatchAssert {
    /// A placement this patcher cannot use (see [`FailureKind::Unusable`]).
    pub fn unusable(func: PatchFn, location: u64, value: u64, why: impl Into<String>) -> PatchAssert {
        PatchAssert {
            func,
            location,
            value,
            message: format!("placement unusable: {}", why.into()),
            kind: FailureKind::Unusable,
        }
    }
    pub fn is_unusable(&self) -> bool {
        self.kind == FailureKind::Unusable
    }
    /// The placement says nothing either way: unusable here, or undetermined.
    pub fn is_inconclusive(&self) -> bool {
        matches!(self.kind, FailureKind::Unusable | FailureKind::Undetermined)
    }
}

impl fmt::Display for PatchAssert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}(location {:#x}, value {:#x}): {}",
            self.func,
            self.location,
            self.value,
            self.message.replace('\n', " ")
        )
    }
}

impl std::error::Error for PatchAssert {}

/// Applies one `patch_*` call to an image, by absolute address.
pub trait Patcher {
    fn patch(&self, func: PatchFn, image: &mut Image, location: u64, value: u64) -> Result<(), PatchAssert>;
    /// Short name for reports (`ports`, later e.g. `jit.c@<path>`).
    fn name(&self) -> &str;
    /// Addresses this patcher can work at. The ports work anywhere; a
    /// patcher running real C on this host needs addresses the host can map.
    fn address_space(&self) -> std::ops::Range<u64> {
        0..u64::MAX
    }
}

/// A 3.14+ trampoline call: `value` is the ordinal's symbol, `slot` its
/// trampoline in the trace (if the trace has one). CPython's logic, with the
/// branch itself patched through `patcher` (so a jit.c under test patches it).
pub fn trampoline(
    patcher: &dyn Patcher,
    func: PatchFn,
    image: &mut Image,
    location: u64,
    value: u64,
    slot: Option<u64>,
) -> Result<(), PatchAssert> {
    match func {
        PatchFn::Aarch64_Trampoline => aarch64::patch_aarch64_trampoline(patcher, image, location, value, slot),
        PatchFn::X86_64_Trampoline => x86_64::patch_x86_64_trampoline(patcher, image, location, value, slot),
        _ => patcher.patch(func, image, location, value),
    }
}

/// The Rust ports of CPython 3.13's `Python/jit.c` patch functions.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ports;

impl Patcher for Ports {
    fn patch(&self, func: PatchFn, image: &mut Image, location: u64, value: u64) -> Result<(), PatchAssert> {
        match func {
            PatchFn::P64 => patch_64(image, location, value),
            PatchFn::P32 => patch_32(image, location, value),
            PatchFn::P32r => patch_32r(image, location, value),
            PatchFn::X86_64_32rx => x86_64::patch_x86_64_32rx(image, location, value),
            PatchFn::Aarch64_12 => aarch64::patch_aarch64_12(image, location, value),
            PatchFn::Aarch64_12x => aarch64::patch_aarch64_12x(image, location, value),
            PatchFn::Aarch64_16a => aarch64::patch_aarch64_16a(image, location, value),
            PatchFn::Aarch64_16b => aarch64::patch_aarch64_16b(image, location, value),
            PatchFn::Aarch64_16c => aarch64::patch_aarch64_16c(image, location, value),
            PatchFn::Aarch64_16d => aarch64::patch_aarch64_16d(image, location, value),
            PatchFn::Aarch64_21r => aarch64::patch_aarch64_21r(image, location, value),
            PatchFn::Aarch64_21rx => aarch64::patch_aarch64_21rx(image, location, value),
            PatchFn::Aarch64_26r => aarch64::patch_aarch64_26r(image, location, value),
            PatchFn::Aarch64_19r => aarch64::patch_aarch64_19r(image, location, value),
            PatchFn::Aarch64_33rx => aarch64::patch_aarch64_33rx(image, location, value),
            // The GOT slot of an ordinal is an 8-byte absolute address.
            PatchFn::GotSymbol => {
                Site::new(PatchFn::GotSymbol, location, value).write(image, location, &value.to_le_bytes())
            }
            PatchFn::Aarch64_Trampoline | PatchFn::X86_64_Trampoline => Err(Site::new(func, location, value)
                .fail(format!("{func} needs the trace's trampolines (Patcher::trampoline)"))),
        }
    }
    fn name(&self) -> &str {
        "ports"
    }
}

/// The call a port is executing for: what a [`PatchAssert`] reports, plus
/// memory accessors that turn an access outside the image into one.
pub(crate) struct Site {
    pub func: PatchFn,
    pub location: u64,
    pub value: u64,
}

impl Site {
    pub(crate) fn new(func: PatchFn, location: u64, value: u64) -> Site {
        Site { func, location, value }
    }

    pub(crate) fn fail(&self, message: impl Into<String>) -> PatchAssert {
        PatchAssert {
            func: self.func,
            location: self.location,
            value: self.value,
            message: message.into(),
            kind: FailureKind::Assert,
        }
    }

    /// `assert(cond)`: Err with `message()` when it does not hold.
    pub(crate) fn check(&self, cond: bool, message: impl FnOnce() -> String) -> Result<(), PatchAssert> {
        if cond {
            Ok(())
        } else {
            Err(self.fail(message()))
        }
    }

    pub(crate) fn outside(&self, what: &str, addr: u64) -> PatchAssert {
        self.fail(format!("{what} at {addr:#x} is outside the stencil's code and data"))
    }

    /// `what` names the access, e.g. `relaxation read of *(value+4)`.
    pub(crate) fn read_u8(&self, image: &Image, addr: u64, what: &str) -> Result<u8, PatchAssert> {
        image.read_u8(addr).ok_or_else(|| self.outside(what, addr))
    }

    pub(crate) fn read_u32(&self, image: &Image, addr: u64, what: &str) -> Result<u32, PatchAssert> {
        image.read_u32(addr).ok_or_else(|| self.outside(what, addr))
    }

    pub(crate) fn read_u64(&self, image: &Image, addr: u64, what: &str) -> Result<u64, PatchAssert> {
        image.read_u64(addr).ok_or_else(|| self.outside(what, addr))
    }

    pub(crate) fn write(&self, image: &mut Image, addr: u64, bytes: &[u8]) -> Result<(), PatchAssert> {
        image.write(addr, bytes).ok_or_else(|| self.outside(&format!("write of {} bytes", bytes.len()), addr))
    }
}

// ---------------------------------------------------------------------------
// Architecture-neutral ports (jit.c: patch_32, patch_32r, patch_64)
// ---------------------------------------------------------------------------

/// `patch_32`: 32-bit absolute address (i686's `R_386_32`).
pub fn patch_32(image: &mut Image, location: u64, value: u64) -> Result<(), PatchAssert> {
    let site = Site::new(PatchFn::P32, location, value);
    // assert(value < (1ULL << 32));
    site.check(value < (1u64 << 32), || {
        format!("value {value:#x} out of unsigned 32-bit range (assert value < (1ULL << 32))")
    })?;
    site.write(image, location, &(value as u32).to_le_bytes())
}

/// `patch_32r`: 32-bit relative address (`R_X86_64_PC32`, the unrelaxed
/// half of `patch_x86_64_32rx`).
pub fn patch_32r(image: &mut Image, location: u64, value: u64) -> Result<(), PatchAssert> {
    patch_32r_in(&Site::new(PatchFn::P32r, location, value), image, location, value)
}

/// `patch_32r` on behalf of `site` (so `patch_x86_64_32rx` reports its own call).
pub(crate) fn patch_32r_in(site: &Site, image: &mut Image, location: u64, value: u64) -> Result<(), PatchAssert> {
    // value -= (uintptr_t)location;
    let value = value.wrapping_sub(location);
    let signed = value as i64;
    site.check(signed >= -(1i64 << 31), || {
        format!(
            "value - location out of signed 32-bit range: {} (patch_32r: assert (int64_t)value >= -(1LL << 31))",
            hex_signed(signed)
        )
    })?;
    site.check(signed < (1i64 << 31), || {
        format!(
            "value - location out of signed 32-bit range: {} (patch_32r: assert (int64_t)value < (1LL << 31))",
            hex_signed(signed)
        )
    })?;
    site.write(image, location, &(value as u32).to_le_bytes())
}

/// `patch_64`: 64-bit absolute address (data slots on every target).
pub fn patch_64(image: &mut Image, location: u64, value: u64) -> Result<(), PatchAssert> {
    Site::new(PatchFn::P64, location, value).write(image, location, &value.to_le_bytes())
}

// ---------------------------------------------------------------------------
// Stale memory and the replay
// ---------------------------------------------------------------------------

/// Bytes a reused JIT allocation might hold before an emit function runs:
/// 8-byte words that are either an address within ±1 MiB of `addr_near`
/// (about half of them: stale code pointers and GOT slots of an earlier
/// trace), zero (a quarter), or random (a quarter). Deterministic in
/// `(seed, addr_near, len)`.
pub fn stale_bytes(seed: u64, addr_near: u64, len: usize) -> Vec<u8> {
    const MIB: i64 = 1 << 20;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        let word = match rng.gen_range(0..4u32) {
            0 | 1 => addr_near.wrapping_add(rng.gen_range(-MIB..=MIB) as u64),
            2 => 0,
            _ => rng.gen::<u64>(),
        };
        out.extend_from_slice(&word.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Seeds of the stale code and data, derived from `placement.contents_seed`
/// (different streams so code and data do not hold the same words).
const STALE_CODE: u64 = 0x5eed_c0de_0000_0001;
const STALE_DATA: u64 = 0x5eed_da7a_0000_0002;
const STALE_TRAMPOLINES: u64 = 0x5eed_7a4b_0000_0003;
const STALE_GOT: u64 = 0x5eed_6074_0000_0004;

/// The image the emit function starts from: the placed regions, sized as the
/// stencil's code and data, holding stale bytes.
pub fn stale_image(stencil: &Stencil, placement: &Placement) -> Image {
    let seed = placement.contents_seed;
    let mut image = Image::new(
        placement.code,
        stale_bytes(seed ^ STALE_CODE, placement.code, stencil.code.len()),
        placement.data,
        stale_bytes(seed ^ STALE_DATA, placement.code, stencil.data.len()),
    );
    image.outside_mapped = placement.symbols_readable;
    match &placement.trace {
        // The trace's trampolines and GOT: what other stencils (or an earlier
        // trace) left there, unless this stencil's own patches write them.
        Some(trace) => image.with_trace(
            trace.trampolines,
            stale_bytes(seed ^ STALE_TRAMPOLINES, placement.code, trace.trampolines_len() as usize),
            trace.got,
            stale_bytes(seed ^ STALE_GOT, placement.code, trace.got_len() as usize),
        ),
        None => image,
    }
}

/// A patch call that failed while replaying an emit function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmitFailure {
    /// The call as the header wrote it (with its line).
    pub call: PatchCall,
    pub assert: PatchAssert,
}

impl fmt::Display for EmitFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.call;
        write!(
            f,
            "line {}: {}({} + {:#x}, {}) at {:#x} with value {:#x}: {}",
            c.line,
            c.func,
            c.section,
            c.offset,
            c.value,
            self.assert.location,
            self.assert.value,
            self.assert.message.replace('\n', " ")
        )
    }
}

impl std::error::Error for EmitFailure {}

/// Replays `stencil.emit` in order on a [`stale_image`]: `CopyData` and
/// `CopyCode` copy the bodies over their regions, every `Patch` computes its
/// absolute location and value and goes through `patcher`. A stencil whose
/// emit never copies its code keeps the stale bytes: that is what CPython
/// would run, so it is what we return.
pub fn emit(stencil: &Stencil, placement: &Placement, patcher: &dyn Patcher) -> Result<Image, EmitFailure> {
    let mut image = stale_image(stencil, placement);
    for op in &stencil.emit {
        match op {
            EmitOp::CopyData { .. } => image.data.copy_from_slice(&stencil.data),
            EmitOp::CopyCode { .. } => image.code.copy_from_slice(&stencil.code),
            EmitOp::Patch(call) if call.section == Section::Got => {
                // patch_got_symbol(state, ordinal): the ordinal's slot in the trace's GOT.
                let ordinal = call.offset as u32;
                let value = placement.value(&call.value, stencil);
                let Some(location) = placement.address_of(Section::Got, call.offset) else {
                    return Err(EmitFailure {
                        call: call.clone(),
                        assert: PatchAssert {
                            func: call.func,
                            location: 0,
                            value,
                            message: format!(
                                "ordinal {ordinal:#x} has no slot in the trace's GOT (its got_mask bit is clear)"
                            ),
                            kind: FailureKind::Assert,
                        },
                    });
                };
                patcher
                    .patch(call.func, &mut image, location, value)
                    .map_err(|assert| EmitFailure { call: call.clone(), assert })?;
            }
            EmitOp::Patch(call) => {
                let (base, bytes) = image.region(call.section);
                let size = bytes.len() as u64;
                let location = base.wrapping_add(call.offset);
                let value = placement.value(&call.value, stencil);
                let fail = |message: String| EmitFailure {
                    call: call.clone(),
                    assert: PatchAssert { func: call.func, location, value, message, kind: Default::default() },
                };
                let width = call.func.width();
                if call.offset.checked_add(width).is_none_or(|end| end > size) {
                    return Err(fail(format!(
                        "{} writes {width} bytes at {}+{:#x}, past the end of {} ({size:#x} bytes)",
                        call.func, call.section, call.offset, call.section
                    )));
                }
                let result = if call.func.takes_state() {
                    let slot = match (&call.value.term, &placement.trace) {
                        (Term::Ordinal(n), Some(trace)) => trace.trampoline_slot(*n),
                        _ => None,
                    };
                    trampoline(patcher, call.func, &mut image, location, value, slot)
                } else {
                    patcher.patch(call.func, &mut image, location, value)
                };
                result.map_err(|assert| EmitFailure { call: call.clone(), assert })?;
            }
        }
    }
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Value;
    use crate::place::Layout;
    use std::collections::BTreeMap;

    const CODE: u64 = 0x5555_0000_1000;
    const DATA: u64 = CODE + 0x1000;

    fn image() -> Image {
        Image::new(CODE, vec![0xcc; 16], DATA, (0..16).collect())
    }

    #[test]
    fn image_reads_and_writes_by_absolute_address() {
        let mut im = image();
        assert_eq!(im.read(DATA + 2, 3), Some(&[2u8, 3, 4][..]));
        assert_eq!(im.read_u32(DATA), Some(0x0302_0100));
        assert_eq!(im.read_u64(DATA + 8), Some(0x0f0e_0d0c_0b0a_0908));
        assert_eq!(im.read(DATA + 14, 3), None);
        assert_eq!(im.read_u64(DATA + 9), None);
        assert_eq!(im.read_u32(CODE - 1), None);
        assert_eq!(im.read(CODE + 16, 0), Some(&[][..]));
        assert_eq!(im.write(CODE + 14, &[1, 2, 3]), None);
        assert_eq!(im.code[14], 0xcc, "a refused write writes nothing");
        assert_eq!(im.write(CODE + 14, &[1, 2]), Some(()));
        assert_eq!(im.region(Section::Code).1[14..], [1, 2]);
        assert_eq!(im.region(Section::Data).0, DATA);
        assert!(im.contains(DATA, 16) && !im.contains(DATA, 17));
    }

    #[test]
    fn image_values_may_straddle_adjacent_code_and_data() {
        let mut im = Image::new(CODE, vec![0; 4], CODE + 4, vec![0; 4]);
        assert_eq!(im.write(CODE + 2, &[1, 2, 3, 4]), Some(()));
        assert_eq!(im.read_u32(CODE + 2), Some(0x0403_0201));
        assert_eq!(im.read(CODE + 2, 4), None, "a slice cannot span two regions");
    }

    #[test]
    #[should_panic(expected = "overlap")]
    fn image_refuses_overlapping_regions() {
        Image::new(CODE, vec![0; 16], CODE + 8, vec![0; 16]);
    }

    #[test]
    fn image_near_the_top_of_the_address_space_does_not_wrap() {
        let mut im = Image::new(u64::MAX - 3, vec![0; 4], 0, vec![0; 4]);
        assert_eq!(im.read_u64(u64::MAX - 3), None);
        assert_eq!(im.write(u64::MAX, &[1, 2]), None);
        assert_eq!(im.read_u32(u64::MAX - 3), Some(0));
    }

    #[test]
    fn stale_bytes_are_deterministic_and_mixed() {
        let a = stale_bytes(7, CODE, 8 * 256);
        assert_eq!(a, stale_bytes(7, CODE, 8 * 256));
        assert_ne!(a, stale_bytes(8, CODE, 8 * 256));
        assert_eq!(stale_bytes(7, CODE, 13), a[..13]);
        let words: Vec<u64> = a.chunks(8).map(|w| u64::from_le_bytes(w.try_into().unwrap())).collect();
        let near = words.iter().filter(|w| w.abs_diff(CODE) <= 1 << 20).count();
        let zero = words.iter().filter(|w| **w == 0).count();
        assert!(near > 64 && zero > 32 && near + zero < 256, "near {near}, zero {zero}");
    }

    // -- emit ---------------------------------------------------------------

    const SYM_NEAR: u64 = CODE + 0x10_0000;
    const SYM_FAR: u64 = CODE + 0x1_0000_0000;

    fn patch(func: PatchFn, section: Section, offset: u64, term: Term, addend: i64) -> EmitOp {
        EmitOp::Patch(PatchCall { func, section, offset, value: Value::new(term, addend), line: 100 + offset as usize })
    }

    fn data_ops() -> Vec<EmitOp> {
        vec![
            EmitOp::CopyData { line: 10 },
            patch(PatchFn::P64, Section::Data, 0, Term::Symbol("sym".into()), 0),
            patch(PatchFn::P64, Section::Data, 8, Term::Continue, 0),
        ]
    }

    fn code_ops() -> Vec<EmitOp> {
        vec![
            EmitOp::CopyCode { line: 20 },
            patch(PatchFn::X86_64_32rx, Section::Code, 3, Term::Data, -4),
            patch(PatchFn::X86_64_32rx, Section::Code, 9, Term::Data, 4),
        ]
    }

    /// `mov rax, [rip+sym@GOTPCREL]; jmp [rip+_JIT_CONTINUE@GOTPCREL]`, ops in CPython's order.
    fn stencil(emit: Vec<EmitOp>) -> Stencil {
        Stencil {
            name: "_TEST".into(),
            line: 1,
            code: vec![0x48, 0x8b, 0x05, 0, 0, 0, 0, 0xff, 0x25, 0, 0, 0, 0],
            data: vec![0; 16],
            instructions: vec![],
            relocations: vec![],
            data_comments: vec![],
            emit,
            locals: Default::default(),
            ordinals: Default::default(),
            trampoline_mask: Vec::new(),
            got_mask: Vec::new(),
        }
    }

    fn placement(sym: u64, seed: u64) -> Placement {
        Placement {
            index: 0,
            layout: Layout::Compact,
            code: CODE,
            data: DATA,
            trace: None,
            executor: 0x6000_0000_0000,
            jump_target: CODE + 0x200,
            error_target: CODE + 0x300,
            top: CODE - 0x100,
            oparg: 3,
            operands: [0x1234, 0x5678],
            target: 9,
            exit_index: 1,
            externs: BTreeMap::from([("sym".to_string(), sym)]),
            frame: 0x7000_0000_0000,
            stack_pointer: 0x7000_0000_1000,
            tstate: 0x7000_0001_0000,
            machine_sp: 0x7fff_0000_0000,
            heap: 0x6100_0000_0000,
            heap_size: 0x10_0000,
            contents_seed: seed,
            symbols_readable: false,
            functions: Vec::new(),
        }
    }

    fn rel32(target: u64, next_pc: u64) -> [u8; 4] {
        (target.wrapping_sub(next_pc) as u32).to_le_bytes()
    }

    #[test]
    fn emit_relaxes_against_patched_data() {
        let st = stencil([data_ops(), code_ops()].concat());
        let im = emit(&st, &placement(SYM_NEAR, 1), &Ports).unwrap();
        let mut want = vec![0x48, 0x8d, 0x05];
        want.extend(rel32(SYM_NEAR, CODE + 7)); // lea rax, [rip + sym]
        want.extend([0x90, 0xe9]);
        want.extend(rel32(CODE + 13, CODE + 13)); // nop; jmp _JIT_CONTINUE
        assert_eq!(im.code, want);
        let mut data = SYM_NEAR.to_le_bytes().to_vec();
        data.extend((CODE + 13).to_le_bytes());
        assert_eq!(im.data, data);
    }

    #[test]
    fn emit_leaves_far_symbols_unrelaxed() {
        let st = stencil([data_ops(), code_ops()].concat());
        let im = emit(&st, &placement(SYM_FAR, 1), &Ports).unwrap();
        let mut want = vec![0x48, 0x8b, 0x05];
        want.extend(rel32(DATA, CODE + 7)); // mov rax, [rip + slot 0]
        want.extend([0x90, 0xe9]);
        want.extend(rel32(CODE + 13, CODE + 13));
        assert_eq!(im.code, want);
        assert_eq!(&want[3..7], &[0xf9, 0x0f, 0, 0]);
    }

    #[test]
    fn emit_with_code_patched_before_data_relaxes_against_stale_slots() {
        let good = stencil([data_ops(), code_ops()].concat());
        let swapped = stencil([code_ops(), data_ops()].concat());
        // Find a seed whose stale slot 0 holds an address near the code: the
        // swapped order then turns the far-symbol `mov` into a `lea` of that
        // stale address.
        let mut shown = false;
        let mut differing = 0;
        for seed in 0..64 {
            let p = placement(SYM_FAR, seed);
            let right = emit(&good, &p, &Ports).unwrap();
            let wrong = emit(&swapped, &p, &Ports).unwrap();
            assert_eq!(right.data, wrong.data, "data ends up the same either way");
            if right.code != wrong.code {
                differing += 1;
            }
            let stale = stale_image(&good, &p).read_u64(DATA).unwrap();
            if stale.abs_diff(CODE) <= 1 << 20 && !shown {
                assert_eq!(right.code[1], 0x8b, "seed {seed}: right order keeps the GOT load");
                assert_eq!(wrong.code[1], 0x8d, "seed {seed}: swapped order relaxes to lea");
                assert_eq!(wrong.code[3..7], rel32(stale, CODE + 7), "seed {seed}");
                assert_ne!(stale, SYM_FAR);
                shown = true;
            }
        }
        assert!(shown, "no seed put a near address in the stale slot");
        assert!(differing >= 32, "only {differing} of 64 seeds differ");
    }

    #[test]
    fn emit_without_copy_code_keeps_stale_code() {
        let st = stencil(data_ops());
        let p = placement(SYM_NEAR, 5);
        let im = emit(&st, &p, &Ports).unwrap();
        assert_eq!(im.code, stale_image(&st, &p).code);
        assert_ne!(im.code, st.code);
    }

    #[test]
    fn emit_refuses_a_patch_past_the_end_of_its_region() {
        let mut ops = [data_ops(), code_ops()].concat();
        ops.push(patch(PatchFn::P64, Section::Data, 0x9, Term::Zero, 0));
        let err = emit(&stencil(ops.clone()), &placement(SYM_NEAR, 1), &Ports).unwrap_err();
        assert_eq!(EmitOp::Patch(err.call.clone()), ops[6]);
        assert_eq!(err.assert.location, DATA + 9);
        let text = err.to_string();
        assert!(text.starts_with("line 109: patch_64(data + 0x9, 0x0)"), "{text}");
        assert!(text.contains("past the end of data"), "{text}");

        let mut ops = [data_ops(), code_ops()].concat();
        ops[5] = patch(PatchFn::X86_64_32rx, Section::Code, 10, Term::Data, 4);
        let err = emit(&stencil(ops), &placement(SYM_NEAR, 1), &Ports).unwrap_err();
        assert_eq!(err.call.offset, 10);
        assert!(err.to_string().contains("past the end of code (0xd bytes)"), "{err}");
    }

    #[test]
    fn emit_reports_a_firing_assert_with_its_call() {
        // Data 8 GiB away: the unrelaxed displacement cannot reach the slot.
        let mut p = placement(SYM_FAR, 1);
        p.data = CODE + 0x2_0000_0000;
        let st = stencil([data_ops(), code_ops()].concat());
        let err = emit(&st, &p, &Ports).unwrap_err();
        assert_eq!(err.call.line, 103);
        assert!(err.to_string().contains("out of signed 32-bit range"), "{err}");
    }
}
