//! LEGO reasoning task (Zhang, Backurs, Bubeck, Eldan, Gunasekar, Wagner 2022): the task, its
//! variants, the models and their training, head scores, FLOP counts, and the figures.
//!
//! - [`task`]: LEGO sentences, labels, clause order and batches; [`variants`]: task variants
//!   for the shortcut study; [`program`]: a straight-line program-execution task (the
//!   convolution study).
//! - [`model`]: the LEGO encoder on the `nn` toolkit, its losses and fixed-head patterns.
//! - [`measure`]: association and locality scores of attention maps, mimicking targets, KL;
//!   [`flops`]: exact FLOP counts of encoders with LEGO fixed heads.
//! - [`train`]: the LEGO and mimicking trainers on the run engine; [`program_train`]: the
//!   program trainer; [`text_pretrain`]: masked-LM pretraining on English text and its
//!   transfer into the LEGO model; [`epochs`]: the epochs and divergence rule they share; [`seeds`]: every
//!   random stream of a run.
//! - [`config`]: experiment configs under `experiments/lego/`, [`validate`]: their range
//!   checks; [`experiments`]: running an experiment file; [`figures`] and [`charts`]: its
//!   figures in `attnlab figures`.
//! - [`cli`]: `attnlab lego ...` and `attnlab program ...`.

pub mod charts;
pub mod claims;
pub mod cli;
pub mod config;
pub mod epochs;
pub mod experiments;
pub mod figures;
pub mod flops;
pub mod measure;
pub mod model;
pub mod program;
pub mod program_train;
pub mod seeds;
pub mod task;
pub mod text_pretrain;
pub mod train;
pub mod validate;
pub mod variants;
