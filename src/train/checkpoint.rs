//! Checkpoints: parameters, optimiser state, step counter and named RNG states in one
//! safetensors file, written atomically (temp file + rename) so a killed run never leaves a torn
//! checkpoint. Loading restores everything, so a resumed run reproduces the uninterrupted one bit
//! for bit.
//!
//! Layout: tensors `param.<name>` (parameter dtype), `optim.m.<name>` and `optim.v.<name>` (f64);
//! metadata `step`, `rng.<name>` (`seed-hex:stream:word-pos`) and `extra` (caller JSON).

use crate::rng::Rng;
use crate::train::optim::Optimizer;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use candle_nn::VarMap;
use rand::SeedableRng;
use safetensors::tensor::{Dtype, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// What [`load_checkpoint`] hands back besides the restored parameters and optimiser.
pub struct Resumed {
    /// Optimiser updates done when the checkpoint was written.
    pub step: u64,
    /// The generators saved under their names.
    pub rngs: BTreeMap<String, Rng>,
    /// The caller's JSON string.
    pub extra: String,
}

fn rng_to_string(r: &Rng) -> String {
    let seed: String = r.get_seed().iter().map(|b| format!("{b:02x}")).collect();
    format!("{seed}:{}:{}", r.get_stream(), r.get_word_pos())
}

fn rng_from_string(s: &str) -> Result<Rng> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 3 || parts[0].len() != 64 {
        bail!("malformed RNG state `{s}` in checkpoint");
    }
    let mut seed = [0u8; 32];
    for (i, b) in seed.iter_mut().enumerate() {
        *b = u8::from_str_radix(&parts[0][2 * i..2 * i + 2], 16)?;
    }
    let mut r = Rng::from_seed(seed);
    r.set_stream(parts[1].parse()?);
    r.set_word_pos(parts[2].parse()?);
    Ok(r)
}

fn bytes_of(t: &Tensor) -> Result<(Dtype, Vec<u8>)> {
    let t = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F32 => (
            Dtype::F32,
            t.to_vec1::<f32>()?
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        ),
        DType::F64 => (
            Dtype::F64,
            t.to_vec1::<f64>()?
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        ),
        d => bail!("checkpoints hold f32 and f64 parameters, not {d:?}"),
    })
}

/// Writes `vm`'s parameters, `opt`'s state, and the `rngs` to `path` atomically.
pub fn save_checkpoint(
    path: &Path,
    vm: &VarMap,
    opt: &Optimizer,
    rngs: &[(&str, &Rng)],
    extra: &str,
) -> Result<()> {
    let mut blobs: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    {
        let data = vm.data().lock().expect("VarMap lock poisoned");
        for (name, var) in data.iter() {
            let (dt, b) = bytes_of(var.as_tensor())?;
            blobs.push((format!("param.{name}"), dt, var.dims().to_vec(), b));
        }
    }
    for p in &opt.params {
        for (tag, buf) in [("m", &p.m), ("v", &p.v)] {
            let b: Vec<u8> = buf.iter().flat_map(|x| x.to_le_bytes()).collect();
            blobs.push((
                format!("optim.{tag}.{}", p.name),
                Dtype::F64,
                vec![buf.len()],
                b,
            ));
        }
    }
    blobs.sort_by(|a, b| a.0.cmp(&b.0));
    let views = blobs
        .iter()
        .map(|(n, dt, shape, b)| Ok((n.clone(), TensorView::new(*dt, shape.clone(), b)?)))
        .collect::<Result<Vec<_>>>()?;
    let mut meta = HashMap::new();
    meta.insert("step".to_string(), opt.step.to_string());
    meta.insert("extra".to_string(), extra.to_string());
    for (name, r) in rngs {
        meta.insert(format!("rng.{name}"), rng_to_string(r));
    }
    let bytes = safetensors::serialize(views, &Some(meta))?;
    crate::io::write_atomic(path, &bytes)
        .with_context(|| format!("writing checkpoint `{}`", path.display()))
}

/// Restores `vm`'s parameters and `opt`'s state from `path` (written by [`save_checkpoint`] for
/// the same model and optimiser).
pub fn load_checkpoint(path: &Path, vm: &VarMap, opt: &mut Optimizer) -> Result<Resumed> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading checkpoint `{}`", path.display()))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .with_context(|| format!("`{}` is not a safetensors file", path.display()))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    let dev = opt
        .params
        .first()
        .map(|p| p.var.device().clone())
        .unwrap_or(candle_core::Device::Cpu);
    let tensors = candle_core::safetensors::load_buffer(&bytes, &dev)?;
    let get = |k: &str| {
        tensors.get(k).with_context(|| {
            format!(
                "checkpoint `{}` has no tensor `{k}`: it was written for another model config",
                path.display()
            )
        })
    };
    {
        let data = vm.data().lock().expect("VarMap lock poisoned");
        let in_file = tensors.keys().filter(|k| k.starts_with("param.")).count();
        if in_file != data.len() {
            bail!(
                "checkpoint `{}` holds {in_file} parameters but the model has {}: it was written for another model config",
                path.display(),
                data.len()
            );
        }
        for (name, var) in data.iter() {
            let t = get(&format!("param.{name}"))?;
            var.set(&t.to_dtype(var.dtype())?)
                .with_context(|| format!("restoring parameter `{name}`"))?;
        }
    }
    for p in opt.params.iter_mut() {
        p.m = get(&format!("optim.m.{}", p.name))?.to_vec1::<f64>()?;
        p.v = get(&format!("optim.v.{}", p.name))?.to_vec1::<f64>()?;
    }
    let step: u64 = meta
        .get("step")
        .context("checkpoint metadata lacks `step`")?
        .parse()?;
    opt.step = step;
    let mut rngs = BTreeMap::new();
    for (k, v) in &meta {
        if let Some(name) = k.strip_prefix("rng.") {
            rngs.insert(name.to_string(), rng_from_string(v)?);
        }
    }
    Ok(Resumed {
        step,
        rngs,
        extra: meta.get("extra").cloned().unwrap_or_default(),
    })
}
