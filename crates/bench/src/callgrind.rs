//! Callgrind client requests, so the gate workload can mark exactly which instructions
//! belong to which stage.
//!
//! A client request is a magic instruction sequence that does nothing on a real CPU (four
//! rotations of `rdi` by 128 bits in total, then `xchg rbx, rbx`) and that valgrind
//! recognizes and answers. The request codes come from valgrind's `callgrind.h`. Outside
//! valgrind, or on targets other than x86-64, every function here is a no-op.

use std::ffi::CStr;

/// `VG_USERREQ_TOOL_BASE('C','T')`: callgrind's first request code.
const CALLGRIND_BASE: usize = ((b'C' as usize) << 24) | ((b'T' as usize) << 16);
const ZERO_STATS: usize = CALLGRIND_BASE + 1;
const DUMP_STATS_AT: usize = CALLGRIND_BASE + 3;
const START_INSTRUMENTATION: usize = CALLGRIND_BASE + 4;
const STOP_INSTRUMENTATION: usize = CALLGRIND_BASE + 5;
/// `VG_USERREQ__RUNNING_ON_VALGRIND` (core request).
const RUNNING_ON_VALGRIND: usize = 0x1001;

#[cfg(target_arch = "x86_64")]
fn client_request(default: usize, request: usize, arg1: usize) -> usize {
    let args: [usize; 6] = [request, arg1, 0, 0, 0, 0];
    let mut result = default;
    // SAFETY: the sequence only rotates rdi by a multiple of 64 bits in total (leaving it
    // unchanged) and exchanges rbx with itself; valgrind reads `args` through rax and writes
    // the answer to rdx. `args` outlives the asm block. Flags are clobbered (the default).
    unsafe {
        std::arch::asm!(
            "rol rdi, 3",
            "rol rdi, 13",
            "rol rdi, 61",
            "rol rdi, 51",
            "xchg rbx, rbx",
            inout("rdx") result,
            in("rax") args.as_ptr(),
            inout("rdi") 0usize => _,
            options(nostack),
        );
    }
    result
}

#[cfg(not(target_arch = "x86_64"))]
fn client_request(default: usize, _request: usize, _arg1: usize) -> usize {
    default
}

/// True when the process runs under valgrind.
pub fn running_on_valgrind() -> bool {
    client_request(0, RUNNING_ON_VALGRIND, 0) != 0
}

/// Turns instrumentation on (for runs started with `--instr-atstart=no`): code before this
/// runs without callgrind's cost (setup stays cheap) and is not counted.
pub fn start_instrumentation() {
    client_request(0, START_INSTRUMENTATION, 0);
}

/// Turns instrumentation off again.
pub fn stop_instrumentation() {
    client_request(0, STOP_INSTRUMENTATION, 0);
}

/// Zeroes every thread's counters: what follows is counted from nothing.
pub fn zero_stats() {
    client_request(0, ZERO_STATS, 0);
}

/// Writes the counters since the last zero or dump to a new profile whose trigger names
/// `label`, and zeroes them.
pub fn dump_stats_at(label: &CStr) {
    client_request(0, DUMP_STATS_AT, label.as_ptr() as usize);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_harmless_outside_valgrind() {
        // The test binary runs natively: every request returns its default and does nothing.
        if running_on_valgrind() {
            return;
        }
        zero_stats();
        start_instrumentation();
        dump_stats_at(c"test");
        stop_instrumentation();
        assert!(!running_on_valgrind());
    }
}
