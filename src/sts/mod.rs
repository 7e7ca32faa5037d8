//! Sparse token selection (Wang, Wei, Hsu, Lee, ICML 2024; the q-sparse averaging task of
//! Sanford, Hsu, Telgarsky 2023): task, exact models, theory, training.

pub mod cli;
