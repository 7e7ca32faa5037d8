// Fails early with the fix when the system OpenBLAS (needed by ndarray-linalg) is missing.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
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
}
