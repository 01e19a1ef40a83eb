//! SIGINT and SIGTERM during `finetune`. The first one asks the run to stop between two steps
//! (a checkpoint being written is finished first); the run then ends with an error naming the
//! step and the checkpoint to `--resume` from, and the process exits 128 + the signal's number.
//! A second one ends the process at once: an atomic write in flight is abandoned (its temporary
//! file is left, the previous checkpoint stays whole), as after `kill -9`.

use anyhow::{Context, Result};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// Set by the first SIGINT or SIGTERM.
pub static STOP: AtomicBool = AtomicBool::new(false);
/// The signal that set [`STOP`].
static SIGNAL: AtomicI32 = AtomicI32::new(0);

/// Installs the handlers (once per process).
#[allow(unsafe_code)]
pub fn install() -> Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let action = move || {
            // The signal first, so that whoever sees STOP also sees which one.
            let first = SIGNAL
                .compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok();
            if !first || STOP.swap(true, Ordering::SeqCst) {
                // SAFETY: `_exit` is async-signal-safe and ends the process without running
                // anything else.
                unsafe { libc::_exit(128 + signal) };
            }
        };
        // SAFETY: the action only touches atomics and calls `_exit`, all async-signal-safe; it
        // allocates nothing and takes no lock.
        unsafe { signal_hook_registry::register(signal, action) }
            .with_context(|| format!("cannot install a handler for signal {signal}"))?;
    }
    Ok(())
}

/// The exit status after a stop the signal asked for: 128 + its number (130 for SIGINT).
pub fn exit_status() -> u8 {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => 130,
        s => u8::try_from(128 + s).unwrap_or(130),
    }
}
