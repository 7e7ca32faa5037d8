//! Shared training machinery: optimisers with weight-decay groups and global-norm clipping,
//! learning-rate schedules, and atomic, resumable safetensors checkpoints.

pub mod checkpoint;
pub mod optim;
pub mod schedule;

pub use checkpoint::{load_checkpoint, save_checkpoint, Resumed};
pub use optim::{OptimConfig, OptimKind, Optimizer};
pub use schedule::Schedule;

/// Backpropagates `loss` and applies one optimiser update (clipping and schedule included).
pub fn backward_step(
    loss: &candle_core::Tensor,
    opt: &mut Optimizer,
) -> anyhow::Result<optim::StepStats> {
    let grads = loss.backward()?;
    opt.step(&grads)
}
