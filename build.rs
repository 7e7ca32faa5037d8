// Fails early with the fix when the system OpenBLAS (needed by ndarray-linalg) is missing, and
// hashes the sources each paper's figures depend on (its own folder plus everything shared), so
// a figure's cache key changes when the code behind it does.
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

const PAPERS: [&str; 3] = ["sts", "lego", "grokking"];

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src");
    let found = [
        "/usr/lib/x86_64-linux-gnu/libopenblas.so",
        "/usr/lib/aarch64-linux-gnu/libopenblas.so",
        "/usr/lib/libopenblas.so",
        "/usr/local/lib/libopenblas.so",
    ]
    .iter()
    .any(|p| std::path::Path::new(p).exists());
    if !found && std::env::var_os("ATTNLAB_SKIP_BLAS_CHECK").is_none() {
        panic!("system OpenBLAS not found: run `scripts/install-system-deps` (installs libopenblas-dev), or set ATTNLAB_SKIP_BLAS_CHECK=1 if it lives elsewhere");
    }
    let mut all = Vec::new();
    files(Path::new("src"), &mut all);
    all.sort();
    let paper_of = |p: &Path| {
        let first = p.strip_prefix("src").ok()?.components().next()?;
        let name = first.as_os_str().to_str()?;
        PAPERS.contains(&name).then_some(name.to_string())
    };
    for paper in PAPERS {
        let mut h = Sha256::new();
        for p in &all {
            if paper_of(p).is_some_and(|q| q != paper) {
                continue;
            }
            let bytes = std::fs::read(p).unwrap_or_default();
            h.update(p.to_string_lossy().as_bytes());
            h.update([0]);
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(&bytes);
        }
        let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        println!(
            "cargo:rustc-env=ATTNLAB_SOURCE_HASH_{}={hex}",
            paper.to_uppercase()
        );
    }
}
