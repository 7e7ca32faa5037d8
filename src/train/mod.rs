//! Shared training machinery: optimisers with weight-decay groups and global-norm clipping,
//! learning-rate schedules, and atomic, resumable safetensors checkpoints.

pub mod checkpoint;
pub mod optim;
pub mod schedule;

pub use checkpoint::{load_checkpoint, save_checkpoint, Resumed};
pub use optim::{OptimConfig, OptimKind, Optimizer};
pub use schedule::Schedule;
