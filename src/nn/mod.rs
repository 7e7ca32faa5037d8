//! Transformer toolkit on candle: encoder/decoder stacks from one block type, pluggable
//! (learned or fixed-pattern) heads, attention capture, caller masks, fused CPU kernels, an exact
//! FLOP counter and the `attnlab bench` comparison against PyTorch.
//!
//! Typical use:
//! ```no_run
//! use attnlab::nn::{Transformer, TransformerConfig, ForwardOpts};
//! let cfg = TransformerConfig { causal: true, ..Default::default() };
//! let dev = attnlab::nn::device().unwrap();
//! let (model, varmap) = Transformer::build(&cfg, 0, candle_core::DType::F32, &dev).unwrap();
//! let tokens = candle_core::Tensor::zeros((2, 8), candle_core::DType::U32, &dev).unwrap();
//! let out = model.forward_with(&tokens, ForwardOpts { capture_attention: true, ..Default::default() }).unwrap();
//! assert_eq!(out.attention.len(), cfg.n_layers);
//! ```

pub mod attention;
pub mod bench;
pub mod blas;
pub mod block;
pub mod config;
pub mod flops;
pub mod fused;
pub mod fused_block;
pub mod layers;
pub mod ops;
pub mod stack;

pub use config::{Activation, NormPlacement, Positions, TransformerConfig};
pub use flops::FlopCount;
pub use stack::{init_params, num_params, AttnMask, ForwardOpts, ForwardOutput, Transformer};

use candle_core::{DType, Device, Tensor, D};

/// Stops glibc from returning freed activation buffers to the kernel after every op.
///
/// Each training step allocates and frees the same multi-megabyte buffers; with glibc's defaults
/// large frees are unmapped or trimmed and the next step page-faults them back in, zero-filled
/// (19% of a LEGO-sized step was kernel time). Raising the mmap and trim thresholds keeps them in
/// the heap for reuse. Called by [`Transformer::build`]; idempotent; a no-op off glibc.
pub fn tune_allocator() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only adjusts allocator parameters; no memory is touched.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
            libc::mallopt(libc::M_TOP_PAD, 64 << 20);
        }
    });
}

/// Keeps candle's own elementwise thread pool to the calling thread, unless `CANDLE_NUM_THREADS`
/// is set.
///
/// candle 0.11 runs large elementwise ops (here mostly the gradient sums of its backward pass)
/// on a pool of extra threads that spin for about a millisecond after each op, and the caller
/// spins until they finish. Beside rayon's workers (the fused kernels, OpenBLAS row blocks) that
/// is more spinning threads than cores: on the 2-core benchmark machine the decoder spent a
/// quarter of its time in that wait, and any other process on the machine made it worse. With
/// no pool threads those ops run inline. It must run before candle's first large elementwise
/// op (the pool is built once); called by [`Transformer::build`] and `attnlab bench`; idempotent.
pub fn tune_candle_threads() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
            std::env::set_var("CANDLE_NUM_THREADS", "1");
        }
    });
}

/// The device models run on: CUDA device 0 with the `cuda` feature, else the CPU.
pub fn device() -> anyhow::Result<Device> {
    #[cfg(feature = "cuda")]
    {
        Ok(Device::new_cuda(0)?)
    }
    #[cfg(not(feature = "cuda"))]
    {
        Ok(Device::Cpu)
    }
}

/// Mean cross-entropy of `logits (batch, T, C)` against `targets (batch, T)`, over the positions
/// where `weights (batch, T)` is nonzero (weighted mean), or over all positions when `None`.
pub fn cross_entropy(
    logits: &Tensor,
    targets: &Tensor,
    weights: Option<&Tensor>,
) -> anyhow::Result<Tensor> {
    let (b, t, c) = logits.dims3()?;
    if targets.dims() != [b, t] {
        anyhow::bail!(
            "`targets` has shape {:?}, expected (batch, T) = ({b}, {t})",
            targets.dims()
        );
    }
    let lp = ops::log_softmax_last_dim(&logits.reshape((b * t, c))?)?;
    let idx = targets
        .to_dtype(DType::U32)?
        .reshape((b * t, 1))?
        .contiguous()?;
    let nll = lp.gather(&idx, D::Minus1)?.reshape(b * t)?.neg()?;
    Ok(match weights {
        None => nll.mean_all()?,
        Some(w) => {
            if w.dims() != [b, t] {
                anyhow::bail!(
                    "`weights` has shape {:?}, expected (batch, T) = ({b}, {t})",
                    w.dims()
                );
            }
            let w = w.to_dtype(logits.dtype())?.reshape(b * t)?;
            let total = w.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            if total <= 0.0 {
                anyhow::bail!("`weights` sum to {total}: at least one position must count");
            }
            (nll.mul(&w)?.sum_all()? / total)?
        }
    })
}

/// Fraction of positions where `argmax(logits)` equals `targets` (weighted like [`cross_entropy`]).
pub fn accuracy(
    logits: &Tensor,
    targets: &Tensor,
    weights: Option<&Tensor>,
) -> anyhow::Result<f64> {
    let pred = logits.argmax(D::Minus1)?;
    let hit = pred
        .eq(&targets.to_dtype(DType::U32)?)?
        .to_dtype(DType::F64)?;
    Ok(match weights {
        None => hit.mean_all()?.to_scalar::<f64>()?,
        Some(w) => {
            let w = w.to_dtype(DType::F64)?;
            (hit.mul(&w)?.sum_all()?.to_scalar::<f64>()?) / w.sum_all()?.to_scalar::<f64>()?
        }
    })
}
