//! The worker's seccomp filter: a system call made from anywhere but the
//! worker's own code (its executable, libc, the vDSO) never reaches the
//! kernel; it raises `SIGSYS` instead, which ends the run natively.
//!
//! Stencil code is never mapped where the worker's code is (placements
//! that collide are refused), so a `syscall` a stencil reaches, by any
//! path the plan did not foresee, is caught here. Hand-written classic BPF:
//! one range test per executable mapping of the worker, read from
//! `/proc/self/maps` once, when the filter is installed.

use libc::{sock_filter, sock_fprog};

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const PR_SET_NO_NEW_PRIVS: libc::c_int = 38;
const PR_SET_SECCOMP: libc::c_int = 22;
const SECCOMP_MODE_FILTER: libc::c_ulong = 2;
/// `struct seccomp_data`: arch at 4, instruction pointer at 8 (low word) and 12 (high).
const ARCH: u32 = 4;
const IP_LOW: u32 = 8;
const IP_HIGH: u32 = 12;

const LD_ABS_W: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JGE: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const JGT: u16 = (libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K) as u16;
const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

fn op(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// Executable mappings of this process (start, end).
fn executable_ranges() -> Vec<(u64, u64)> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    maps.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let (range, perms) = (words.next()?, words.next()?);
            if !perms.contains('x') {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            Some((u64::from_str_radix(start, 16).ok()?, u64::from_str_radix(end, 16).ok()?))
        })
        .collect()
}

/// Ranges split where the high word of the address changes, so each is
/// tested on one high word and a low-word interval.
fn split_at_4g(ranges: &[(u64, u64)]) -> Vec<(u32, u32, u32)> {
    let mut out = Vec::new();
    for &(start, end) in ranges {
        let mut s = start;
        while s < end {
            let high = s >> 32;
            let last = (end - 1).min((high << 32) | 0xffff_ffff);
            out.push((high as u32, s as u32, last as u32));
            s = last + 1;
        }
    }
    out
}

/// The filter program: allow a call whose instruction pointer lies in one of `ranges`, trap the rest.
fn program(ranges: &[(u64, u64)]) -> Vec<sock_filter> {
    let mut prog =
        vec![op(LD_ABS_W, ARCH, 0, 0), op(JEQ, AUDIT_ARCH_X86_64, 1, 0), op(RET, libc::SECCOMP_RET_KILL_PROCESS, 0, 0)];
    for (high, low, last) in split_at_4g(ranges) {
        prog.extend([
            op(LD_ABS_W, IP_HIGH, 0, 0),
            op(JEQ, high, 0, 4),
            op(LD_ABS_W, IP_LOW, 0, 0),
            op(JGE, low, 0, 2),
            op(JGT, last, 1, 0),
            op(RET, libc::SECCOMP_RET_ALLOW, 0, 0),
        ]);
    }
    prog.push(op(RET, libc::SECCOMP_RET_TRAP, 0, 0));
    prog
}

/// Install the filter on this (the worker's) process.
pub fn install() -> Result<(), ()> {
    let prog = program(&executable_ranges());
    let fprog = sock_fprog { len: prog.len() as u16, filter: prog.as_ptr() as *mut sock_filter };
    // SAFETY: prctl with a filter program that outlives the call (the
    // kernel copies it).
    unsafe {
        if libc::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(());
        }
        if libc::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &fprog as *const sock_fprog) != 0 {
            return Err(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_split_where_the_high_word_changes() {
        let split = split_at_4g(&[(0x1_ffff_f000, 0x2_0000_2000), (0x5000, 0x6000)]);
        assert_eq!(split, vec![(1, 0xffff_f000, 0xffff_ffff), (2, 0, 0x1fff), (0, 0x5000, 0x5fff)]);
    }

    #[test]
    fn the_program_ends_in_a_trap() {
        let prog = program(&[(0x1000, 0x2000)]);
        assert_eq!(prog.len(), 3 + 6 + 1);
        assert_eq!(prog.last().unwrap().k, libc::SECCOMP_RET_TRAP);
    }
}
