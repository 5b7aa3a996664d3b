//! `tarn status`: a read-only look at a cluster directory: which components are alive,
//! what Postgres says about its standbys, what the proposer last wrote about itself, and
//! where each safekeeper's log stands.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use tarn_wal::TimelineId;

use crate::layout::{self, ClusterLayout};
use crate::manifest::{ClusterManifest, ManifestError};
use crate::os;
use crate::postgres::{PgBinaries, PgCluster};

/// Bound on the psql query of `pg_stat_replication`.
const REPLICATION_QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on each safekeeper status request.
const SAFEKEEPER_QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on the pageserver status request.
const PAGESERVER_QUERY_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("no tarn cluster in {}: {} not found (start one with `tarn up --dir {}`)", dir.display(), manifest.display(), dir.display())]
    NoCluster { dir: PathBuf, manifest: PathBuf },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

#[derive(Debug, Serialize)]
pub struct ClusterStatus {
    pub dir: PathBuf,
    pub system_id: u64,
    pub timeline_id: String,
    pub supervisor: ProcessStatus,
    pub components: Vec<ComponentStatus>,
    pub postgres: PostgresStatus,
    pub proposer_state: ProposerState,
    pub safekeepers: Vec<SafekeeperReport>,
    /// `None` for a cluster created before tarn up ran a pageserver.
    pub pageserver: Option<PageserverReport>,
}

/// The pageserver's answer to a status request on its GetPage service.
#[derive(Debug, Serialize)]
pub struct PageserverReport {
    pub addr: SocketAddr,
    pub last_ingested_lsn: Option<String>,
    pub durable_lsn: Option<String>,
    /// Deltas replayed per GetPage since the pageserver started.
    pub getpage_deltas: Option<GetPageDeltas>,
    pub error: Option<String>,
}

/// The distribution of deltas replayed per GetPage.
#[derive(Debug, Serialize)]
pub struct GetPageDeltas {
    pub gets: u64,
    pub deltas_replayed: u64,
    pub max: u32,
    /// The pushdown threshold ingest keeps page chains under.
    pub threshold: u32,
    pub over_threshold: u64,
    /// Non-empty buckets by powers of two, in order: `("2-3", gets)`.
    pub buckets: Vec<(String, u64)>,
}

