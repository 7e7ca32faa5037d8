//! The exact STS transformer written with candle tensors, differentiated by candle's autograd.
//!
//! Same function as [`super::model::ExactTransformer`]: scores `a = Z (W^T z_0)` with
//! `Z = [X, P]` `(batch, T, D)`, `alpha = softmax(a)`, `f = alpha^T X`, loss `mean ||f - t||^2`.
//! It exists to check the hand-derived gradient and to measure what autograd costs.

use super::task::Batch;
use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var, D};
use ndarray::Array2;

/// A batch as candle tensors.
pub struct BatchTensors {
    /// `(batch, T, D)`: tokens and encodings side by side.
    pub z: Tensor,
    /// `(batch, T, d)`.
    pub x: Tensor,
    /// `(batch, d_e)`.
    pub s: Tensor,
    /// `(batch, d)`.
    pub target: Tensor,
}

fn tensor3(a: &ndarray::Array3<f64>, dtype: DType, dev: &Device) -> Result<Tensor> {
    let (b, t, k) = a.dim();
    Ok(Tensor::from_iter(a.iter().copied(), dev)?
        .reshape((b, t, k))?
        .to_dtype(dtype)?)
}

pub fn tensor2(a: &Array2<f64>, dtype: DType, dev: &Device) -> Result<Tensor> {
    Ok(Tensor::from_iter(a.iter().copied(), dev)?
        .reshape(a.dim())?
        .to_dtype(dtype)?)
}

pub fn array2(t: &Tensor) -> Result<Array2<f64>> {
    let (r, c) = t.dims2()?;
    Ok(Array2::from_shape_vec(
        (r, c),
        t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?,
    )?)
}

impl BatchTensors {
    pub fn new(b: &Batch, dtype: DType, dev: &Device) -> Result<Self> {
        let x = tensor3(&b.x, dtype, dev)?;
        let p = tensor3(&b.p, dtype, dev)?;
        Ok(Self {
            z: Tensor::cat(&[&x, &p], 2)?,
            x,
            s: tensor2(&b.s, dtype, dev)?,
            target: tensor2(&b.target, dtype, dev)?,
        })
    }
}

/// The trainable W as a candle variable.
pub struct CandleTransformer {
    pub d: usize,
    pub w: Var,
}

impl CandleTransformer {
    pub fn new(w: &Array2<f64>, d: usize, dtype: DType, dev: &Device) -> Result<Self> {
        Ok(Self {
            d,
            w: Var::from_tensor(&tensor2(w, dtype, dev)?)?,
        })
    }

    /// Mean loss over the batch.
    pub fn loss(&self, b: &BatchTensors) -> Result<Tensor> {
        let de = b.s.dim(1)?;
        let wp = self.w.as_tensor().narrow(0, self.d, de)?; // (d_e, D): only these rows meet z_0
        let u = b.s.matmul(&wp)?.unsqueeze(2)?; // (batch, D, 1)
        let a = b.z.matmul(&u)?.squeeze(2)?; // (batch, T)
        let alpha = candle_nn::ops::softmax(&a, D::Minus1)?; // softmax_last_dim has no backward
        let f = alpha.unsqueeze(1)?.matmul(&b.x)?.squeeze(1)?; // (batch, d)
        Ok((f - &b.target)?.sqr()?.sum(1)?.mean(0)?)
    }

    /// Loss and gradient by autograd.
    pub fn loss_and_grad(&self, b: &BatchTensors) -> Result<(f64, Tensor)> {
        let loss = self.loss(b)?;
        let grads = loss.backward()?;
        let g = grads
            .get(&self.w)
            .ok_or_else(|| anyhow::anyhow!("no gradient for W"))?
            .clone();
        Ok((loss.to_dtype(DType::F64)?.to_scalar::<f64>()?, g))
    }

    /// One gradient-descent step.
    pub fn gd_step(&mut self, b: &BatchTensors, lr: f64) -> Result<f64> {
        let (l, g) = self.loss_and_grad(b)?;
        self.w.set(&(self.w.as_tensor() - (g * lr)?)?)?;
        Ok(l)
    }
}

/// Loss and gradient of W on a batch in f64 by candle autograd, as ndarray.
pub fn autograd_loss_and_grad(
    w: &Array2<f64>,
    d: usize,
    batch: &Batch,
) -> Result<(f64, Array2<f64>)> {
    // An oracle for the ndarray gradient, which runs on the CPU: compared on the same device.
    let dev = Device::Cpu;
    let m = CandleTransformer::new(w, d, DType::F64, &dev)?;
    let (l, g) = m.loss_and_grad(&BatchTensors::new(batch, DType::F64, &dev)?)?;
    Ok((l, array2(&g)?))
}
