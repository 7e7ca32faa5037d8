//! The transformer stack: token (+ position) embedding, `n_layers` blocks (or one block applied
//! `n_layers` times), final LayerNorm for pre-LN, and an output projection (tied or untied).

use crate::nn::attention::AttnContext;
use crate::nn::block::Block;
use crate::nn::config::{NormPlacement, Positions, TransformerConfig};
use crate::nn::layers::{dropout, LayerNorm};
use crate::rng::Rng;
use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use candle_nn::{Init, VarBuilder, VarMap};
use rand_distr::Distribution;

/// A caller-supplied attention mask, `(batch, T, T)` or `(T, T)` (row = query, column = key).
#[derive(Clone, Debug)]
pub enum AttnMask {
    /// Added to the scores before the softmax (0 = allowed, large negative = blocked).
    Additive(Tensor),
    /// Integer tensor, nonzero where the query may attend to the key.
    Allowed(Tensor),
}

/// Options of one forward pass; `Default` is evaluation without masks or capture.
#[derive(Default)]
pub struct ForwardOpts<'a> {
    pub mask: Option<&'a AttnMask>,
    /// Patterns of the fixed heads, `(batch, fixed_heads, T, T)`; required iff `fixed_heads > 0`.
    pub patterns: Option<&'a Tensor>,
    /// Keep every layer's attention probabilities (they are computed anyway: no extra cost).
    pub capture_attention: bool,
    /// Training mode: dropout masks drawn from this generator.
    pub dropout_rng: Option<&'a mut Rng>,
}

/// What a forward pass returns.
pub struct ForwardOutput {
    /// `(batch, T, n_out)`.
    pub logits: Tensor,
    /// Final hidden states `(batch, T, d)` (after the final LayerNorm for pre-LN).
    pub hidden: Tensor,
    /// One `(batch, heads, T, T)` per layer application when captured, else empty.
    pub attention: Vec<Tensor>,
}

/// Large finite negative bias for blocked positions: exp underflows to exactly 0 and a fully
/// blocked row stays finite (uniform) instead of NaN.
pub const BLOCKED: f64 = -1e9;

#[derive(Clone, Debug)]
pub struct Transformer {
    pub cfg: TransformerConfig,
    tok_emb: Tensor,
    pos: Option<Tensor>,
    blocks: Vec<Block>,
    ln_f: Option<LayerNorm>,
    out_w: Tensor,
}

fn sinusoidal(max_len: usize, d: usize, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
    let mut v = vec![0f64; max_len * d];
    for p in 0..max_len {
        for i in 0..d {
            let freq = 1.0 / 10000f64.powf((2 * (i / 2)) as f64 / d as f64);
            let a = p as f64 * freq;
            v[p * d + i] = if i % 2 == 0 { a.sin() } else { a.cos() };
        }
    }
    Tensor::from_vec(v, (max_len, d), dev)?.to_dtype(dtype)
}

impl Transformer {
    /// Builds the stack with its parameters in `vb`. Random weights come out as zeros here: call
    /// [`init_params`] (or use [`Transformer::build`]) for the seeded initialisation.
    pub fn new(cfg: &TransformerConfig, vb: VarBuilder) -> anyhow::Result<Self> {
        cfg.validate()?;
        let d = cfg.d_model;
        let tok_emb = vb.get_with_hints((cfg.vocab_size, d), "tok_emb", Init::Const(0.0))?;
        let pos = match cfg.positions {
            Positions::Learned => {
                Some(vb.get_with_hints((cfg.max_len, d), "pos_emb", Init::Const(0.0))?)
            }
            Positions::Sinusoidal => Some(sinusoidal(cfg.max_len, d, vb.dtype(), vb.device())?),
            Positions::None => None,
        };
        let n_blocks = if cfg.share_layers { 1 } else { cfg.n_layers };
        let blocks = (0..n_blocks)
            .map(|i| Block::new(cfg, vb.pp(format!("block{i}"))))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let ln_f = match cfg.norm {
            NormPlacement::Pre => Some(LayerNorm::new(d, cfg.ln_eps, vb.pp("ln_f"))?),
            NormPlacement::Post => None,
        };
        let out_w = if cfg.tie_embeddings {
            tok_emb.clone()
        } else {
            vb.get_with_hints((cfg.out(), d), "out_w", Init::Const(0.0))?
        };
        Ok(Self {
            cfg: cfg.clone(),
            tok_emb,
            pos,
            blocks,
            ln_f,
            out_w,
        })
    }

