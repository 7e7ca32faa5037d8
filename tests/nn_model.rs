//! Structure of the stack: weight tying, attention capture, fixed-pattern heads, masks,
//! causality, the FLOP counter and config errors.

use attnlab::nn::{
    num_params, AttnMask, FlopCount, ForwardOpts, Positions, Transformer, TransformerConfig,
};
use candle_core::{DType, Device, Tensor, D};
use rand::Rng as _;

fn cfg() -> TransformerConfig {
    TransformerConfig {
        vocab_size: 7,
        max_len: 8,
        d_model: 16,
        n_layers: 3,
        n_heads: 4,
        d_ff: 24,
        ..Default::default()
    }
}

fn tokens(b: usize, t: usize, seed: u64) -> Tensor {
    let mut r = attnlab::rng::seeded(seed);
    let v: Vec<u32> = (0..b * t).map(|_| r.gen_range(0..7)).collect();
    Tensor::from_vec(v, (b, t), &Device::Cpu).unwrap()
}

fn max_abs(t: &Tensor) -> f64 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

#[test]
fn weight_tied_model_has_one_blocks_parameters() {
    let (_, untied) = Transformer::build(&cfg(), 0, DType::F32, &Device::Cpu).unwrap();
    let shared_cfg = TransformerConfig {
        share_layers: true,
        ..cfg()
    };
    let (m, shared) = Transformer::build(&shared_cfg, 0, DType::F32, &Device::Cpu).unwrap();
    let c = cfg();
    let (d, f, v, t) = (c.d_model, c.ff(), c.vocab_size, c.max_len);
    let block = d * 3 * d + 3 * d + d * d + d + 2 * d * f + f + d + 4 * d;
    let rest = v * d + t * d + 2 * d + v * d;
    assert_eq!(num_params(&shared), block + rest);
    assert_eq!(num_params(&untied), 3 * block + rest);
    assert!(shared
        .data()
        .lock()
        .unwrap()
        .keys()
        .all(|k| !k.starts_with("block1")));
    // Still three layer applications.
    let out = m
        .forward_with(
            &tokens(2, 5, 1),
            ForwardOpts {
                capture_attention: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(out.attention.len(), 3);
}

fn layer_norm_ref(x: &Tensor, g: &Tensor, b: &Tensor) -> Tensor {
    let mean = x.mean_keepdim(D::Minus1).unwrap();
    let xc = x.broadcast_sub(&mean).unwrap();
    let var = xc.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
    xc.broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap())
        .unwrap()
        .broadcast_mul(g)
        .unwrap()
        .broadcast_add(b)
        .unwrap()
}

#[test]
fn captured_attention_rows_sum_to_one_and_equal_a_recomputation() {
    for causal in [false, true] {
        let c = TransformerConfig { causal, ..cfg() };
        let (m, vm) = Transformer::build(&c, 5, DType::F64, &Device::Cpu).unwrap();
        let toks = tokens(3, 6, 2);
        let out = m
            .forward_with(
                &toks,
                ForwardOpts {
                    capture_attention: true,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(out.attention.len(), 3);
        for a in &out.attention {
            assert_eq!(a.dims(), [3, 4, 6, 6]);
            let rows = a.sum(D::Minus1).unwrap();
            assert!(max_abs(&(rows - 1.0).unwrap()) < 1e-12);
        }
        // Capture changes nothing else.
        let plain = m.forward(&toks).unwrap();
        assert_eq!(max_abs(&(plain - &out.logits).unwrap()), 0.0);
        // Recompute layer 0 from the parameters with plain candle ops.
        let p = |n: &str| vm.data().lock().unwrap()[n].as_tensor().clone();
        let x = p("tok_emb")
            .index_select(&toks.flatten_all().unwrap(), 0)
            .unwrap()
            .reshape((3, 6, 16))
            .unwrap()
            .broadcast_add(&p("pos_emb").narrow(0, 0, 6).unwrap())
            .unwrap();
        let h = layer_norm_ref(&x, &p("block0.ln1.gamma"), &p("block0.ln1.beta"));
        let qkv = h
            .broadcast_matmul(&p("block0.attn.qkv.w").t().unwrap())
            .unwrap()
            .broadcast_add(&p("block0.attn.qkv.b"))
            .unwrap();
        let split = |o: usize| {
            qkv.narrow(2, o, 16)
                .unwrap()
                .reshape((3, 6, 4, 4))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let s = (split(0).matmul(&split(16).t().unwrap()).unwrap() / 2.0).unwrap();
        let s = if causal {
            let m: Vec<f64> = (0..36)
                .map(|i| {
                    if i % 6 > i / 6 {
                        f64::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
                .collect();
            s.broadcast_add(&Tensor::from_vec(m, (6, 6), &Device::Cpu).unwrap())
                .unwrap()
        } else {
            s
        };
        let e = s.exp().unwrap();
        let probs = e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap();
        assert!(max_abs(&(probs - &out.attention[0]).unwrap()) < 1e-12);
        if causal {
            let v = out.attention[2].to_dtype(DType::F64).unwrap();
            let upper = v.narrow(2, 0, 1).unwrap().narrow(3, 1, 5).unwrap();
            assert_eq!(max_abs(&upper), 0.0);
        }
    }
}

fn random_patterns(b: usize, nf: usize, t: usize, seed: u64) -> Tensor {
    let mut r = attnlab::rng::seeded(seed);
    let mut v = vec![0f32; b * nf * t * t];
    for row in v.chunks_mut(t) {
        row.iter_mut().for_each(|x| *x = r.gen::<f32>());
        let s: f32 = row.iter().sum();
        row.iter_mut().for_each(|x| *x /= s);
    }
    Tensor::from_vec(v, (b, nf, t, t), &Device::Cpu).unwrap()
}

#[test]
fn fixed_pattern_heads_reproduce_their_pattern_exactly() {
    let c = TransformerConfig {
        fixed_heads: 2,
        ..cfg()
    };
    let (m, vm) = Transformer::build(&c, 1, DType::F32, &Device::Cpu).unwrap();
    // No query/key weights for fixed heads: qkv has (2*2 + 4) heads of width 4.
    assert_eq!(
        vm.data().lock().unwrap()["block0.attn.qkv.w"].dims(),
        [(2 * 2 + 4) * 4, 16]
    );
    let toks = tokens(2, 5, 3);
    let pat = random_patterns(2, 2, 5, 4);
    let run = |p: &Tensor| {
        m.forward_with(
            &toks,
            ForwardOpts {
                patterns: Some(p),
                capture_attention: true,
                ..Default::default()
            },
        )
        .unwrap()
    };
    let out = run(&pat);
    for a in &out.attention {
        let fixed = a.narrow(1, 0, 2).unwrap();
        assert_eq!(max_abs(&(fixed - &pat).unwrap()), 0.0);
    }
    // The pattern matters for the output.
    let other = run(&random_patterns(2, 2, 5, 5));
    assert!(max_abs(&(other.logits - &out.logits).unwrap()) > 1e-4);
    // Missing or misshapen patterns are errors naming the fix.
    let e = m.forward(&toks).unwrap_err().to_string();
    assert!(e.contains("patterns"), "{e}");
    let bad = random_patterns(2, 1, 5, 6);
    let e = m
        .forward_with(
            &toks,
            ForwardOpts {
                patterns: Some(&bad),
                ..Default::default()
            },
        )
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("(2, 2, 5, 5)"), "{e}");
}

#[test]
fn boolean_and_additive_masks_agree_and_block_keys() {
    let (m, _) = Transformer::build(&cfg(), 2, DType::F32, &Device::Cpu).unwrap();
    let (b, t) = (2, 6);
    let toks = tokens(b, t, 7);
    // Example 0: keys 0..3 only; example 1: block-diagonal spans [0,2) and [2,6).
    let mut allowed = vec![0u8; b * t * t];
    for q in 0..t {
        for k in 0..t {
            allowed[q * t + k] = (k < 3) as u8;
            allowed[t * t + q * t + k] = ((q < 2) == (k < 2)) as u8;
        }
    }
    let additive: Vec<f32> = allowed
        .iter()
        .map(|&a| if a == 1 { 0.0 } else { -1e9 })
        .collect();
    let run = |mask: &AttnMask| {
        m.forward_with(
            &toks,
            ForwardOpts {
                mask: Some(mask),
                capture_attention: true,
                ..Default::default()
            },
        )
        .unwrap()
    };
    let boolean = run(&AttnMask::Allowed(
        Tensor::from_vec(allowed.clone(), (b, t, t), &Device::Cpu).unwrap(),
    ));
    let add = run(&AttnMask::Additive(
        Tensor::from_vec(additive, (b, t, t), &Device::Cpu).unwrap(),
    ));
    assert_eq!(max_abs(&(&boolean.logits - &add.logits).unwrap()), 0.0);
    let blocked: Vec<f32> = allowed.iter().map(|&a| 1.0 - a as f32).collect();
    let blocked = Tensor::from_vec(blocked, (b, 1, t, t), &Device::Cpu).unwrap();
    for a in &boolean.attention {
        assert_eq!(max_abs(&a.broadcast_mul(&blocked).unwrap()), 0.0);
    }
    // Span independence: changing token 0 of example 1 leaves positions 2.. unchanged.
    let mut v = toks.to_vec2::<u32>().unwrap();
    v[1][0] = (v[1][0] + 1) % 7;
    let toks2 = Tensor::new(v, &Device::Cpu).unwrap();
    let mask = AttnMask::Allowed(Tensor::from_vec(allowed, (b, t, t), &Device::Cpu).unwrap());
    let out2 = m
        .forward_with(
            &toks2,
            ForwardOpts {
                mask: Some(&mask),
                ..Default::default()
            },
        )
        .unwrap();
    let d = (out2.logits - &boolean.logits).unwrap();
    assert_eq!(
        max_abs(&d.narrow(0, 1, 1).unwrap().narrow(1, 2, 4).unwrap()),
        0.0
    );
    assert!(max_abs(&d.narrow(0, 1, 1).unwrap().narrow(1, 0, 2).unwrap()) > 0.0);
    // A wrong mask shape is an error that names the expected shape.
    let bad = AttnMask::Allowed(Tensor::zeros((3, t, t), DType::U8, &Device::Cpu).unwrap());
    let e = m
        .forward_with(
            &toks,
            ForwardOpts {
                mask: Some(&bad),
                ..Default::default()
            },
        )
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("(2, 6, 6)"), "{e}");
}

#[test]
fn decoder_never_sees_the_future() {
    for qkv_conv in [0, 3] {
        let c = TransformerConfig {
            causal: true,
            qkv_conv,
            positions: Positions::Sinusoidal,
            ..cfg()
        };
        let (m, _) = Transformer::build(&c, 4, DType::F32, &Device::Cpu).unwrap();
        let toks = tokens(1, 7, 9);
        let mut v = toks.to_vec2::<u32>().unwrap();
        v[0][4] = (v[0][4] + 3) % 7;
        let a = m.forward(&toks).unwrap();
        let b = m.forward(&Tensor::new(v, &Device::Cpu).unwrap()).unwrap();
        let d = (a - b).unwrap();
        assert_eq!(max_abs(&d.narrow(1, 0, 4).unwrap()), 0.0, "conv {qkv_conv}");
        assert!(
            max_abs(&d.narrow(1, 4, 3).unwrap()) > 0.0,
            "conv {qkv_conv}"
        );
    }
}

#[test]
fn flop_counter_matches_a_hand_count() {
    // d = 8, 2 heads of width 4 (one fixed), ff = 16, vocab 5, 2 layers, T = 3.
    let c = TransformerConfig {
        vocab_size: 5,
        d_model: 8,
        n_heads: 2,
        fixed_heads: 1,
        d_ff: 16,
        n_layers: 2,
        ..Default::default()
    };
    let f = FlopCount::new(&c, 3);
    // Per layer, per token: q,k (1 learned head): 2*8*8 = 128; v (2 heads): 2*8*8 = 128;
    // scores: 2*3*4 = 24; PV learned 24 + fixed 24; out: 2*8*8 = 128; FFN: 2*2*8*16 = 512.
    let layer = 128 + 128 + 24 + 24 + 24 + 128 + 512; // 968
    let head = 2 * 8 * 5; // 80
    assert_eq!(f.forward_per_token, 2 * layer + head);
    // Backward: twice every product except the fixed heads' PV (dV only).
    assert_eq!(f.backward_per_token, 2 * (2 * (layer - 24) + 24) + 2 * head);
    assert_eq!(f.qk_forward_per_token, 2 * (128 + 24));
    assert_eq!(
        f.train_step(4, 3),
        (f.forward_per_token + f.backward_per_token) * 12
    );
    // The same model with no fixed head costs exactly the saved Q/K work more.
    let learned = FlopCount::new(
        &TransformerConfig {
            fixed_heads: 0,
            ..c.clone()
        },
        3,
    );
    assert_eq!(
        learned.forward_per_token - f.forward_per_token,
        2 * (128 + 24)
    );
    // Conv: 2 layers * 2 * k * channels, channels = q (1 head) + k (1) + v (2) of width 4.
    let conv = FlopCount::new(&TransformerConfig { qkv_conv: 3, ..c }, 3);
    assert_eq!(
        conv.forward_per_token - f.forward_per_token,
        2 * 2 * 3 * (4 * 4)
    );
}

#[test]
fn bad_configs_name_the_field() {
    let cases = [
        (
            TransformerConfig {
                n_heads: 3,
                ..cfg()
            },
            "n_heads",
        ),
        (
            TransformerConfig {
                fixed_heads: 5,
                ..cfg()
            },
            "fixed_heads",
        ),
        (
            TransformerConfig {
                dropout: 1.0,
                ..cfg()
            },
            "dropout",
        ),
        (
            TransformerConfig {
                tie_embeddings: true,
                n_out: 3,
                ..cfg()
            },
            "tie_embeddings",
        ),
    ];
    for (c, field) in cases {
        let e = Transformer::build(&c, 0, DType::F32, &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains(field), "{e}");
    }
    let e = attnlab::config::parse_toml::<TransformerConfig>("d_modle = 3")
        .unwrap_err()
        .to_string();
    assert!(e.contains("d_modle"), "{e}");
    let (m, _) = Transformer::build(&cfg(), 0, DType::F32, &Device::Cpu).unwrap();
    let e = m.forward(&tokens(1, 9, 0)).unwrap_err().to_string();
    assert!(e.contains("max_len"), "{e}");
}

/// `emb_scale` multiplies the token embedding before positions are added, so a model with scale
/// s equals an unscaled model whose embedding matrix is s times larger (untied output);
/// `emb_init_std` sets the embedding's initial spread only.
#[test]
fn embedding_scale_equals_a_scaled_embedding_matrix() {
    let scaled = TransformerConfig {
        emb_scale: 3.0,
        emb_init_std: Some(1.0),
        positions: Positions::Sinusoidal,
        ..cfg()
    };
    let plain = TransformerConfig {
        positions: Positions::Sinusoidal,
        ..cfg()
    };
    let (a, vma) = Transformer::build(&scaled, 5, DType::F64, &Device::Cpu).unwrap();
    let (b, vmb) = Transformer::build(&plain, 6, DType::F64, &Device::Cpu).unwrap();
    let std_of = |t: &Tensor| {
        let v: Vec<f64> = t.flatten_all().unwrap().to_vec1().unwrap();
        let m = v.iter().sum::<f64>() / v.len() as f64;
        (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
    };
    {
        let da = vma.data().lock().unwrap();
        // 112 draws of N(0, 1): the sample std is within 0.25 of 1 far beyond 3 standard errors.
        let s = std_of(da["tok_emb"].as_tensor());
        assert!((s - 1.0).abs() < 0.25, "token embedding std {s}");
        let s = std_of(da["block0.attn.qkv.w"].as_tensor());
        assert!((s - 0.02).abs() < 0.005, "weight std {s}");
        let db = vmb.data().lock().unwrap();
        for (name, var) in da.iter() {
            let mut v = var.as_tensor().clone();
            if name == "tok_emb" {
                v = (v * 3.0).unwrap();
            }
            db[name].set(&v).unwrap();
        }
    }
    let x = tokens(2, 8, 1);
    let (la, lb) = (a.forward(&x).unwrap(), b.forward(&x).unwrap());
    let diff = max_abs(&(la - &lb).unwrap());
    assert!(diff < 1e-9 * (1.0 + max_abs(&lb)), "max difference {diff}");
    let bad = TransformerConfig {
        emb_scale: 0.0,
        ..cfg()
    };
    let e = Transformer::build(&bad, 0, DType::F32, &Device::Cpu)
        .err()
        .unwrap();
    assert!(format!("{e:#}").contains("emb_scale"), "{e:#}");
}
