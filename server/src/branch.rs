//! `tarn branch create|list`: named branches of a cluster. A branch is a pageserver
//! timeline with a parent and an LSN (created in the pageserver, copying nothing); its
//! name lives here, in `D/branches.json`. `main` is the cluster's own timeline.
//!
//! Written atomically, like `tarn.json`.

use std::fs;
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tarn_pages::service::client::{ClientError, PageserverClient};
use tarn_pages::service::protocol::{Request, Response};
use tarn_wal::{Lsn, TimelineId};

use crate::layout::ClusterLayout;
use crate::manifest::{ClusterManifest, ManifestError, write_atomically};

/// The cluster's own timeline.
pub const MAIN: &str = "main";
/// How long a pageserver request may take: branch creation waits (up to 10 s in the
/// pageserver) for ingest to reach its LSN.
const PAGESERVER_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchRecord {
    pub name: String,
    pub timeline_id: String,
    pub parent: String,
    /// The branch point.
    pub lsn: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct BranchFile {
    branches: Vec<BranchRecord>,
}

/// A branch as the user names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Branch {
    pub name: String,
    pub timeline_id: TimelineId,
    /// `(parent name, branch LSN)`; `None` for main.
    pub parent: Option<(String, Lsn)>,
}

#[derive(Debug, thiserror::Error)]
pub enum BranchError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{} holds no cluster (no tarn.json): run `tarn up --dir {}` first", dir.display(), dir.display())]
    NoCluster { dir: PathBuf },
    #[error("the cluster in {} runs no pageserver", dir.display())]
    NoPageserver { dir: PathBuf },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is not a valid branch list: {detail}")]
    Parse { path: PathBuf, detail: String },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("no branch named {name:?} (see `tarn branch list`)")]
    Unknown { name: String },
    #[error("a branch named {name:?} exists already")]
    Exists { name: String },
    #[error("{name:?} is not a branch name: use letters, digits, '-' and '_' (at most 63)")]
    BadName { name: String },
    #[error("pageserver: {0}")]
    Pageserver(#[from] ClientError),
    #[error("the pageserver refused: {0}")]
    Refused(String),
    #[error("cannot read random bytes from /dev/urandom: {0}")]
    Random(io::Error),
    #[error(
        "{text:?} is not a time: use YYYY-MM-DD HH:MM:SS[.ffffff][Z|+HH[:MM]] (UTC unless an offset is given) or @UNIX_SECONDS"
    )]
    BadTime { text: String },
    #[error("finding the LSN of {time}: {source}")]
    Pitr {
        time: String,
        source: tarn_pages::service::pitr::PitrError,
    },
}

/// Where a new branch starts on its parent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BranchPoint {
    /// The parent's newest ingested LSN.
    Latest,
    Lsn(Lsn),
    /// The first commit after this time (microseconds since the Unix epoch), or the
    /// newest LSN if nothing committed after it: what was committed at the time.
    Time {
        unix_micros: i64,
        text: String,
    },
}

/// The branches of the cluster in `layout`.
pub struct Branches {
    layout: ClusterLayout,
    manifest: ClusterManifest,
    file: BranchFile,
}

impl Branches {
    pub fn open(layout: &ClusterLayout) -> Result<Branches, BranchError> {
        let manifest = ClusterManifest::read(layout)?.ok_or_else(|| BranchError::NoCluster {
            dir: layout.dir.clone(),
        })?;
        let path = branches_path(layout);
        let file = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| BranchError::Parse {
                path: path.clone(),
                detail: e.to_string(),
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => BranchFile::default(),
            Err(source) => return Err(BranchError::Read { path, source }),
        };
        Ok(Branches {
            layout: layout.clone(),
            manifest,
            file,
        })
    }

    pub fn manifest(&self) -> &ClusterManifest {
        &self.manifest
    }

    /// Every branch, main first, then in creation order.
    pub fn all(&self) -> Result<Vec<Branch>, BranchError> {
        let mut out = vec![Branch {
            name: MAIN.to_string(),
            timeline_id: self.manifest.timeline_id,
            parent: None,
        }];
        for record in &self.file.branches {
            out.push(self.parse(record)?);
        }
        Ok(out)
    }

