//! The fused kernels with their large products on OpenBLAS (the choice on AVX-512 machines)
//! against the composed candle ops: sizes above the threshold where the kernels split a
//! product across threads, so OpenBLAS's row blocks and both transposed layouts are exercised,
//! in the whole fused block (pre-LN GELU and post-LN ReLU) and in the single kernels (with a
//! q/k/v convolution, which the fused block leaves to them).
//! Its own test binary because the GEMM choice is process-wide.

mod common;

use attnlab::nn::blas::{self, Gemm};
use attnlab::nn::{fused_block, Activation, NormPlacement, TransformerConfig};

#[test]
fn fused_kernels_on_openblas_agree_with_composed_ops() {
    assert!(
        blas::set(Gemm::OpenBlas),
        "the GEMM was chosen before the test"
    );
    let base = TransformerConfig {
        vocab_size: 9,
        max_len: 24,
        d_model: 32,
        n_heads: 4,
        n_layers: 2,
        ..Default::default()
    };
    let cfgs = [
        base.clone(),
        TransformerConfig {
            causal: true,
            ..base.clone()
        },
        TransformerConfig {
            causal: true,
            norm: NormPlacement::Post,
            activation: Activation::Relu,
            ..base.clone()
        },
        TransformerConfig {
            qkv_conv: 3,
            ..base
        },
    ];
    for cfg in cfgs {
        common::fused::fused_and_composed_agree(&cfg, 16, 24);
    }
    assert!(fused_block::calls() > 0, "no block ran fused");
    assert!(blas::openblas_calls() > 0, "no product went to OpenBLAS");
}
