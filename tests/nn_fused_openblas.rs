//! The fused kernels with their large products on OpenBLAS (the choice on AVX-512 machines)
//! against the composed candle ops: sizes above the threshold where the kernels split a
//! product across threads, so OpenBLAS's row blocks and both transposed layouts are exercised.
//! Its own test binary because the GEMM choice is process-wide.

mod common;

use attnlab::nn::blas::{self, Gemm};
use attnlab::nn::TransformerConfig;

#[test]
fn fused_kernels_on_openblas_agree_with_composed_ops() {
    assert!(
        blas::set(Gemm::OpenBlas),
        "the GEMM was chosen before the test"
    );
    for causal in [false, true] {
        let cfg = TransformerConfig {
            vocab_size: 9,
            max_len: 24,
            d_model: 32,
            n_heads: 4,
            n_layers: 2,
            causal,
            ..Default::default()
        };
        common::fused::fused_and_composed_agree(&cfg, 16, 24);
    }
    assert!(blas::openblas_calls() > 0, "no product went to OpenBLAS");
}
