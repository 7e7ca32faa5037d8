//! The q/k/v convolution on a subset of the maps (`qkv_conv_maps`): it changes only what it
//! should. Convolving v alone leaves the attention probabilities of the unconvolved model with
//! the same weights; convolving q and v equals convolving all three with an identity kernel on
//! k; all three is the default and serialises as before; the fused kernel and the composed ops
//! agree on every subset. Its own test binary because the fused switch is process-wide.

mod common;

use attnlab::lego::config::{ConvolutionConfig, QkvMap};
use attnlab::nn::config::QkvConvMaps;
use attnlab::nn::{fused, ForwardOpts, Transformer, TransformerConfig};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use rand::Rng as _;

fn base() -> TransformerConfig {
    TransformerConfig {
        vocab_size: 7,
        max_len: 9,
        d_model: 12,
        n_heads: 3,
        n_layers: 2,
        qkv_conv: 3,
        ..Default::default()
    }
}

fn maps(query: bool, key: bool, value: bool) -> QkvConvMaps {
    QkvConvMaps { query, key, value }
}

use common::fused::max_abs;

/// Moves every parameter by seeded noise (the identity conv kernels included).
fn perturb(vm: &VarMap, seed: u64) {
    let mut r = attnlab::rng::seeded(seed);
    let data = vm.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for n in names {
        let t = data[n].as_tensor();
        let noise: Vec<f64> = (0..t.elem_count())
            .map(|_| r.gen_range(-0.3..0.3))
            .collect();
        let noise = Tensor::from_vec(noise, t.shape(), &Device::Cpu).unwrap();
        data[n].set(&(t + noise).unwrap()).unwrap();
    }
}

/// Copies every parameter of `from` that `to` has under the same name and shape.
fn copy_shared(from: &VarMap, to: &VarMap) -> usize {
    let src = from.data().lock().unwrap();
    let dst = to.data().lock().unwrap();
    let mut copied = 0;
    for (n, v) in dst.iter() {
        if let Some(s) = src.get(n) {
            if s.shape() == v.shape() {
                v.set(s.as_tensor()).unwrap();
                copied += 1;
            }
        }
    }
    copied
}

fn tokens(b: usize, t: usize) -> Tensor {
    let mut r = attnlab::rng::seeded(11);
    let v: Vec<u32> = (0..b * t).map(|_| r.gen_range(0..7)).collect();
    Tensor::from_vec(v, (b, t), &Device::Cpu).unwrap()
}

/// Logits and every layer's attention probabilities.
fn run(m: &Transformer, toks: &Tensor) -> (Tensor, Vec<Tensor>) {
    let out = m
        .forward_with(
            toks,
            ForwardOpts {
                capture_attention: true,
                ..Default::default()
            },
        )
        .unwrap();
    (out.logits, out.attention)
}

