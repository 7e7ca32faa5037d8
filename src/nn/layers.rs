//! Small building layers: a linear map on `(.., in)` tensors, LayerNorm, a depthwise 1-D
//! convolution over time, and dropout drawn from a seeded generator.

use crate::nn::ops;
use crate::rng::Rng;
use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};
use rand::Rng as _;

/// `y = x W^T + b` on `(.., in) -> (.., out)`. The leading dims are folded into one GEMM row
/// dimension, which is one large matmul instead of candle-nn's batched broadcast matmul.
#[derive(Clone, Debug)]
pub struct Linear {
    /// `(out, in)`.
    pub w: Tensor,
    /// `(out,)`.
    pub b: Option<Tensor>,
}

impl Linear {
    /// Weight `w` (normal init, reset by [`crate::nn::init_params`]) and optional bias `b` (zeros).
    pub fn new(d_in: usize, d_out: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let w = vb.get_with_hints((d_out, d_in), "w", Init::Const(0.0))?;
        let b = if bias {
            Some(vb.get_with_hints(d_out, "b", Init::Const(0.0))?)
        } else {
            None
        };
        Ok(Self { w, b })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(b) = &self.b {
            if crate::nn::fused::supported(x) {
                return crate::nn::fused::linear(x, &self.w, b);
            }
        }
        let dims = x.dims().to_vec();
        let d_in = dims[dims.len() - 1];
        let rows = x.elem_count() / d_in.max(1);
        let y = x.reshape((rows, d_in))?.matmul(&self.w.t()?)?;
        let y = match &self.b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out = dims;
        let last = out.len() - 1;
        out[last] = self.w.dim(0)?;
        y.reshape(out)
    }
}

/// LayerNorm over the last dimension with gain `gamma` (ones) and shift `beta` (zeros).
#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub gamma: Tensor,
    pub beta: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(d: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            gamma: vb.get_with_hints(d, "gamma", Init::Const(1.0))?,
            beta: vb.get_with_hints(d, "beta", Init::Const(0.0))?,
            eps,
        })
    }

    /// `(.., d) -> (.., d)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::layer_norm(x, &self.gamma, &self.beta, self.eps)
    }
}

/// Depthwise convolution over the token axis: `y[t, c] = sum_j w[c, j] x[t + j - left, c]`.
/// Causal (`left = k - 1`) in a decoder so no position sees the future; centred otherwise.
/// Initialised to the identity (only the tap on the current position is 1).
#[derive(Clone, Debug)]
pub struct DepthwiseConv {
    /// `(channels, k)`.
    pub w: Tensor,
    pub left: usize,
}

impl DepthwiseConv {
    pub fn new(channels: usize, k: usize, causal: bool, vb: VarBuilder) -> Result<Self> {
        let w = vb.get_with_hints((channels, k), "w", Init::Const(0.0))?;
        let left = if causal { k - 1 } else { (k - 1) / 2 };
        Ok(Self { w, left })
    }

    /// `(batch, T, channels) -> (batch, T, channels)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, t, c) = x.dims3()?;
        let k = self.w.dim(1)?;
        let xp = x.pad_with_zeros(1, self.left, k - 1 - self.left)?;
        let mut y: Option<Tensor> = None;
        for j in 0..k {
            let tap = self.w.narrow(1, j, 1)?.reshape((1, 1, c))?;
            let term = xp.narrow(1, j, t)?.broadcast_mul(&tap)?;
            y = Some(match y {
                None => term,
                Some(y) => (y + term)?,
            });
        }
        Ok(y.expect("k >= 1"))
    }
}

/// Inverted dropout: zeroes each entry with probability `p` and scales the rest by `1/(1-p)`.
/// The mask comes from `rng`, so a run is reproducible and resumable; identity when `rng` is
/// `None` (evaluation) or `p == 0`.
pub fn dropout(x: &Tensor, p: f64, rng: Option<&mut Rng>) -> Result<Tensor> {
    let rng = match rng {
        Some(r) if p > 0.0 => r,
        _ => return Ok(x.clone()),
    };
    let keep = 1.0 / (1.0 - p);
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|_| {
            if rng.gen::<f64>() < p {
                0.0
            } else {
                keep as f32
            }
        })
        .collect();
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    x.mul(&mask)
}
