//! attnlab: trains exact transformer models and checks what they do against what the papers predict.
//!
//! One folder per paper, each holding its task, models, theory and experiments:
//! - [`sts`]: sparse token selection (Wang, Wei, Hsu, Lee, ICML 2024).
//! - [`lego`]: the LEGO reasoning task (Zhang et al. 2022).
//! - [`grokking`]: structural grokking (Murty et al., ACL 2023).
//!
//! Shared machinery beside them: [`nn`] (transformer blocks on candle), [`train`] (optimisers,
//! schedules, checkpoints), [`plot`], [`config`], [`io`], [`rng`], [`figures`].

pub mod config;
pub mod figures;
pub mod grokking;
pub mod interrupt;
pub mod io;
pub mod lego;
// Workaround until the toolkit branch fixes these lints in src/nn (config.rs:148, fused.rs:376,477);
// scoped to the module so the rest of the crate stays under -D warnings.
#[allow(clippy::manual_is_multiple_of, clippy::redundant_locals)]
pub mod nn;
pub mod plot;
pub mod progress;
pub mod rng;
pub mod sts;
pub mod train;
