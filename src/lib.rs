//! attnlab: trains exact transformer models and checks what they do against what the papers predict.
//!
//! One folder per paper, each holding its task, models, theory and experiments:
//! - [`sts`]: sparse token selection (Wang, Wei, Hsu, Lee, ICML 2024).
//! - [`lego`]: the LEGO reasoning task (Zhang et al. 2022).
//! - [`grokking`]: structural grokking (Murty et al., ACL 2023).
//!
//! Shared machinery beside them: [`nn`] (transformer blocks on candle), [`train`] (optimisers,
//! schedules), [`run`] (the engine every training run goes through), [`plot`], [`config`], [`io`], [`rng`], [`figures`].

pub mod config;
pub mod figures;
pub mod grokking;
pub mod interrupt;
pub mod io;
pub mod lego;
pub mod nn;
pub mod plot;
pub mod progress;
pub mod rng;
pub mod run;
pub mod sts;
pub mod train;
pub mod verify;
