//! Test helpers: a temporary directory under /tmp removed on drop, and running a
//! future on one glommio executor through `run_per_core`.

#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tarn_io::{HexSegmentNaming, SegmentedLogConfig, run_per_core};

pub const MIB: u64 = 1 << 20;

pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        Self::new_in(Path::new("/tmp"), tag)
    }

    pub fn new_in(parent: &Path, tag: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = parent.join(format!(
            "tarn-io-test-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `f()` on a single glommio executor and returns its output.
pub fn on_executor<T, F, Fut>(f: F) -> T
where
    F: Fn() -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let mut outputs = run_per_core(1, "io-test", move |_core| f()).expect("run executor");
    outputs.pop().expect("one output")
}

pub fn config(segment_size_bytes: u64) -> SegmentedLogConfig {
    SegmentedLogConfig::new(segment_size_bytes, HexSegmentNaming)
}

/// Deterministic test bytes: position-dependent so misplaced bytes show.
pub fn pattern(pos: u64, len: usize, salt: u8) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((pos + i).wrapping_mul(31) as u8) ^ salt)
        .collect()
}
