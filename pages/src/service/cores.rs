//! The pageserver's cores: timelines partitioned across thread-per-core glommio
//! executors, shared-nothing. A branch reads through to its ancestors' stores, so the
//! unit of partitioning is a branch tree: every timeline of a tree lives on the core
//! its root maps to (`root id mod cores`).
//!
//! Each core owns its timelines' stores, ingest and reads; connection threads only
//! decode frames and hand each request, as a [`Job`], to the owning core's mailbox
//! (found in the shared [`TimelineDirectory`]). A core's loop answers the jobs that can
//! be answered (a read waits until ingest reaches its LSN, at most until its
//! deadline), ingests a chunk of committed WAL per timeline, flushes when due, and
//! sleeps on its mailbox when there is nothing to do.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tarn_io::{CoreIndex, MailboxReceiver};
use tarn_wal::{Lsn, TimelineId};

use super::protocol::{ErrorCode, Request, Response};
use super::timeline::{ServedTimeline, WalSource, error};
use crate::RedoSettings;
use crate::store::{Ancestor, StoreConfig, StoreError, TimelineStore};

/// A core with nothing to do waits this long on its mailbox before it polls the
/// safekeepers again.
const IDLE_WAIT: Duration = Duration::from_millis(10);

/// One request on its way to the core that serves its timeline.
pub(crate) struct Job {
    pub request: Request,
    pub deadline: Instant,
    pub reply: SyncSender<Response>,
}

/// What every connection thread and core knows about a timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimelineEntry {
    pub core: CoreIndex,
    /// `(parent, branch LSN)` of a branch.
    pub ancestor: Option<(TimelineId, Lsn)>,
}

/// Which core serves each timeline. Filled at start from the timelines on disk and
/// by cores as they create branches.
#[derive(Debug, Default)]
pub struct TimelineDirectory {
    entries: Mutex<BTreeMap<TimelineId, TimelineEntry>>,
}

impl TimelineDirectory {
    pub fn get(&self, id: TimelineId) -> Option<TimelineEntry> {
        self.lock().get(&id).copied()
    }

    pub fn all(&self) -> Vec<(TimelineId, TimelineEntry)> {
        self.lock().iter().map(|(id, e)| (*id, *e)).collect()
    }

