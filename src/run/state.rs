//! The one checkpoint format: a safetensors file holding a run's tensors (parameters, optimiser
//! moments, any array a trainer keeps), with metadata for the step, the RNG states, the run's
//! identity, the trainer's own JSON, and a SHA-256 checksum over all of it. Written atomically;
//! a file whose checksum fails is an error naming it, never a silent resume.

use super::error::failed;
use crate::rng::Rng;
use crate::train::optim::Optimizer;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use rand::SeedableRng;
use safetensors::tensor::{Dtype, TensorView};
use serde::{de::DeserializeOwned, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

const FORMAT: &str = "attnlab-checkpoint-1";

struct Blob {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

/// Everything a run needs to continue where it stopped, bit for bit.
#[derive(Default)]
pub struct State {
    tensors: BTreeMap<String, Blob>,
    meta: BTreeMap<String, String>,
}

fn rng_to_string(r: &Rng) -> String {
    let seed: String = r.get_seed().iter().map(|b| format!("{b:02x}")).collect();
    format!("{seed}:{}:{}", r.get_stream(), r.get_word_pos())
}

fn rng_from_string(s: &str) -> Result<Rng> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 3 || parts[0].len() != 64 || !parts[0].is_ascii() {
        bail!("malformed RNG state `{s}`");
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

fn dtype_name(d: Dtype) -> &'static str {
    match d {
        Dtype::F32 => "f32",
        Dtype::F64 => "f64",
        _ => "other",
    }
}

impl State {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores an f64 array of `shape` under `name`.
    pub fn put_f64(&mut self, name: &str, shape: &[usize], data: &[f64]) {
        let bytes = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.tensors.insert(
            name.to_string(),
            Blob {
                dtype: Dtype::F64,
                shape: shape.to_vec(),
                bytes,
            },
        );
    }

    /// Stores an f32 array of `shape` under `name`.
    pub fn put_f32(&mut self, name: &str, shape: &[usize], data: &[f32]) {
        let bytes = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.tensors.insert(
            name.to_string(),
            Blob {
                dtype: Dtype::F32,
                shape: shape.to_vec(),
                bytes,
            },
        );
    }

    fn blob(&self, name: &str) -> Result<&Blob> {
        self.tensors.get(name).with_context(|| {
            format!("the checkpoint has no tensor `{name}`: it was written for another model")
        })
    }

    /// The f64 array stored under `name`, with its shape.
    pub fn get_f64(&self, name: &str) -> Result<(Vec<usize>, Vec<f64>)> {
        let b = self.blob(name)?;
        if b.dtype != Dtype::F64 {
            bail!(
                "checkpoint tensor `{name}` is {}, expected f64",
                dtype_name(b.dtype)
            );
        }
        let v = b
            .bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        Ok((b.shape.clone(), v))
    }

    /// The f32 array stored under `name`, with its shape.
    pub fn get_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let b = self.blob(name)?;
        if b.dtype != Dtype::F32 {
            bail!(
                "checkpoint tensor `{name}` is {}, expected f32",
                dtype_name(b.dtype)
            );
        }
        let v = b
            .bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        Ok((b.shape.clone(), v))
    }

    /// Stores a candle tensor (f32 or f64) under `name`.
    pub fn put_tensor(&mut self, name: &str, t: &Tensor) -> Result<()> {
        let shape = t.dims().to_vec();
        let flat = t.flatten_all()?;
        match t.dtype() {
            DType::F32 => self.put_f32(name, &shape, &flat.to_vec1::<f32>()?),
            DType::F64 => self.put_f64(name, &shape, &flat.to_vec1::<f64>()?),
            d => bail!("checkpoints hold f32 and f64 tensors, not {d:?}"),
        }
        Ok(())
    }

    /// The tensor stored under `name`, on `dev`.
    pub fn get_tensor(&self, name: &str, dev: &Device) -> Result<Tensor> {
        let b = self.blob(name)?;
        Ok(match b.dtype {
            Dtype::F32 => {
                let (s, v) = self.get_f32(name)?;
                Tensor::from_vec(v, s, dev)?
            }
            _ => {
                let (s, v) = self.get_f64(name)?;
                Tensor::from_vec(v, s, dev)?
            }
        })
    }

    /// Stores every variable of `vm` as `<prefix>.<name>`.
    pub fn put_varmap(&mut self, prefix: &str, vm: &VarMap) -> Result<()> {
        let data = vm.data().lock().expect("VarMap lock poisoned");
        for (name, var) in data.iter() {
            self.put_tensor(&format!("{prefix}.{name}"), var.as_tensor())?;
        }
        Ok(())
    }

    /// Restores every variable of `vm` from `<prefix>.<name>`; the checkpoint must hold exactly
    /// the model's variables.
    pub fn load_varmap(&self, prefix: &str, vm: &VarMap) -> Result<()> {
        let data = vm.data().lock().expect("VarMap lock poisoned");
        let p = format!("{prefix}.");
        let in_file = self.tensors.keys().filter(|k| k.starts_with(&p)).count();
        if in_file != data.len() {
            bail!(
                "the checkpoint holds {in_file} parameters but the model has {}: it was written for another model config",
                data.len()
            );
        }
        for (name, var) in data.iter() {
            let t = self.get_tensor(&format!("{p}{name}"), var.device())?;
            if t.dims() != var.dims() {
                bail!(
                    "checkpoint parameter `{name}` has shape {:?}, the model's has {:?}",
                    t.dims(),
                    var.dims()
                );
            }
            var.set(&t.to_dtype(var.dtype())?)
                .with_context(|| format!("restoring parameter `{name}`"))?;
        }
        Ok(())
    }

    /// Stores `opt`'s moments (`<prefix>.m.<name>`, `<prefix>.v.<name>`) and update count.
    pub fn put_optimizer(&mut self, prefix: &str, opt: &Optimizer) -> Result<()> {
        for p in &opt.params {
            for (tag, buf) in [("m", &p.m), ("v", &p.v)] {
                self.put_tensor(&format!("{prefix}.{tag}.{}", p.name), &buf.to_tensor()?)?;
            }
        }
        self.put_json(&format!("{prefix}.step"), &opt.step)
    }

    /// Restores what [`State::put_optimizer`] stored.
    pub fn load_optimizer(&self, prefix: &str, opt: &mut Optimizer) -> Result<()> {
        for p in opt.params.iter_mut() {
            p.m.load(&self.get_tensor(&format!("{prefix}.m.{}", p.name), &Device::Cpu)?)?;
            p.v.load(&self.get_tensor(&format!("{prefix}.v.{}", p.name), &Device::Cpu)?)?;
        }
        opt.step = self.json(&format!("{prefix}.step"))?;
        Ok(())
    }

    /// Stores a model's variables (`model.*`) and its optimiser's state (`optim.*`): what every
    /// candle trainer checkpoints.
    pub fn put_model(&mut self, vm: &VarMap, opt: &Optimizer) -> Result<()> {
        self.put_varmap("model", vm)?;
        self.put_optimizer("optim", opt)
    }

    /// Restores what [`State::put_model`] stored.
    pub fn load_model(&self, vm: &VarMap, opt: &mut Optimizer) -> Result<()> {
        self.load_varmap("model", vm)?;
        self.load_optimizer("optim", opt)
    }

    /// Stores a generator's full state under `name`.
    pub fn put_rng(&mut self, name: &str, r: &Rng) {
        self.meta.insert(format!("rng.{name}"), rng_to_string(r));
    }

    /// The generator stored under `name`.
    pub fn rng(&self, name: &str) -> Result<Rng> {
        let s = self
            .meta
            .get(&format!("rng.{name}"))
            .with_context(|| format!("the checkpoint has no RNG `{name}`"))?;
        rng_from_string(s).with_context(|| format!("RNG `{name}` in the checkpoint"))
    }

    /// Stores `value` as JSON metadata under `name`.
    pub fn put_json<T: Serialize + ?Sized>(&mut self, name: &str, value: &T) -> Result<()> {
        self.meta
            .insert(format!("json.{name}"), serde_json::to_string(value)?);
        Ok(())
    }

    /// The JSON metadata stored under `name`.
    pub fn json<T: DeserializeOwned>(&self, name: &str) -> Result<T> {
        let s = self
            .meta
            .get(&format!("json.{name}"))
            .with_context(|| format!("the checkpoint has no entry `{name}`"))?;
        serde_json::from_str(s).with_context(|| format!("checkpoint entry `{name}`"))
    }

    /// True when JSON metadata `name` is present.
    pub fn has_json(&self, name: &str) -> bool {
        self.meta.contains_key(&format!("json.{name}"))
    }

    fn checksum(&self) -> String {
        let mut h = Sha256::new();
        for (name, b) in &self.tensors {
            h.update((name.len() as u64).to_le_bytes());
            h.update(name.as_bytes());
            h.update(dtype_name(b.dtype).as_bytes());
            for d in &b.shape {
                h.update((*d as u64).to_le_bytes());
            }
            h.update((b.bytes.len() as u64).to_le_bytes());
            h.update(&b.bytes);
        }
        for (k, v) in &self.meta {
            h.update((k.len() as u64).to_le_bytes());
            h.update(k.as_bytes());
            h.update((v.len() as u64).to_le_bytes());
            h.update(v.as_bytes());
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Serialises to safetensors bytes with the format tag and checksum.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let views = self
            .tensors
            .iter()
            .map(|(n, b)| {
                Ok((
                    n.clone(),
                    TensorView::new(b.dtype, b.shape.clone(), &b.bytes)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut meta: HashMap<String, String> = self
            .meta
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        meta.insert("format".into(), FORMAT.into());
        meta.insert("checksum".into(), self.checksum());
        Ok(safetensors::serialize(views, Some(meta))?)
    }

    /// Writes the state to `path` atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        let _saving = crate::interrupt::saving();
        crate::io::write_atomic(path, &self.to_bytes()?)
            .with_context(|| format!("writing checkpoint `{}`", path.display()))
    }

    /// Reads and verifies a checkpoint; a damaged file is a [`super::RunFailed`] error naming it.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("reading checkpoint `{}`", path.display()))?;
        Self::from_bytes(&bytes).map_err(|e| {
            failed(format!(
                "checkpoint `{}` is damaged ({e:#}): delete it to start the run over",
                path.display()
            ))
        })
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| anyhow::anyhow!("not a safetensors file: {e}"))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| anyhow::anyhow!("not a safetensors file: {e}"))?;
        let mut meta: BTreeMap<String, String> = header
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        match meta.remove("format").as_deref() {
            Some(FORMAT) => {}
            Some(f) => bail!("unknown checkpoint format `{f}`"),
            None => bail!("no format tag: written by an older attnlab, or not a checkpoint"),
        }
        let sum = meta.remove("checksum").context("no checksum")?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let dtype = view.dtype();
            if !matches!(dtype, Dtype::F32 | Dtype::F64) {
                bail!("tensor `{name}` has unsupported dtype {dtype:?}");
            }
            tensors.insert(
                name,
                Blob {
                    dtype,
                    shape: view.shape().to_vec(),
                    bytes: view.data().to_vec(),
                },
            );
        }
        let s = Self { tensors, meta };
        if s.checksum() != sum {
            bail!("checksum mismatch");
        }
        Ok(s)
    }
}