    pub fn get(&self, name: &str) -> Result<Branch, BranchError> {
        self.all()?
            .into_iter()
            .find(|b| b.name == name)
            .ok_or_else(|| BranchError::Unknown {
                name: name.to_string(),
            })
    }

    fn parse(&self, record: &BranchRecord) -> Result<Branch, BranchError> {
        let bad = |detail: String| BranchError::Parse {
            path: branches_path(&self.layout),
            detail,
        };
        let timeline_id = record
            .timeline_id
            .parse::<TimelineId>()
            .map_err(|e| bad(format!("branch {:?}: {e:?}", record.name)))?;
        let lsn = record
            .lsn
            .parse::<Lsn>()
            .map_err(|e| bad(format!("branch {:?}: {e:?}", record.name)))?;
        Ok(Branch {
            name: record.name.clone(),
            timeline_id,
            parent: Some((record.parent.clone(), lsn)),
        })
    }

    /// The pageserver's address.
    pub fn pageserver(&self) -> Result<SocketAddr, BranchError> {
        let port = self
            .manifest
            .pageserver_port
            .ok_or_else(|| BranchError::NoPageserver {
                dir: self.layout.dir.clone(),
            })?;
        Ok(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)))
    }

    /// Creates branch `name` of `parent` at `point`. Returns it and how long the
    /// pageserver took to create it.
    pub fn create(
        &mut self,
        name: &str,
        parent: &str,
        point: &BranchPoint,
    ) -> Result<(Branch, Duration), BranchError> {
        check_name(name)?;
        if self.all()?.iter().any(|b| b.name == name) {
            return Err(BranchError::Exists {
                name: name.to_string(),
            });
        }
        let parent = self.get(parent)?;
        let lsn = match point {
            BranchPoint::Latest => None,
            BranchPoint::Lsn(lsn) => Some(*lsn),
            BranchPoint::Time { unix_micros, text } => self
                .lsn_for_time(&parent, *unix_micros)
                .map_err(|source| BranchError::Pitr {
                    time: text.clone(),
                    source,
                })?,
        };
        let branch_id = random_timeline_id()?;
        let mut client = PageserverClient::connect(self.pageserver()?, PAGESERVER_TIMEOUT)?;
        let started = Instant::now();
        let answer = client.call(&Request::CreateBranch {
            timeline: parent.timeline_id,
            branch: branch_id,
            lsn: lsn.unwrap_or(Lsn::INVALID),
        })?;
        let took = started.elapsed();
        let at = match answer {
            Response::BranchCreated { lsn } => lsn,
            Response::Error { message, .. } => return Err(BranchError::Refused(message)),
            other => return Err(BranchError::Refused(format!("unexpected answer {other:?}"))),
        };
        self.file.branches.push(BranchRecord {
            name: name.to_string(),
            timeline_id: branch_id.to_string(),
            parent: parent.name.clone(),
            lsn: at.to_string(),
        });
        self.save()?;
        Ok((
            Branch {
                name: name.to_string(),
                timeline_id: branch_id,
                parent: Some((parent.name, at)),
            },
            took,
        ))
    }

    /// The start of the first commit after `unix_micros` in `branch`'s history (its
    /// ancestors' up to its branch point, then its own), or `None` if none committed
    /// after it.
    fn lsn_for_time(
        &self,
        branch: &Branch,
        unix_micros: i64,
    ) -> Result<Option<Lsn>, tarn_pages::service::pitr::PitrError> {
        use tarn_pages::service::pitr::{first_commit_after, timestamptz_from_unix_micros};
        let time = timestamptz_from_unix_micros(unix_micros);
        let source = tarn_pages::service::server::WalSource {
            safekeepers: self
                .manifest
                .safekeeper_ports
                .iter()
                .map(|port| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, *port)))
                .collect(),
            segment_size_bytes: tarn_wal::proposer::service::POSTGRES_SEGMENT_SIZE_BYTES,
        };
        // Oldest first: each ancestor's WAL counts up to the branch point of its child.
        let all = self.all().unwrap_or_default();
        let mut chain = vec![(branch.timeline_id, None::<Lsn>)];
        let mut at = branch.clone();
        while let Some((parent_name, lsn)) = at.parent.clone() {
            let Some(parent) = all.iter().find(|b| b.name == parent_name) else {
                break;
            };
            chain.push((parent.timeline_id, Some(lsn)));
            at = parent.clone();
        }
        chain.reverse();
        // The bound of each timeline is the branch point recorded with its child.
        let bounds: Vec<Option<Lsn>> = chain
            .iter()
            .skip(1)
            .map(|(_, lsn)| *lsn)
            .chain(std::iter::once(None))
            .collect();
        for ((timeline, _), bound) in chain.iter().zip(bounds) {
            let Some(status) = timeline_status(&source.safekeepers, *timeline) else {
                // A branch no compute wrote to has no WAL of its own.
                continue;
            };
            let to = bound.unwrap_or(status.commit_lsn);
            if to <= status.timeline_start_lsn {
                continue;
            }
            if let Some(lsn) = first_commit_after(
                &source,
                *timeline,
                status.timeline_start_lsn,
                to,
                time,
                PITR_SCAN_TIMEOUT,
            )? {
                return Ok(Some(lsn));
            }
        }
        Ok(None)
    }

    fn save(&self) -> Result<(), BranchError> {
        let path = branches_path(&self.layout);
        let mut bytes = serde_json::to_vec_pretty(&self.file).map_err(|e| BranchError::Write {
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        bytes.push(b'\n');
        write_atomically(&path, &bytes).map_err(|source| BranchError::Write { path, source })
    }

    /// The branch tree, one line per branch, children indented under their parent.
    pub fn render_tree(&self) -> Result<String, BranchError> {
        let all = self.all()?;
        let mut out = String::new();
        render_children(&all, None, 0, &mut out);
        Ok(out)
    }
}

fn render_children(all: &[Branch], parent: Option<&str>, depth: usize, out: &mut String) {
    for branch in all {
        let of = branch.parent.as_ref().map(|(p, _)| p.as_str());
        if of != parent {
            continue;
        }
        let indent = "  ".repeat(depth);
        match &branch.parent {
            Some((p, lsn)) => out.push_str(&format!(
                "{indent}{} (timeline {}, from {p} at {lsn})\n",
                branch.name, branch.timeline_id
            )),
            None => out.push_str(&format!(
                "{indent}{} (timeline {})\n",
                branch.name, branch.timeline_id
            )),
        }
        render_children(all, Some(&branch.name), depth + 1, out);
    }
}

fn check_name(name: &str) -> Result<(), BranchError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(BranchError::BadName {
            name: name.to_string(),
        })
    }
}

