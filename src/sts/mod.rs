//! Sparse token selection (Wang, Wei, Hsu, Lee, ICML 2024; the q-sparse averaging task of
//! Sanford, Hsu, Telgarsky 2023): task, exact models, theory, training.

pub mod bench;
pub mod cli;
pub mod fcn;
pub mod figures;
pub mod model;
pub mod model_candle;
pub mod task;
pub mod theory;
pub mod train;
