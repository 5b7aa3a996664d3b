//! What a load run measured, as a table for people and as JSON for scripts.

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies are recorded in nanoseconds with 3 significant digits (0.1% error) up to
/// this bound; a longer one is clamped to it (and shows as the max).
const MAX_RECORDED_LATENCY: Duration = Duration::from_secs(600);

/// A latency distribution.
#[derive(Clone, Debug)]
pub struct LatencyHistogram {
    nanos: Histogram<u64>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            nanos: Histogram::new_with_bounds(1, MAX_RECORDED_LATENCY.as_nanos() as u64, 3)
                .expect("static histogram bounds are valid"),
        }
    }
}

impl LatencyHistogram {
    pub fn record(&mut self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.saturating_record(nanos.max(1));
    }

    pub fn merge(&mut self, other: &LatencyHistogram) {
        // Same bounds on both sides, so adding cannot fail except by overflowing counts
        // of 2^64 samples.
        self.nanos
            .add(&other.nanos)
            .expect("histograms with equal bounds merge");
    }

    pub fn count(&self) -> u64 {
        self.nanos.len()
    }

    pub fn summary(&self) -> LatencySummary {
        let us = |nanos: u64| nanos as f64 / 1000.0;
        let q = |quantile: f64| us(self.nanos.value_at_quantile(quantile));
        if self.nanos.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: self.nanos.len(),
            min_us: us(self.nanos.min()),
            mean_us: self.nanos.mean() / 1000.0,
            p50_us: q(0.50),
            p90_us: q(0.90),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: us(self.nanos.max()),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub min_us: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

/// One stream's timeline after the run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StreamReport {
    pub timeline_id: String,
    pub term: u64,
    pub start_lsn: String,
    /// End of the WAL this stream sent (every append of it completed on a majority).
    pub end_lsn: String,
}

/// The result of `tarn loadgen wal`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WalLoadReport {
    pub safekeepers: Vec<String>,
    pub streams: usize,
    pub in_flight: usize,
    pub record_size_bytes: usize,
    /// Records grouped per append: appends carry at least this many WAL bytes
    /// (0: one record per append).
    pub append_size_bytes: usize,
    pub warmup_secs: f64,
    /// From the end of the warmup to the last acknowledgement of a measured append.
    pub measured_secs: f64,
    /// Appends sent after the warmup and acknowledged by a majority.
    pub appends: u64,
    pub records: u64,
    pub wal_bytes: u64,
    pub appends_per_sec: f64,
    pub records_per_sec: f64,
    pub wal_mib_per_sec: f64,
    /// Quorum append latency: from sending an append to a majority acknowledging a
    /// flush at or past its end.
    pub latency: LatencySummary,
    pub timelines: Vec<StreamReport>,
}

impl WalLoadReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("the report has only plain fields")
    }

    pub fn render_table(&self) -> String {
        let mut out = String::new();
        let grouping = if self.append_size_bytes == 0 {
            "1 record per append".to_string()
        } else {
            format!("appends of ≥ {} bytes", self.append_size_bytes)
        };
        let _ = writeln!(
            out,
            "tarn loadgen wal: {} safekeepers, {} stream(s) × {} in flight, {}-byte records, {}",
            self.safekeepers.len(),
            self.streams,
            self.in_flight,
            self.record_size_bytes,
            grouping
        );
        let _ = writeln!(
            out,
            "measured {:.2} s after {:.1} s of warmup",
            self.measured_secs, self.warmup_secs
        );
        let _ = writeln!(out);
        let _ = writeln!(out, "{:<22}{:>14}{:>16}", "", "total", "per second");
        let _ = writeln!(
            out,
            "{:<22}{:>14}{:>16.1}",
            "appends", self.appends, self.appends_per_sec
        );
        let _ = writeln!(
            out,
            "{:<22}{:>14}{:>16.1}",
            "records", self.records, self.records_per_sec
        );
        let _ = writeln!(
            out,
            "{:<22}{:>14.1}{:>16.1}",
            "WAL (MiB)",
            self.wal_bytes as f64 / (1 << 20) as f64,
            self.wal_mib_per_sec
        );
        let _ = writeln!(out);
        render_latency(&mut out, "quorum append latency", &self.latency, 0);
        out
    }
}

