//! How a run ends badly, and the exit code each ending maps to: 1 when the run failed
//! (divergence, a damaged checkpoint, an error while training), 130 when it was interrupted and
//! saved, 2 for everything else (bad usage or config, detected before any training).

use std::path::PathBuf;

/// Ctrl-C stopped the run after its state was saved.
#[derive(Debug)]
pub struct Interrupted {
    /// Optimiser updates done when it stopped.
    pub step: u64,
    /// Where the state went (`None` for a run without a directory, which keeps nothing).
    pub checkpoint: Option<PathBuf>,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.checkpoint {
            Some(p) => write!(
                f,
                "interrupted after step {}; state saved to `{}`: rerun the same command to resume",
                self.step,
                p.display()
            ),
            None => write!(
                f,
                "interrupted after step {} (the run has no directory, so nothing was saved)",
                self.step
            ),
        }
    }
}

impl std::error::Error for Interrupted {}

/// The run started but could not finish: it diverged, its checkpoint is damaged, or training
/// raised an error. The message says what and where.
#[derive(Debug)]
pub struct RunFailed(pub String);

impl std::fmt::Display for RunFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RunFailed {}

/// A new [`RunFailed`] error.
pub fn failed(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(RunFailed(msg.into()))
}

/// The process exit code for `e`: 130 interrupted, 1 failed, 2 otherwise (usage or config).
pub fn exit_code(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<Interrupted>().is_some() {
        130
    } else if e.downcast_ref::<RunFailed>().is_some() {
        1
    } else {
        2
    }
}
