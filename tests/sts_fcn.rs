//! The FCN lower bound: `eigh` equals the closed form; every trained FCN's test MSE is at least its
//! own certificate, which is at least the bound over all first layers of its width; and at width
//! far below T d the FCN stays far above the transformer.

use attnlab::sts::config::{FcnConfig, FcnOptimizer};
use attnlab::sts::fcn::train_fcn;
use attnlab::sts::task::TaskConfig;
use attnlab::sts::theory::{
    fcn_certificate, fcn_lower_bound_closed_form, fcn_lower_bound_eigh, EncodingSample,
};
use ndarray::Array2;
use proptest::prelude::*;
use rand::Rng;

/// Fixed seed: the same cases every run, so CI is reproducible (3000 cases were run once by hand).
const CASES: u32 = 48;

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, rng_seed: proptest::test_runner::RngSeed::Fixed(0), ..ProptestConfig::default() })]
    #[test]
    fn eigh_bound_equals_the_closed_form(t in 1usize..10, d in 1usize..5, qf in 0.0f64..1.0, mf in 0.0f64..1.2) {
        let q = 1 + ((t - 1) as f64 * qf) as usize;
        let m = (mf * (t * d) as f64) as usize;
        let closed = fcn_lower_bound_closed_form(t, d, q, m).unwrap();
        let eigh = fcn_lower_bound_eigh(t, d, q, m).unwrap();
        prop_assert!((closed - eigh).abs() < 1e-9, "T={t} d={d} q={q} m={m}: {closed} vs {eigh}");
    }

    #[test]
    fn any_first_layer_certificate_is_at_least_the_bound(t in 2usize..8, d in 1usize..4, qf in 0.0f64..1.0, m in 1usize..20, seed in 0u64..100) {
        let q = 1 + ((t - 1) as f64 * qf) as usize;
        let mut rng = attnlab::rng::seeded(seed);
        let a = Array2::from_shape_fn((m, t * d), |_| rng.gen_range(-1.0..1.0));
        let cert = fcn_certificate(&a, t, d, q).unwrap();
        let bound = fcn_lower_bound_closed_form(t, d, q, m).unwrap();
        prop_assert!(cert >= bound - 1e-9, "certificate {cert} below the bound {bound}");
        prop_assert!(cert <= d as f64 / q as f64 + 1e-9, "certificate {cert} above the target energy");
    }
}

#[test]
fn certificate_of_the_best_first_layer_attains_the_bound() {
    // Rows spanning the top eigenvectors of S: the 1/T block (x-mean directions) first.
    let (t, d, q) = (6, 2, 2);
    let mut a = Array2::zeros((d, t * d));
    for k in 0..d {
        for i in 0..t {
            a[[k, i * d + k]] = 1.0;
        }
    }
    let cert = fcn_certificate(&a, t, d, q).unwrap();
    assert!((cert - fcn_lower_bound_closed_form(t, d, q, d).unwrap()).abs() < 1e-12);
}

#[test]
fn trained_fcns_respect_their_certificates_and_stay_far_above_the_transformer() {
    let task = TaskConfig::new(16, 8, 3, 64);
    let transformer_floor = EncodingSample::draw(&task, 8192, None, 0)
        .unwrap()
        .minimise(100.0)
        .loss
        .mean;
    for (width, depth, optimizer, lr) in [
        (16, 2, FcnOptimizer::Adam, 3e-3),
        (64, 3, FcnOptimizer::Adam, 3e-3),
        (32, 2, FcnOptimizer::Gd, 0.05),
    ] {
        let cfg = FcnConfig {
            width,
            depth,
            optimizer,
            lr,
            steps: 1500,
            batch: 256,
        };
        let r = train_fcn(&task, &cfg, 8192, 1).unwrap();
        eprintln!("m={width} depth={depth} {optimizer:?}: MSE {:.4} +- {:.4}, certificate {:.4}, bound {:.4}", r.test_mse, r.test_mse_stderr, r.certificate, r.lower_bound);
        assert!(
            r.test_mse >= r.certificate - 3.0 * r.test_mse_stderr,
            "MSE {} below its certificate {}",
            r.test_mse,
            r.certificate
        );
        assert!(r.certificate >= r.lower_bound - 1e-9);
        if width * 4 <= task.t * task.d {
            assert!(
                r.test_mse > 3.0 * transformer_floor,
                "m={width}: FCN {} not far above the transformer floor {transformer_floor}",
                r.test_mse
            );
        }
        // Training did something: the net beats predicting zero (target energy d/q).
        assert!(r.test_mse < task.d as f64 / task.q as f64);
    }
}
