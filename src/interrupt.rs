//! Ctrl-C as a request, not a kill: runs poll [`requested`], save their state and exit 130, so
//! nothing is lost and the same command resumes.
//!
//! Signals often come in pairs (a terminal and a wrapper such as `timeout` both forward one), so
//! the second never kills the process: only a third, and only while no checkpoint is being
//! written ([`saving`]), quits at once.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Once;

static SIGNALS: AtomicU32 = AtomicU32::new(0);
static SAVING: AtomicU32 = AtomicU32::new(0);
static FORCED: AtomicBool = AtomicBool::new(false);

/// Installs the handler (once).
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = ctrlc::set_handler(|| {
            let n = SIGNALS.fetch_add(1, Ordering::SeqCst) + 1;
            if n == 1 {
                eprintln!("\ninterrupt: saving state, then stopping");
            } else if SAVING.load(Ordering::SeqCst) > 0 {
                eprintln!("interrupt: still writing the checkpoint; stopping when it is written");
            } else if n >= 3 && !FORCED.swap(true, Ordering::SeqCst) {
                eprintln!("interrupt: quitting without saving");
                std::process::exit(130);
            }
        });
    });
}

/// True once Ctrl-C was pressed.
pub fn requested() -> bool {
    SIGNALS.load(Ordering::SeqCst) > 0
}

/// Marks a checkpoint write in progress until the guard is dropped: no signal ends the process
/// in between.
pub fn saving() -> SavingGuard {
    SAVING.fetch_add(1, Ordering::SeqCst);
    SavingGuard
}

/// See [`saving`].
pub struct SavingGuard;

impl Drop for SavingGuard {
    fn drop(&mut self) {
        SAVING.fetch_sub(1, Ordering::SeqCst);
    }
}