fn conv_weights(vm: &VarMap) -> Vec<(String, Tensor)> {
    let data = vm.data().lock().unwrap();
    let mut v: Vec<(String, Tensor)> = data
        .iter()
        .filter(|(n, _)| n.ends_with("conv.w"))
        .map(|(n, t)| (n.clone(), t.as_tensor().clone()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn the_conv_weight_covers_only_the_chosen_maps() {
    for (m, want) in [
        (maps(true, true, true), 12),
        (maps(false, false, true), 12),
        (maps(true, false, false), 12),
        (maps(true, true, false), 24),
        (maps(true, false, true), 24),
    ] {
        let cfg = TransformerConfig {
            qkv_conv_maps: m,
            ..base()
        };
        let want = if m.is_all() { 36 } else { want };
        assert_eq!(cfg.qkv_conv_channels(), want, "{m:?}");
        let (_, vm) = Transformer::build(&cfg, 1, DType::F64, &Device::Cpu).unwrap();
        let w = conv_weights(&vm);
        assert_eq!(w.len(), 2);
        for (_, t) in w {
            assert_eq!(t.dims(), &[want, 3], "{m:?}");
        }
    }
    // with a fixed head, q and k are narrower than v
    let cfg = TransformerConfig {
        fixed_heads: 1,
        qkv_conv_maps: maps(true, false, false),
        ..base()
    };
    assert_eq!(cfg.qkv_conv_channels(), 8);
}

#[test]
fn convolving_v_alone_leaves_the_attention_of_the_plain_model() {
    fused::set_enabled(false);
    let toks = tokens(3, 9);
    let plain_cfg = TransformerConfig {
        qkv_conv: 0,
        ..base()
    };
    let (plain, pvm) = Transformer::build(&plain_cfg, 2, DType::F64, &Device::Cpu).unwrap();
    perturb(&pvm, 5);
    let v_cfg = TransformerConfig {
        qkv_conv_maps: maps(false, false, true),
        ..base()
    };
    let (vonly, vvm) = Transformer::build(&v_cfg, 2, DType::F64, &Device::Cpu).unwrap();
    perturb(&vvm, 6); // moves the conv kernels off the identity
    let shared = copy_shared(&pvm, &vvm);
    assert_eq!(shared, pvm.all_vars().len());
    let (l0, a0) = run(&plain, &toks);
    for on in [false, true] {
        fused::set_enabled(on);
        let (l1, a1) = run(&vonly, &toks);
        // layer 1 sees the same input, so the same probabilities exactly; deeper layers see a
        // residual stream that the convolved values changed
        assert!(max_abs(&(&a1[0] - &a0[0]).unwrap()) < 1e-12, "fused {on}");
        assert!(max_abs(&(&a1[1] - &a0[1]).unwrap()) > 1e-6, "fused {on}");
        assert!(max_abs(&(&l1 - &l0).unwrap()) > 1e-6, "fused {on}");
    }
    // convolving q alone moves the first layer's probabilities
    let q_cfg = TransformerConfig {
        qkv_conv_maps: maps(true, false, false),
        ..base()
    };
    let (qonly, qvm) = Transformer::build(&q_cfg, 2, DType::F64, &Device::Cpu).unwrap();
    perturb(&qvm, 6);
    copy_shared(&pvm, &qvm);
    fused::set_enabled(false);
    let (_, a2) = run(&qonly, &toks);
    assert!(max_abs(&(&a2[0] - &a0[0]).unwrap()) > 1e-6);
}

#[test]
fn a_subset_is_all_three_with_an_identity_kernel_on_the_rest() {
    fused::set_enabled(false);
    let toks = tokens(2, 9);
    let all_cfg = base();
    let qv_cfg = TransformerConfig {
        qkv_conv_maps: maps(true, false, true),
        ..base()
    };
    let (qv, qvm) = Transformer::build(&qv_cfg, 4, DType::F64, &Device::Cpu).unwrap();
    perturb(&qvm, 8);
    let (all, avm) = Transformer::build(&all_cfg, 4, DType::F64, &Device::Cpu).unwrap();
    copy_shared(&qvm, &avm);
    // all-three kernel = [q rows of the subset kernel; identity on k; v rows of the subset kernel]
    let qk = 12;
    let ident = Tensor::from_vec(
        (0..qk * 3)
            .map(|i| if i % 3 == 1 { 1.0 } else { 0.0 })
            .collect::<Vec<f64>>(),
        (qk, 3),
        &Device::Cpu,
    )
    .unwrap();
    let sub = conv_weights(&qvm);
    let adata = avm.data().lock().unwrap();
    for (name, w) in &sub {
        let full = Tensor::cat(
            &[
                w.narrow(0, 0, qk).unwrap(),
                ident.clone(),
                w.narrow(0, qk, 12).unwrap(),
            ],
            0,
        )
        .unwrap();
        adata[name].set(&full).unwrap();
    }
    drop(adata);
    let (l0, a0) = run(&all, &toks);
    for on in [false, true] {
        fused::set_enabled(on);
        let (l1, a1) = run(&qv, &toks);
        assert!(max_abs(&(&l1 - &l0).unwrap()) < 1e-12, "fused {on}");
        for (x, y) in a1.iter().zip(&a0) {
            assert!(max_abs(&(x - y).unwrap()) < 1e-12, "fused {on}");
        }
    }
}

#[test]
fn fused_and_composed_agree_on_every_subset() {
    for (m, fixed) in [
        (maps(false, false, true), 0),
        (maps(true, false, false), 1),
        (maps(false, true, true), 1),
        (maps(true, false, true), 0),
    ] {
        let cfg = TransformerConfig {
            causal: fixed > 0,
            fixed_heads: fixed,
            qkv_conv_maps: m,
            ..base()
        };
        common::fused::fused_and_composed_agree(&cfg, 3, 7);
    }
}

#[test]
fn the_default_is_all_three_and_serialises_as_before() {
    let cfg = base();
    assert!(cfg.qkv_conv_maps.is_all());
    let json = serde_json::to_string(&cfg).unwrap();
    assert!(!json.contains("qkv_conv_maps"), "{json}");
    let back: TransformerConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back, cfg);
    let sub = TransformerConfig {
        qkv_conv_maps: maps(false, false, true),
        ..base()
    };
    let back: TransformerConfig =
        serde_json::from_str(&serde_json::to_string(&sub).unwrap()).unwrap();
    assert_eq!(back, sub);
    // no map chosen: the error names the field and what it accepts
    let none = TransformerConfig {
        qkv_conv_maps: maps(false, false, false),
        ..base()
    };
    let e = none.validate().unwrap_err().to_string();
    assert!(
        e.contains("qkv_conv_maps") && e.contains("query, key, value"),
        "{e}"
    );
}

#[test]
fn the_program_config_names_its_maps() {
    let c = |maps: Vec<QkvMap>| ConvolutionConfig {
        label: "x".into(),
        kernel_size: 3,
        maps,
        fixed_local: 0,
        fixed_association: 0,
    };
    assert!(c(vec![QkvMap::Query, QkvMap::Key, QkvMap::Value])
        .qkv_conv_maps()
        .is_all());
    assert_eq!(
        c(vec![QkvMap::Value]).qkv_conv_maps(),
        maps(false, false, true)
    );
    assert_eq!(c(vec![]).qkv_conv(), 0);
    // a bad name in the TOML: serde names the accepted values
    let e = toml::from_str::<ConvolutionConfig>(
        "label = \"x\"\nkernel_size = 3\nmaps = [\"query\", \"vaule\"]\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("maps") && e.contains("query") && e.contains("value"),
        "{e}"
    );
}