fn branches_path(layout: &ClusterLayout) -> PathBuf {
    layout.dir.join("branches.json")
}

/// How long the scan of one timeline's WAL for `--time` may wait for WAL.
const PITR_SCAN_TIMEOUT: Duration = Duration::from_secs(120);

/// The safekeepers' view of `timeline` with the most committed WAL.
fn timeline_status(
    safekeepers: &[SocketAddr],
    timeline: TimelineId,
) -> Option<tarn_wal::protocol::TimelineStatus> {
    safekeepers
        .iter()
        .filter_map(|addr| tarn_wal::safekeeper::query_status(*addr, Duration::from_secs(2)).ok())
        .flat_map(|status| status.timelines)
        .filter(|t| t.timeline_id == timeline)
        .max_by_key(|t| t.commit_lsn)
}

/// Parses `YYYY-MM-DD[ T]HH:MM:SS[.ffffff][Z|+HH[:MM]|-HH[:MM]]` (UTC when no offset) or
/// `@SECONDS[.ffffff]` (Unix time) into microseconds since the Unix epoch.
pub fn parse_time(text: &str) -> Result<i64, BranchError> {
    let bad = || BranchError::BadTime {
        text: text.to_string(),
    };
    let t = text.trim();
    if let Some(unix) = t.strip_prefix('@') {
        let (secs, frac) = unix.split_once('.').unwrap_or((unix, ""));
        let secs: i64 = secs.parse().map_err(|_| bad())?;
        return Ok(secs * 1_000_000 + parse_fraction(frac).ok_or_else(bad)?);
    }
    let num = |s: &str| -> Result<i64, BranchError> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse::<i64>().map_err(|_| bad())
    };
    let (date, rest) = t.split_at_checked(10).ok_or_else(bad)?;
    let mut date_parts = date.split('-');
    let (year, month, day) = match (date_parts.next(), date_parts.next(), date_parts.next()) {
        (Some(y), Some(m), Some(d)) if y.len() == 4 && m.len() == 2 && d.len() == 2 => {
            (num(y)?, num(m)?, num(d)?)
        }
        _ => return Err(bad()),
    };
    let rest = rest
        .strip_prefix(' ')
        .or_else(|| rest.strip_prefix('T'))
        .ok_or_else(bad)?;
    let (clock, zone) = match rest.find(['Z', 'z', '+', '-']) {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let mut hms_parts = hms.split(':');
    let (hour, minute, second) = match (hms_parts.next(), hms_parts.next(), hms_parts.next()) {
        (Some(h), Some(m), Some(s)) if hms_parts.next().is_none() => (num(h)?, num(m)?, num(s)?),
        _ => return Err(bad()),
    };
    let offset_seconds = match zone {
        "" | "Z" | "z" => 0,
        _ => {
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            let digits = &zone[1..];
            let (h, m) = digits.split_once(':').unwrap_or(match digits.len() {
                4 => digits.split_at(2),
                _ => (digits, "0"),
            });
            sign * (num(h)? * 3600 + num(m)? * 60)
        }
    };
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(bad());
    }
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_seconds;
    Ok(seconds * 1_000_000 + parse_fraction(frac).ok_or_else(bad)?)
}

