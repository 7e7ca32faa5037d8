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
//! - [`program_train`]: training program-execution models (plain vs convolutional q/k/v).
//! - [`experiments`]: running an experiment file; [`figures`]: its figures in `attnlab figures`.
//! - [`cli`]: `attnlab lego ...` and `attnlab program ...`.

pub mod cli;
pub mod config;
pub mod experiments;
pub mod figures;
pub mod flops;
pub mod heads;
pub mod program;
pub mod program_train;
pub mod task;
pub mod train;
pub mod variants;
