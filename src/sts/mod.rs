//! Sparse token selection (Wang, Wei, Hsu, Lee, ICML 2024; the q-sparse averaging task of
//! Sanford, Hsu, Telgarsky 2023): task, exact models, theory, training.
//!
//! | file | holds |
//! | --- | --- |
//! | `task.rs` | the task, its encodings and the size limits |
//! | `seeds.rs` | every random stream, named |
//! | `model.rs`, `model_candle.rs` | the exact transformer (analytic gradient) and its candle twin |
//! | `kernel.rs` | the gradient's per-example loop, on SIMD lanes |
//! | `fcn.rs` | the FCN baseline and its trainer |
//! | `theory.rs` | predictions and bounds |
//! | `config.rs` | the run and figure configs |
//! | `train.rs` | the transformer's trainer on the run engine, the divergence rule |
//! | `experiments.rs` | the runs a study needs (shared by figures and tests) |
//! | `figures.rs`, `cli.rs`, `bench.rs` | charts, the command line, the benchmark |

pub mod bench;
pub mod claims;
mod claims_figures;
pub mod cli;
pub mod config;
pub mod experiments;
pub mod fcn;
pub mod figures;
mod kernel;
pub mod model;
pub mod model_candle;
pub mod seeds;
pub mod task;
pub mod theory;
pub mod train;