/// Up to six digits of a fraction of a second, as microseconds.
fn parse_fraction(frac: &str) -> Option<i64> {
    if frac.is_empty() {
        return Some(0);
    }
    if frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: i64 = frac.parse().ok()?;
    Some(digits * 10i64.pow(6 - frac.len() as u32))
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A fresh timeline id (random, as `tarn up` makes the first one).
pub fn random_timeline_id() -> Result<TimelineId, BranchError> {
    let mut bytes = [0u8; 16];
    fs::File::open(Path::new("/dev/urandom"))
        .and_then(|mut file| file.read_exact(&mut bytes))
        .map_err(BranchError::Random)?;
    Ok(TimelineId(u128::from_be_bytes(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_postgres_prints_them() {
        // SELECT extract(epoch from '2026-11-21 10:01:00.25+00'::timestamptz) = 1795255260.25
        assert_eq!(
            parse_time("2026-11-21 10:01:00.25+00").ok(),
            Some(1_795_255_260_250_000)
        );
        assert_eq!(
            parse_time("2026-11-21T10:01:00.25Z").ok(),
            Some(1_795_255_260_250_000)
        );
        assert_eq!(
            parse_time("2026-11-21 12:01:00.25+02:00").ok(),
            Some(1_795_255_260_250_000)
        );
        assert_eq!(
            parse_time("2026-11-21 05:31:00.25-0430").ok(),
            Some(1_795_255_260_250_000)
        );
        assert_eq!(
            parse_time("2026-11-21 10:01:00.25").ok(),
            Some(1_795_255_260_250_000)
        );
        assert_eq!(
            parse_time("@1795255260.25").ok(),
            Some(1_795_255_260_250_000)
        );
        assert_eq!(parse_time("1970-01-01 00:00:00").ok(), Some(0));
        assert_eq!(
            parse_time("2000-01-01 00:00:00Z").ok(),
            Some(946_684_800_000_000)
        );
        for bad in [
            "",
            "yesterday",
            "2026-13-01 00:00:00",
            "2026-11-21",
            "2026-11-21 10:61:00",
            "@x",
            "2026-11-21 10:00:00.1234567",
        ] {
            assert!(parse_time(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("dev-1_x").is_ok());
        for bad in ["", "a b", "a/b", "..", &"x".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tree_indents_children_under_parents() {
        let branch = |name: &str, parent: Option<&str>| Branch {
            name: name.into(),
            timeline_id: TimelineId(1),
            parent: parent.map(|p| (p.to_string(), Lsn(0x10))),
        };
        let all = [
            branch("main", None),
            branch("dev", Some("main")),
            branch("fix", Some("dev")),
            branch("pitr", Some("main")),
        ];
        let mut out = String::new();
        render_children(&all, None, 0, &mut out);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("main "), "{out}");
        assert!(lines[1].starts_with("  dev "), "{out}");
        assert!(lines[2].starts_with("    fix "), "{out}");
        assert!(lines[3].starts_with("  pitr "), "{out}");
    }
}