impl GetPageDeltas {
    fn from_stats(stats: &tarn_pages::service::protocol::GetPageStats) -> GetPageDeltas {
        use tarn_pages::reconstruct::ReconstructMetrics;
        let m = &stats.metrics;
        GetPageDeltas {
            gets: m.gets,
            deltas_replayed: m.deltas_replayed,
            max: m.max_deltas,
            threshold: stats.threshold,
            over_threshold: m.over_threshold,
            buckets: m
                .histogram
                .iter()
                .enumerate()
                .filter(|(_, count)| **count > 0)
                .map(|(bucket, count)| (ReconstructMetrics::bucket_label(bucket), *count))
                .collect(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ProcessStatus {
    pub pid: Option<u32>,
    pub alive: bool,
}

#[derive(Debug, Serialize)]
pub struct ComponentStatus {
    pub name: String,
    pub pid: Option<u32>,
    pub alive: bool,
    pub log_path: PathBuf,
}

#[derive(Debug, Serialize)]
pub struct PostgresStatus {
    pub port: u16,
    pub running: bool,
    pub postmaster_pid: Option<u32>,
    pub replication: Vec<ReplicationRow>,
    /// Why `replication` could not be read, if it could not.
    pub error: Option<String>,
}

/// One row of `pg_stat_replication`.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ReplicationRow {
    pub application_name: String,
    pub state: String,
    pub sync_state: String,
    pub sent_lsn: Option<String>,
    pub write_lsn: Option<String>,
    pub flush_lsn: Option<String>,
    pub replay_lsn: Option<String>,
}

/// The proposer's state file, as written by the proposer.
#[derive(Debug, Serialize)]
pub struct ProposerState {
    pub path: PathBuf,
    pub state: Option<serde_json::Value>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct SafekeeperReport {
    pub id: usize,
    pub addr: SocketAddr,
    pub status: Option<SafekeeperView>,
    pub error: Option<String>,
}

/// The parts of a safekeeper's status that `tarn status` shows.
#[derive(Debug, Serialize)]
pub struct SafekeeperView {
    pub node_id: u64,
    pub term: u64,
    pub flush_lsn: String,
    pub commit_lsn: String,
}

/// Gathers the status of the cluster in `dir`. Only a missing or unreadable `tarn.json`
/// is an error; anything that cannot be reached is reported inside the status.
pub fn collect(dir: PathBuf) -> Result<ClusterStatus, StatusError> {
    let layout = ClusterLayout::new(dir);
    let manifest = ClusterManifest::read(&layout)?.ok_or_else(|| StatusError::NoCluster {
        dir: layout.dir.clone(),
        manifest: layout.manifest_path(),
    })?;
    let components = manifest
        .components
        .iter()
        .map(|(name, record)| ComponentStatus {
            name: name.clone(),
            pid: record.pid,
            alive: record.pid.is_some_and(os::process_is_alive),
            log_path: record.log_path.clone(),
        })
        .collect();
    let safekeepers = (1..)
        .zip(&manifest.safekeeper_ports)
        .map(|(id, port)| {
            let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, *port));
            let (status, error) = match query_safekeeper(addr, manifest.timeline_id) {
                Ok(view) => (Some(view), None),
                Err(error) => (None, Some(error)),
            };
            SafekeeperReport {
                id,
                addr,
                status,
                error,
            }
        })
        .collect();
    Ok(ClusterStatus {
        system_id: manifest.system_id,
        timeline_id: manifest.timeline_id.to_string(),
        supervisor: ProcessStatus {
            pid: manifest.supervisor_pid,
            alive: manifest.supervisor_pid.is_some_and(os::process_is_alive),
        },
        components,
        postgres: postgres_status(&layout, &manifest),
        proposer_state: proposer_state(&layout),
        safekeepers,
        pageserver: manifest
            .pageserver_port
            .map(|port| query_pageserver(port, manifest.timeline_id)),
        dir: layout.dir,
    })
}

fn query_pageserver(port: u16, timeline: TimelineId) -> PageserverReport {
    use tarn_pages::service::client::PageserverClient;
    use tarn_pages::service::protocol::{Request, Response};
    let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
    let answer = PageserverClient::connect(addr, PAGESERVER_QUERY_TIMEOUT)
        .and_then(|mut client| client.call(&Request::Status { timeline }));
    let (last_ingested_lsn, durable_lsn, getpage_deltas, error) = match answer {
        Ok(Response::Status {
            last_ingested_lsn,
            durable_lsn,
            getpage,
        }) => (
            Some(last_ingested_lsn.to_string()),
            Some(durable_lsn.to_string()),
            Some(GetPageDeltas::from_stats(&getpage)),
            None,
        ),
        Ok(other) => (
            None,
            None,
            None,
            Some(format!("unexpected answer {other:?}")),
        ),
        Err(error) => (None, None, None, Some(error.to_string())),
    };
    PageserverReport {
        addr,
        last_ingested_lsn,
        durable_lsn,
        getpage_deltas,
        error,
    }
}

/// Asks one safekeeper for its term and log positions on this cluster's timeline.
fn query_safekeeper(addr: SocketAddr, timeline_id: TimelineId) -> Result<SafekeeperView, String> {
    let status = tarn_wal::safekeeper::client::query_status(addr, SAFEKEEPER_QUERY_TIMEOUT)
        .map_err(|error| error.to_string())?;
    let timeline = status
        .timelines
        .iter()
        .find(|timeline| timeline.timeline_id == timeline_id)
        .ok_or_else(|| format!("has no timeline {timeline_id} yet"))?;
    Ok(SafekeeperView {
        node_id: status.node_id.0,
        term: timeline.term.0,
        flush_lsn: timeline.flush_lsn.to_string(),
        commit_lsn: timeline.commit_lsn.to_string(),
    })
}

fn postgres_status(layout: &ClusterLayout, manifest: &ClusterManifest) -> PostgresStatus {
    let mut status = PostgresStatus {
        port: manifest.postgres_port,
        running: false,
        postmaster_pid: None,
        replication: Vec::new(),
        error: None,
    };
    let cluster =
        PgBinaries::locate().and_then(|bins| PgCluster::open(&bins, &layout.postgres_data_dir()));
    let cluster = match cluster {
        Ok(cluster) => cluster,
        Err(error) => {
            status.error = Some(error.to_string());
            return status;
        }
    };
    status.postmaster_pid = cluster.postmaster_pid();
    status.running = status.postmaster_pid.is_some();
    if !status.running {
        status.error = Some("postgres is not running".to_string());
        return status;
    }
    let query = "SELECT application_name, state, sync_state, sent_lsn, write_lsn, flush_lsn, replay_lsn \
                 FROM pg_stat_replication ORDER BY application_name";
    match cluster.psql_with_timeout("postgres", query, REPLICATION_QUERY_TIMEOUT) {
        Ok(text) => status.replication = parse_replication_rows(&text),
        Err(error) => status.error = Some(error.to_string()),
    }
    status
}

/// Parses psql's unaligned output (`|`-separated, NULL as empty) of the query above.
fn parse_replication_rows(text: &str) -> Vec<ReplicationRow> {
    let lsn = |field: Option<&str>| field.filter(|value| !value.is_empty()).map(str::to_string);
    text.lines()
        .filter(|line| !line.is_empty())
        .map(|line| {
            let mut fields = line.split('|');
            let mut text_field = || fields.next().unwrap_or_default().to_string();
            let application_name = text_field();
            let state = text_field();
            let sync_state = text_field();
            ReplicationRow {
                application_name,
                state,
                sync_state,
                sent_lsn: lsn(fields.next()),
                write_lsn: lsn(fields.next()),
                flush_lsn: lsn(fields.next()),
                replay_lsn: lsn(fields.next()),
            }
        })
        .collect()
}

fn proposer_state(layout: &ClusterLayout) -> ProposerState {
    let path = layout.proposer_state_file();
    let (state, error) = match fs::read_to_string(&path) {
        Ok(text) => match serde_json::from_str(&text) {
            Ok(value) => (Some(value), None),
            Err(error) => (None, Some(format!("not valid JSON: {error}"))),
        },
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            (None, Some("not written yet".to_string()))
        }
        Err(error) => (None, Some(error.to_string())),
    };
    ProposerState { path, state, error }
}

/// The human-readable report.
pub fn render_table(status: &ClusterStatus) -> String {
    let mut out = String::new();
    let yes_no = |alive: bool| if alive { "alive" } else { "not running" };
    let pid = |pid: Option<u32>| pid.map_or("-".to_string(), |pid| pid.to_string());
    let _ = writeln!(out, "cluster     {}", status.dir.display());
    let _ = writeln!(out, "system id   {}", status.system_id);
    let _ = writeln!(out, "timeline id {}", status.timeline_id);
    let _ = writeln!(
        out,
        "tarn up     pid {} ({})",
        pid(status.supervisor.pid),
        yes_no(status.supervisor.alive)
    );
    let _ = writeln!(out, "\n{:<14} {:>8}  STATE", "COMPONENT", "PID");
    for component in &status.components {
        let alive = if component.name == layout::POSTGRES {
            status.postgres.running
        } else {
            component.alive
        };
        let shown_pid = if component.name == layout::POSTGRES {
            status.postgres.postmaster_pid.or(component.pid)
        } else {
            component.pid
        };
        let _ = writeln!(
            out,
            "{:<14} {:>8}  {}",
            component.name,
            pid(shown_pid),
            yes_no(alive)
        );
    }

    let _ = writeln!(
        out,
        "\npostgres (port {}) pg_stat_replication:",
        status.postgres.port
    );
    if let Some(error) = &status.postgres.error {
        let _ = writeln!(out, "  {error}");
    } else if status.postgres.replication.is_empty() {
        let _ = writeln!(out, "  no standby connected");
    } else {
        let _ = writeln!(
            out,
            "  {:<16} {:<10} {:<6} {:>12} {:>12} {:>12} {:>12}",
            "APPLICATION", "STATE", "SYNC", "SENT", "WRITE", "FLUSH", "REPLAY"
        );
        for row in &status.postgres.replication {
            let lsn = |lsn: &Option<String>| lsn.clone().unwrap_or_else(|| "-".to_string());
            let _ = writeln!(
                out,
                "  {:<16} {:<10} {:<6} {:>12} {:>12} {:>12} {:>12}",
                row.application_name,
                row.state,
                row.sync_state,
                lsn(&row.sent_lsn),
                lsn(&row.write_lsn),
                lsn(&row.flush_lsn),
                lsn(&row.replay_lsn)
            );
        }
    }

    let _ = writeln!(
        out,
        "\nproposer state ({}):",
        status.proposer_state.path.display()
    );
    match (&status.proposer_state.state, &status.proposer_state.error) {
        (Some(serde_json::Value::Object(fields)), _) => {
            for (name, value) in fields {
                let _ = writeln!(out, "  {name}: {value}");
            }
        }
        (Some(value), _) => {
            let _ = writeln!(out, "  {value}");
        }
        (None, Some(error)) => {
            let _ = writeln!(out, "  {error}");
        }
        (None, None) => {}
    }

    let _ = writeln!(
        out,
        "\n{:<14} {:<16} {:>6} {:>12} {:>12}",
        "SAFEKEEPER", "ADDRESS", "TERM", "FLUSH", "COMMIT"
    );
    for safekeeper in &status.safekeepers {
        let name = layout::safekeeper_name(safekeeper.id);
        match (&safekeeper.status, &safekeeper.error) {
            (Some(view), _) => {
                let _ = writeln!(
                    out,
                    "{:<14} {:<16} {:>6} {:>12} {:>12}",
                    name, safekeeper.addr, view.term, view.flush_lsn, view.commit_lsn
                );
            }
            (None, error) => {
                let _ = writeln!(
                    out,
                    "{:<14} {:<16} {}",
                    name,
                    safekeeper.addr,
                    error.as_deref().unwrap_or("unknown")
                );
            }
        }
    }
    if let Some(pageserver) = &status.pageserver {
        match (&pageserver.last_ingested_lsn, &pageserver.durable_lsn) {
            (Some(ingested), Some(durable)) => {
                let _ = writeln!(
                    out,
                    "\npageserver {}: last ingested LSN {ingested}, durable LSN {durable}",
                    pageserver.addr
                );
                if let Some(deltas) = &pageserver.getpage_deltas {
                    let buckets: Vec<String> = deltas
                        .buckets
                        .iter()
                        .map(|(label, count)| format!("{label}:{count}"))
                        .collect();
                    let _ = writeln!(
                        out,
                        "pageserver deltas replayed per GetPage: {} gets, max {} (threshold {}, {} over), by count {}",
                        deltas.gets,
                        deltas.max,
                        deltas.threshold,
                        deltas.over_threshold,
                        if buckets.is_empty() {
                            "-".to_string()
                        } else {
                            buckets.join(" ")
                        }
                    );
                }
            }
            _ => {
                let _ = writeln!(
                    out,
                    "\npageserver {}: {}",
                    pageserver.addr,
                    pageserver.error.as_deref().unwrap_or("no answer")
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_replication_rows_with_nulls() {
        let rows =
            parse_replication_rows("tarn_proposer|streaming|sync|0/3000148|0/3000148|0/3000148|\n");
        assert_eq!(
            rows,
            vec![ReplicationRow {
                application_name: "tarn_proposer".into(),
                state: "streaming".into(),
                sync_state: "sync".into(),
                sent_lsn: Some("0/3000148".into()),
                write_lsn: Some("0/3000148".into()),
                flush_lsn: Some("0/3000148".into()),
                replay_lsn: None,
            }]
        );
        assert!(parse_replication_rows("").is_empty());
    }
}
