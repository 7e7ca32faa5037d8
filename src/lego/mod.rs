//! LEGO reasoning task (Zhang, Backurs, Bubeck, Eldan, Gunasekar, Wagner 2022): the task, its
//! variants, head scores, FLOP counts, and training the models of the replication.
//!
//! - [`task`]: LEGO sentences, labels, clause order and batches.
//! - [`variants`]: task variants for the shortcut study.
//! - [`heads`]: association and locality scores of attention maps, mimicking targets, KL.
//! - [`flops`]: exact FLOP counts of encoders with LEGO fixed heads.
//! - [`program`]: a straight-line program-execution task (the convolution study).
//! - [`config`]: experiment configs under `experiments/lego/`.
//! - [`train`]: training LEGO models (BCE at the query positions, mimicking, fixed heads).
//! - [`experiments`]: running an experiment file; [`figures`]: figure tables.
//! - [`cli`]: `attnlab lego ...` and `attnlab program ...`.

pub mod cli;
pub mod config;
pub mod experiments;
pub mod figures;
pub mod flops;
pub mod heads;
pub mod program;
pub mod task;
pub mod train;
pub mod variants;
