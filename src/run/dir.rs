//! A run's directory: an exclusive lock while a process works in it, and the run's identity
//! (`run.json`), so a second process or a run with another config cannot mix into it.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// What makes a run this run: a hash of its serialised config, preset and seed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// SHA-256 (hex) of `description`.
    pub hash: String,
    /// The serialised (config, preset, seed), kept for a reader comparing two runs.
    pub description: String,
}

impl Identity {
    /// The identity of `config` under `preset` and `seed`.
    pub fn of<C: Serialize + ?Sized>(config: &C, preset: &str, seed: u64) -> Result<Self> {
        let description = serde_json::to_string(&(config, preset, seed))?;
        let hash = Sha256::digest(description.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Self { hash, description })
    }
}

/// An exclusive advisory lock on `<dir>/.lock`, released when dropped (or when the process dies).
pub struct Lock {
    _file: File,
}

impl Lock {
    /// Locks `dir` or fails naming the process that holds it.
    pub fn acquire(dir: &Path) -> Result<Self> {
        let path = dir.join(".lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening lock file `{}`", path.display()))?;
        if !try_lock(&file) {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.is_empty() {
                "another process".to_string()
            } else {
                format!("process {holder}")
            };
            bail!(
                "run directory `{}` is in use by {who}: wait for it to finish, or pass another output directory",
                dir.display()
            );
        }
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "{}", std::process::id())?;
        file.flush()?;
        Ok(Self { _file: file })
    }
}

#[cfg(unix)]
fn try_lock(f: &File) -> bool {
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

#[cfg(not(unix))]
fn try_lock(_f: &File) -> bool {
    true
}

/// An open, locked run directory whose identity has been checked.
pub struct RunDir {
    path: PathBuf,
    identity: Identity,
    _lock: Lock,
}

impl RunDir {
    /// Creates (or reopens) `path` for the run `identity`: locks it, and refuses a directory that
    /// holds another run.
    pub fn open(path: &Path, identity: Identity) -> Result<Self> {
        std::fs::create_dir_all(path)
            .with_context(|| format!("creating run directory `{}`", path.display()))?;
        let lock = Lock::acquire(path)?;
        let id_path = path.join("run.json");
        if id_path.exists() {
            let text = std::fs::read_to_string(&id_path)
                .with_context(|| format!("reading `{}`", id_path.display()))?;
            let held: Identity = serde_json::from_str(&text).with_context(|| {
                format!(
                    "`{}` is damaged: delete the run directory to start over",
                    id_path.display()
                )
            })?;
            if held.hash != identity.hash {
                bail!(
                    "run directory `{}` holds another run (a different config, preset or seed): pass another output directory, or delete it to start over",
                    path.display()
                );
            }
        } else {
            crate::io::write_json(&id_path, &identity)?;
        }
        Ok(Self {
            path: path.to_path_buf(),
            identity,
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }
}