    pub(crate) fn insert(&self, id: TimelineId, entry: TimelineEntry) {
        self.lock().insert(id, entry);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<TimelineId, TimelineEntry>> {
        // Critical sections are single map operations: a poisoned map is consistent.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The directory of timeline `id` under the pageserver's timelines directory.
pub fn timeline_dir(timelines_dir: &Path, id: TimelineId) -> PathBuf {
    timelines_dir.join(id.to_string())
}

/// Reads which timelines exist under `timelines_dir` and assigns each tree to a core.
pub fn scan_timelines(
    timelines_dir: &Path,
    cores: usize,
) -> Result<BTreeMap<TimelineId, TimelineEntry>, StoreError> {
    let mut ancestors: BTreeMap<TimelineId, Option<(TimelineId, Lsn)>> = BTreeMap::new();
    let entries = std::fs::read_dir(timelines_dir).map_err(|source| StoreError::Io {
        op: "list",
        path: timelines_dir.to_path_buf(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| StoreError::Io {
            op: "list",
            path: timelines_dir.to_path_buf(),
            source,
        })?;
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(|n| n.parse::<TimelineId>().ok()) else {
            // The pageserver's directory also holds its base copy.
            tracing::debug!(name = ?name, "not a timeline");
            continue;
        };
        match TimelineStore::recorded_ancestor(&entry.path()) {
            Ok(ancestor) => {
                ancestors.insert(id, ancestor);
            }
            // A directory a crash left before its metadata was written holds nothing.
            Err(StoreError::NotATimeline { path }) => {
                tracing::warn!(path = %path.display(), "ignoring a timeline directory without metadata");
            }
            Err(e) => return Err(e),
        }
    }
    let mut out = BTreeMap::new();
    for (&id, &ancestor) in &ancestors {
        let root = root_of(id, &ancestors).map_err(|detail| StoreError::Corrupt {
            path: timeline_dir(timelines_dir, id),
            offset: 0,
            detail,
        })?;
        out.insert(
            id,
            TimelineEntry {
                core: owner_core(root, cores),
                ancestor,
            },
        );
    }
    Ok(out)
}

fn root_of(
    id: TimelineId,
    ancestors: &BTreeMap<TimelineId, Option<(TimelineId, Lsn)>>,
) -> Result<TimelineId, String> {
    let mut at = id;
    for _ in 0..=ancestors.len() {
        match ancestors.get(&at) {
            Some(Some((parent, _))) => at = *parent,
            Some(None) => return Ok(at),
            None => return Err(format!("its ancestor {at} does not exist")),
        }
    }
    Err("its ancestry has a cycle".to_string())
}

/// The core that serves the tree rooted at `root`.
pub fn owner_core(root: TimelineId, cores: usize) -> CoreIndex {
    CoreIndex((root.0 % cores as u128) as usize)
}

/// What a core needs to serve its timelines.
#[derive(Clone)]
pub struct CoreConfig {
    pub timelines_dir: PathBuf,
    pub store: StoreConfig,
    pub settings: RedoSettings,
    pub source: WalSource,
}

/// One core: its timelines and the jobs waiting for them.
pub(crate) struct Core {
    index: CoreIndex,
    config: CoreConfig,
    directory: Arc<TimelineDirectory>,
    timelines: HashMap<TimelineId, ServedTimeline>,
    pending: Vec<Job>,
}

impl Core {
    /// Opens every timeline the directory assigns to `index`, parents first.
    pub fn open(
        index: CoreIndex,
        config: CoreConfig,
        directory: Arc<TimelineDirectory>,
    ) -> Result<Core, StoreError> {
        let mine: Vec<(TimelineId, TimelineEntry)> = directory
            .all()
            .into_iter()
            .filter(|(_, e)| e.core == index)
            .collect();
        let mut core = Core {
            index,
            config,
            directory,
            timelines: HashMap::new(),
            pending: Vec::new(),
        };
        let mut left = mine;
        while !left.is_empty() {
            let before = left.len();
            let mut i = 0;
            while i < left.len() {
                let (id, entry) = left[i];
                let ready = entry
                    .ancestor
                    .is_none_or(|(parent, _)| core.timelines.contains_key(&parent));
                if ready {
                    core.open_timeline(id, entry)?;
                    left.swap_remove(i);
                } else {
                    i += 1;
                }
            }
            if left.len() == before {
                let (id, _) = left[0];
                return Err(StoreError::Corrupt {
                    path: timeline_dir(&core.config.timelines_dir, id),
                    offset: 0,
                    detail: "its ancestor is not served by the same core".into(),
                });
            }
        }
        Ok(core)
    }

    fn open_timeline(&mut self, id: TimelineId, entry: TimelineEntry) -> Result<(), StoreError> {
        let dir = timeline_dir(&self.config.timelines_dir, id);
        let ancestor = entry.ancestor.map(|(parent, lsn)| Ancestor {
            timeline_id: parent,
            lsn,
            store: self.timelines[&parent].store().clone(),
        });
        let settings = match entry.ancestor {
            Some((parent, _)) => self.timelines[&parent].settings(),
            None => self.config.settings,
        };
        let store = TimelineStore::open_branch(&dir, self.config.store.clone(), ancestor)?;
        tracing::info!(core = self.index.0, timeline = %id, durable_lsn = %store.durable_lsn(), "serving timeline");
        let served = ServedTimeline::new(
            id,
            Rc::new(RefCell::new(store)),
            settings,
            &self.config.source,
        );
        self.timelines.insert(id, served);
        Ok(())
    }

    /// Runs until `shutdown` is set, then flushes every timeline.
    pub async fn run(
        mut self,
        mut mailbox: MailboxReceiver<Job>,
        shutdown: Arc<AtomicBool>,
    ) -> Result<(), StoreError> {
        while !shutdown.load(Ordering::Relaxed) {
            while let Some(job) = mailbox.try_recv() {
                self.pending.push(job);
            }
            self.answer_ready();
            let mut progressed = false;
            let ids: Vec<TimelineId> = self.timelines.keys().copied().collect();
            for id in ids {
                if let Some(timeline) = self.timelines.get_mut(&id) {
                    progressed |= timeline.ingest_step();
                    timeline.maybe_flush(false)?;
                }
            }
            if progressed {
                glommio::yield_if_needed().await;
            } else {
                // Wakes at once for a job; otherwise polls the safekeepers again after
                // IDLE_WAIT. `recv` is cancel-safe: a message stays queued on timeout.
                let next = glommio::timer::timeout(IDLE_WAIT, async { Ok(mailbox.recv().await) });
                if let Ok(Some(job)) = next.await {
                    self.pending.push(job);
                }
            }
        }
        for timeline in self.timelines.values_mut() {
            timeline.maybe_flush(true)?;
            tracing::info!(timeline = %timeline.id(), durable_lsn = %timeline.store().borrow().durable_lsn(), "timeline stopped");
        }
        Ok(())
    }

    fn answer_ready(&mut self) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.pending.len() {
            let job = &self.pending[i];
            let (request, deadline) = (job.request, job.deadline);
            // Cloned so the job can stay queued; a SyncSender clone is a refcount.
            let reply = job.reply.clone();
            match self.answer(&request, now, deadline, &reply) {
                Some(response) => {
                    self.pending.swap_remove(i);
                    // The connection may be gone; nothing to do then.
                    let _ = reply.send(response);
                }
                None => i += 1,
            }
        }
    }

    /// The (last) answer to `request` if it can be given now. Streamed answers (a
    /// basebackup's chunks) go to `reply` first.
    fn answer(
        &mut self,
        request: &Request,
        now: Instant,
        deadline: Instant,
        reply: &SyncSender<Response>,
    ) -> Option<Response> {
        let id = request.timeline()?;
        let Some(timeline) = self.timelines.get(&id) else {
            return Some(error(
                ErrorCode::TimelineNotFound,
                format!("timeline {id} is not served by core {}", self.index.0),
            ));
        };
        match *request {
            Request::CreateBranch { branch, lsn, .. } => {
                let wanted = if lsn == Lsn::INVALID {
                    timeline.ingested_lsn()
                } else {
                    lsn
                };
                if wanted > timeline.ingested_lsn() && now < deadline {
                    return None;
                }
                Some(self.create_branch(id, branch, wanted))
            }
            Request::Basebackup { lsn, .. } => {
                if lsn > timeline.ingested_lsn().max_align() && now < deadline {
                    return None;
                }
                // Blocks this core while the client drains the stream (the reply
                // channel holds one chunk): simple, bounded memory, and basebackups
                // are rare next to page reads.
                Some(timeline.basebackup(lsn, reply))
            }
            _ => timeline.answer(request, now, deadline),
        }
    }

    fn create_branch(&mut self, parent: TimelineId, branch: TimelineId, lsn: Lsn) -> Response {
        let Some(served) = self.timelines.get(&parent) else {
            return error(
                ErrorCode::TimelineNotFound,
                format!("timeline {parent} does not exist"),
            );
        };
        if self.directory.get(branch).is_some() {
            return error(
                ErrorCode::BadRequest,
                format!("timeline {branch} exists already"),
            );
        }
        let ingested = served.ingested_lsn();
        if lsn > ingested {
            return error(
                ErrorCode::Timeout,
                format!(
                    "cannot branch {parent} at {lsn}: its WAL is ingested only up to {ingested}"
                ),
            );
        }
        // A compute booted on the branch writes its first record here, and records
        // start MAXALIGNed; no record starts between an end and its alignment, so the
        // parent's state is the same at both.
        let lsn = lsn.max_align();
        let parent_store = served.store().clone();
        let settings = served.settings();
        // The parent's history must be durable up to the branch point before the
        // branch exists: after a restart the branch's reads below it go to the parent
        // at once. Freezing at or above the branch point also tells the parent's store
        // that its history reaches it when the last records had no page effects.
        {
            let Ok(mut store) = parent_store.try_borrow_mut() else {
                return error(ErrorCode::Internal, "the parent store is in use".into());
            };
            let up_to = store.last_lsn().max(lsn);
            if let Err(e) = store.freeze(up_to).and_then(|()| store.flush()) {
                return error(ErrorCode::Internal, format!("making {parent} durable: {e}"));
            }
        }
        let dir = timeline_dir(&self.config.timelines_dir, branch);
        let ancestor = Ancestor {
            timeline_id: parent,
            lsn,
            store: parent_store,
        };
        let store = match TimelineStore::create_branch(&dir, ancestor, self.config.store.clone()) {
            Ok(store) => store,
            Err(e @ StoreError::BranchOutsideHistory { .. }) => {
                return error(ErrorCode::BadRequest, e.to_string());
            }
            Err(e) => return error(ErrorCode::Internal, e.to_string()),
        };
        let served = ServedTimeline::new(
            branch,
            Rc::new(RefCell::new(store)),
            settings,
            &self.config.source,
        );
        self.timelines.insert(branch, served);
        self.directory.insert(
            branch,
            TimelineEntry {
                core: self.index,
                ancestor: Some((parent, lsn)),
            },
        );
        tracing::info!(%parent, %branch, %lsn, "created a branch");
        Response::BranchCreated { lsn }
    }
}
