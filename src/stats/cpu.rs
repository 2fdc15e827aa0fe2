//! CPU time accounting: read with getrusage at workspace transitions, every 100 ms of activity
//! and at backend exit, and added to the workspace that used it.

use super::*;

// CPU time of top-level statements. A getrusage() call costs ~0.85 us here (a system call; CPU
// clocks have no vDSO fast path), as much as the rest of the hooks together, so the clock is read
// at transitions only, not per statement: CPU accrues to a *pending* workspace, the one whose
// statements run at top level, and is added to its entry when another workspace (or none: no
// context, a utility statement) takes over, at most CPU_FLUSH_US after the last reading at the end
// of a statement, and when the backend exits. A backend that keeps running statements for one
// workspace thus reads the clock ten times a second, not per statement, and the totals stay exact:
// all CPU between two readings belongs to the pending workspace (receiving, parsing and binding
// its statements included; idle time costs no CPU). What a backend spent in its last
// CPU_FLUSH_US shows once it runs its next statement or exits.
pub(super) const CPU_FLUSH_US: i64 = 100_000;

#[derive(Default)]
pub(super) struct Cpu {
    /// getrusage() total (ns) at the last reading.
    last_ns: u64,
    /// Wall clock (us) of the last reading.
    last_at_us: i64,
    /// The workspace the CPU since the last reading belongs to; None: untracked.
    pending: Option<[u8; 16]>,
    exit_registered: bool,
}

pub(super) static CPU: BackendLocal<Cpu> = BackendLocal::new(Cpu {
    last_ns: 0,
    last_at_us: 0,
    pending: None,
    exit_registered: false,
});

/// Read the clock, add what was used since the last reading to the pending workspace.
pub(super) fn cpu_read(cpu: &mut Cpu) {
    let now = now_ns();
    // SAFETY: plain clock read (vDSO).
    let now_us = unsafe { raw::now() };
    if let Some(ws) = cpu.pending {
        let used = now.saturating_sub(cpu.last_ns);
        record_at(ws, now_us, Create::Limited, |e| {
            e.cpu_ns.fetch_add(used, Relaxed);
        });
    }
    cpu.last_ns = now;
    cpu.last_at_us = now_us;
}

/// A top-level statement starts for `ws` (None: untracked, or a utility statement).
pub(super) fn cpu_enter(ws: Option<&[u8; 16]>) {
    CPU.with(|c| {
        let mut cpu = c.borrow_mut();
        if cpu.pending.as_ref() == ws {
            return; // same workspace, or still none: nothing to read
        }
        cpu_read(&mut cpu);
        cpu.pending = ws.copied();
        if ws.is_some() && !std::mem::replace(&mut cpu.exit_registered, true) {
            // SAFETY: registering a 'static callback for this backend's exit.
            unsafe { pg_sys::before_shmem_exit(Some(cpu_at_exit), pg_sys::Datum::from(0)) };
        }
    })
}

/// A tracked top-level statement ended at `now_us`: read the clock if the last reading is old.
pub(super) fn cpu_tick(now_us: i64) {
    CPU.with(|c| {
        let mut cpu = c.borrow_mut();
        if now_us - cpu.last_at_us >= CPU_FLUSH_US {
            cpu_read(&mut cpu);
        }
    })
}

/// Backend exit: account what the pending workspace used since the last reading.
#[pg_guard]
pub(super) unsafe extern "C-unwind" fn cpu_at_exit(_code: c_int, _arg: pg_sys::Datum) {
    CPU.with(|c| {
        let mut cpu = c.borrow_mut();
        if cpu.pending.is_some() {
            cpu_read(&mut cpu);
            cpu.pending = None;
        }
    })
}

pub(super) fn now_ns() -> u64 {
    // SAFETY: getrusage of the calling process into a zeroed struct.
    let mut ru: libc_rusage = unsafe { std::mem::zeroed() };
    unsafe { getrusage(0, &mut ru) };
    let tv = |s: i64, us: i64| (s as u64) * 1_000_000_000 + (us as u64) * 1_000;
    tv(ru.utime_s, ru.utime_us) + tv(ru.stime_s, ru.stime_us)
}

#[repr(C)]
pub(super) struct libc_rusage {
    utime_s: i64,
    utime_us: i64,
    stime_s: i64,
    stime_us: i64,
    _rest: [i64; 14],
}
extern "C" {
    fn getrusage(who: c_int, usage: *mut libc_rusage) -> c_int;
}