/// Appends a latency table (µs, `decimals` after the point) to `out`.
fn render_latency(out: &mut String, title: &str, l: &LatencySummary, decimals: usize) {
    let _ = writeln!(out, "{title} (µs, {} samples):", l.count);
    let _ = writeln!(
        out,
        "{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}",
        "min", "p50", "p90", "p99", "p99.9", "max", "mean"
    );
    let _ = writeln!(
        out,
        "{:>10.d$}{:>10.d$}{:>10.d$}{:>10.d$}{:>10.d$}{:>10.d$}{:>10.d$}",
        l.min_us,
        l.p50_us,
        l.p90_us,
        l.p99_us,
        l.p999_us,
        l.max_us,
        l.mean_us,
        d = decimals
    );
}

/// The result of `tarn loadgen getpage`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GetPageLoadReport {
    /// `pageserver ADDR` or `pread FILE`.
    pub target: String,
    /// `SPC/DB/REL`.
    pub rel: String,
    /// Blocks of the relation considered, and the hot set drawn from (`[0, hot_blocks)`).
    pub blocks: u32,
    pub hot_blocks: u32,
    /// `latest` or `historic`.
    pub lsn: String,
    /// For historic reads: LSNs were drawn from `[min_lsn, latest_lsn]`.
    pub min_lsn: Option<String>,
    pub latest_lsn: Option<String>,
    pub concurrency: usize,
    pub pipeline: usize,
    pub warmup_secs: f64,
    /// From the end of the warmup to the last measured response.
    pub measured_secs: f64,
    /// Pages read after the warmup.
    pub pages: u64,
    /// Measured requests answered with an error (not in the latency distribution).
    pub errors: u64,
    pub first_error: Option<String>,
    pub pages_per_sec: f64,
    /// From writing a request to reading its page.
    pub latency: LatencySummary,
}

impl GetPageLoadReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("the report has only plain fields")
    }

    pub fn render_table(&self) -> String {
        let mut out = String::new();
        let lsn = match (&self.min_lsn, &self.latest_lsn) {
            (Some(min), Some(latest)) => format!("historic LSNs in [{min}, {latest}]"),
            _ => "the latest LSN".to_string(),
        };
        let _ = writeln!(
            out,
            "tarn loadgen getpage: {}, rel {}, {} of {} blocks, {}, {} connection(s) × {} pipelined",
            self.target,
            self.rel,
            self.hot_blocks,
            self.blocks,
            lsn,
            self.concurrency,
            self.pipeline
        );
        let _ = writeln!(
            out,
            "measured {:.2} s after {:.1} s of warmup: {} pages, {:.1} pages/s, {} errors",
            self.measured_secs, self.warmup_secs, self.pages, self.pages_per_sec, self.errors
        );
        if let Some(e) = &self.first_error {
            let _ = writeln!(out, "first error: {e}");
        }
        let _ = writeln!(out);
        render_latency(&mut out, "page read latency", &self.latency, 1);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_reports_quantiles_in_microseconds() {
        let mut h = LatencyHistogram::default();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        // 3 significant digits: within 0.1%.
        assert!((s.p50_us - 500.0).abs() <= 1.0, "{s:?}");
        assert!((s.p99_us - 990.0).abs() <= 1.0, "{s:?}");
        assert!((s.max_us - 1000.0).abs() <= 1.0, "{s:?}");
        assert!((s.min_us - 1.0).abs() <= 0.01, "{s:?}");
    }

    #[test]
    fn merged_histograms_count_both() {
        let mut a = LatencyHistogram::default();
        let mut b = LatencyHistogram::default();
        a.record(Duration::from_micros(10));
        b.record(Duration::from_micros(20));
        b.record(Duration::from_secs(3600)); // clamped, still counted
        a.merge(&b);
        assert_eq!(a.count(), 3);
        assert!(a.summary().max_us >= MAX_RECORDED_LATENCY.as_micros() as f64 * 0.999);
    }

    #[test]
    fn empty_histogram_summarises_to_zeros() {
        assert_eq!(
            LatencyHistogram::default().summary(),
            LatencySummary::default()
        );
    }
}
