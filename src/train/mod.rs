//! Shared training machinery: optimisers with weight-decay groups and global-norm clipping,
//! and learning-rate schedules (checkpoints are the run engine's, `crate::run::State`).

pub mod optim;
pub mod schedule;

pub use optim::{OptimConfig, OptimKind, Optimizer, StepStats};
pub use schedule::{Schedule, ScheduleKind};

/// Backpropagates `loss` and applies one optimiser update (clipping and schedule included).
pub fn backward_step(
    loss: &candle_core::Tensor,
    opt: &mut Optimizer,
) -> anyhow::Result<optim::StepStats> {
    let grads = loss.backward()?;
    opt.step(&grads)
}