    /// A fresh model in a new `VarMap`, initialised deterministically from `seed`.
    pub fn build(
        cfg: &TransformerConfig,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> anyhow::Result<(Self, VarMap)> {
        crate::nn::tune_allocator();
        crate::nn::tune_candle_threads();
        let vm = VarMap::new();
        let model = Self::new(cfg, VarBuilder::from_varmap(&vm, dtype, device))?;
        init_params(&vm, cfg, seed)?;
        Ok((model, vm))
    }

    /// Logits `(batch, T, n_out)` for tokens `(batch, T)` in evaluation mode.
    pub fn forward(&self, tokens: &Tensor) -> anyhow::Result<Tensor> {
        Ok(self.forward_with(tokens, ForwardOpts::default())?.logits)
    }

    /// The full forward pass: masks, fixed patterns, attention capture, dropout.
    pub fn forward_with(
        &self,
        tokens: &Tensor,
        opts: ForwardOpts,
    ) -> anyhow::Result<ForwardOutput> {
        let cfg = &self.cfg;
        let (b, t) = tokens
            .dims2()
            .context("`tokens` must have shape (batch, T)")?;
        if t > cfg.max_len {
            bail!(
                "sequence length {t} exceeds `max_len` = {}: raise max_len in the config",
                cfg.max_len
            );
        }
        let dtype = self.tok_emb.dtype();
        let dev = self.tok_emb.device();
        let ids = tokens.to_dtype(DType::U32)?.flatten_all()?;
        let mut x = self
            .tok_emb
            .index_select(&ids, 0)?
            .reshape((b, t, cfg.d_model))?;
        if cfg.emb_scale != 1.0 {
            x = (x * cfg.emb_scale)?;
        }
        if let Some(p) = &self.pos {
            x = x.broadcast_add(&p.narrow(0, 0, t)?)?;
        }
        let mut rng = opts.dropout_rng;
        x = dropout(&x, cfg.dropout, rng.as_deref_mut())?;

        let bias = self.bias(opts.mask, b, t, dtype, dev)?;
        let patterns = match (cfg.fixed_heads, opts.patterns) {
            (0, None) => None,
            (0, Some(_)) => bail!("`patterns` given but the config has fixed_heads = 0"),
            (nf, None) => {
                bail!("the config has fixed_heads = {nf}: pass `patterns` of shape (batch, {nf}, {t}, {t})")
            }
            (nf, Some(p)) => {
                if p.dims() != [b, nf, t, t] {
                    bail!(
                        "`patterns` has shape {:?}, expected (batch, fixed_heads, T, T) = ({b}, {nf}, {t}, {t})",
                        p.dims()
                    );
                }
                Some(p.to_dtype(dtype)?)
            }
        };
        let mut ctx = AttnContext {
            bias,
            patterns,
            capture: opts.capture_attention,
            rng,
        };
        let mut attention = Vec::new();
        for l in 0..cfg.n_layers {
            let block = &self.blocks[if cfg.share_layers { 0 } else { l }];
            let (y, probs) = block.forward(&x, &mut ctx)?;
            x = y;
            attention.extend(probs);
        }
        if let Some(ln) = &self.ln_f {
            x = ln.forward(&x)?;
        }
        let logits = if crate::nn::fused::supported(&x) {
            // The fused linear (OpenBLAS where chosen) with a zero bias, instead of candle's
            // matmul with its transposes and the gemm crate in both passes.
            let zero = Tensor::zeros(cfg.out(), dtype, dev)?;
            crate::nn::fused::linear(&x, &self.out_w, &zero)?
        } else {
            x.reshape((b * t, cfg.d_model))?
                .matmul(&self.out_w.t()?)?
                .reshape((b, t, cfg.out()))?
        };
        Ok(ForwardOutput {
            logits,
            hidden: x,
            attention,
        })
    }

    /// Causal and caller masks as one additive `(batch or 1, 1, T, T)` bias.
    fn bias(
        &self,
        mask: Option<&AttnMask>,
        b: usize,
        t: usize,
        dtype: DType,
        dev: &Device,
    ) -> anyhow::Result<Option<Tensor>> {
        let mut bias: Option<Tensor> = None;
        if self.cfg.causal {
            let v: Vec<f64> = (0..t * t)
                .map(|i| if i % t > i / t { BLOCKED } else { 0.0 })
                .collect();
            bias = Some(Tensor::from_vec(v, (1, 1, t, t), dev)?.to_dtype(dtype)?);
        }
        if let Some(m) = mask {
            let raw = match m {
                AttnMask::Additive(a) | AttnMask::Allowed(a) => a,
            };
            let m4 = match raw.dims() {
                [tq, tk] if *tq == t && *tk == t => raw.reshape((1, 1, t, t))?,
                [bb, tq, tk] if *bb == b && *tq == t && *tk == t => raw.reshape((b, 1, t, t))?,
                d => bail!("attention mask has shape {d:?}: expected (batch, T, T) = ({b}, {t}, {t}) or (T, T)"),
            };
            let add = match m {
                AttnMask::Additive(_) => m4.to_dtype(dtype)?,
                AttnMask::Allowed(_) => {
                    let allowed = m4.to_dtype(DType::F64)?.ne(0.0)?;
                    let zero = Tensor::zeros(m4.shape(), dtype, dev)?;
                    let neg = (Tensor::ones(m4.shape(), dtype, dev)? * BLOCKED)?;
                    allowed.where_cond(&zero, &neg)?
                }
            };
            bias = Some(match bias {
                None => add,
                Some(c) => c.broadcast_add(&add)?,
            });
        }
        Ok(bias)
    }
}

/// Seeded initialisation of every parameter in `vm`, in sorted-name order (candle's own CPU
/// initialisers draw from an unseeded generator). Weight matrices and embeddings ~ N(0, init_std);
/// biases and LayerNorm shifts 0; LayerNorm gains 1; convolutions the identity.
pub fn init_params(vm: &VarMap, cfg: &TransformerConfig, seed: u64) -> anyhow::Result<()> {
    let mut rng = crate::rng::seeded(seed);
    let normal = rand_distr::Normal::new(0.0, cfg.init_std)?;
    let emb_normal = rand_distr::Normal::new(0.0, cfg.emb_init_std.unwrap_or(cfg.init_std))?;
    let data = vm.data().lock().expect("VarMap lock poisoned");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let (shape, dtype, dev) = (var.shape().clone(), var.dtype(), var.device().clone());
        let n = shape.elem_count();
        let leaf = name.rsplit('.').next().unwrap_or(name);
        let v: Vec<f64> = if name.ends_with("conv.w") {
            let k = shape.dims()[1];
            let left = if cfg.causal { k - 1 } else { (k - 1) / 2 };
            (0..n)
                .map(|i| if i % k == left { 1.0 } else { 0.0 })
                .collect()
        } else {
            match leaf {
                "gamma" => vec![1.0; n],
                "beta" | "b" => vec![0.0; n],
                "tok_emb" => (0..n).map(|_| emb_normal.sample(&mut rng)).collect(),
                _ => (0..n).map(|_| normal.sample(&mut rng)).collect(),
            }
        };
        var.set(&Tensor::from_vec(v, shape, &dev)?.to_dtype(dtype)?)?;
    }
    Ok(())
}

/// Total number of scalar parameters in `vm`.
pub fn num_params(vm: &VarMap) -> usize {
    vm.all_vars().iter().map(|v| v.elem_count()).sum()
}
