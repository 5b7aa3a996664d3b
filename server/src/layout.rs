//! Where things live inside a cluster directory (`tarn up --dir D`).

use std::path::{Path, PathBuf};

/// Number of safekeepers `tarn up` runs (a quorum of 2 out of 3).
pub const SAFEKEEPER_COUNT: usize = 3;
/// Component name of Postgres in `tarn.json` and in log file names.
pub const POSTGRES: &str = "postgres";
/// Component name of the proposer.
pub const PROPOSER: &str = "proposer";
/// Component name of the pageserver.
pub const PAGESERVER: &str = "pageserver";

/// Component name of safekeeper `id` (1-based): `safekeeper-1`, ...
pub fn safekeeper_name(id: usize) -> String {
    format!("safekeeper-{id}")
}

/// The paths of one cluster directory.
#[derive(Clone, Debug)]
pub struct ClusterLayout {
    pub dir: PathBuf,
}

impl ClusterLayout {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// `D/tarn.json`: see [`crate::manifest`].
    pub fn manifest_path(&self) -> PathBuf {
        self.dir.join("tarn.json")
    }

    /// `D/tarn.lock`: held (flock) by the `tarn up` that runs this cluster.
    pub fn lock_path(&self) -> PathBuf {
        self.dir.join("tarn.lock")
    }

    /// `D/postgres`: the Postgres data directory.
    pub fn postgres_data_dir(&self) -> PathBuf {
        self.dir.join("postgres")
    }

    /// `D/safekeeper-N`: safekeeper N's storage.
    pub fn safekeeper_dir(&self, id: usize) -> PathBuf {
        self.dir.join(safekeeper_name(id))
    }

    /// `D/proposer.json`: written by the proposer; `tarn status` prints it.
    pub fn proposer_state_file(&self) -> PathBuf {
        self.dir.join("proposer.json")
    }

    /// `D/pageserver`: the pageserver's page store.
    pub fn pageserver_dir(&self) -> PathBuf {
        self.dir.join("pageserver")
    }

    /// `D/pageserver/base`: a copy of the data directory as initdb left it (cleanly
    /// shut down), taken before Postgres's first start; the pageserver imports it once.
    pub fn pageserver_base_dir(&self) -> PathBuf {
        self.pageserver_dir().join("base")
    }

    /// `D/pageserver/base.json`: the base copy's checkpoint LSN and settings.
    pub fn pageserver_base_info(&self) -> PathBuf {
        self.pageserver_dir().join("base.json")
    }

    /// `D/logs`: stdout and stderr of every child process.
    pub fn logs_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// `D/logs/<component>.log`.
    pub fn log_path(&self, component: &str) -> PathBuf {
        self.logs_dir().join(format!("{component}.log"))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
