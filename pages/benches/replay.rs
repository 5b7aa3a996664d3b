//! Delta replay speed: nanoseconds per replayed delta for the chains of
//! `tests/support/workload.rs`, through `tarn_pages::reconstruct::replay` (what
//! GetPage@LSN and compaction run).
//!
//! Two shapes per chain kind: the whole chain (an image and 256 deltas: replay's
//! steady state) and the chain cut into windows of an image and 3 deltas (what a
//! GetPage at the default image threshold mostly replays; the image copy and the page
//! allocation are counted in). Each figure is the best of several rounds.
//!
//! ```sh
//! cargo bench -p tarn-pages --bench replay            # every chain
//! cargo bench -p tarn-pages --bench replay -- heap    # chains named *heap*
//! ```

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tarn_pages::reconstruct::replay;
use tarn_pages::store::ReconstructData;

#[path = "../tests/support/workload.rs"]
mod workload;

const CHAIN: usize = 256;
const WINDOW: usize = 3;
const ROUNDS: usize = 7;
const ROUND_TIME: Duration = Duration::from_millis(200);

/// Best-of-rounds nanoseconds per delta for replaying every item of `chains`.
fn measure(chains: &[(tarn_pages::store::Key, ReconstructData)]) -> f64 {
    let deltas: usize = chains.iter().map(|(_, data)| data.deltas.len()).sum();
    let mut best = f64::MAX;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let mut passes = 0u64;
        while start.elapsed() < ROUND_TIME {
            for (key, data) in chains {
                let replayed = replay(*key, data).expect("the chain replays");
                black_box(replayed);
            }
            passes += 1;
        }
        let nanos = start.elapsed().as_nanos() as f64;
        best = best.min(nanos / (passes as f64 * deltas as f64));
    }
    best
}

/// The chain cut into windows: the page after each `WINDOW`-th delta as the image,
/// the next `WINDOW` deltas on top.
fn windows(
    key: tarn_pages::store::Key,
    data: &ReconstructData,
) -> Vec<(tarn_pages::store::Key, ReconstructData)> {
    let mut out = Vec::new();
    let mut start = 0;
    while start + WINDOW <= data.deltas.len() {
        let prefix = ReconstructData {
            image: data.image.clone(),
            deltas: data.deltas[..start].to_vec(),
        };
        let (page, _) = replay(key, &prefix).expect("the prefix replays");
        let image_lsn = data.deltas[start.max(1) - 1].0;
        out.push((
            key,
            ReconstructData {
                image: Some((image_lsn, Bytes::copy_from_slice(page.as_bytes()))),
                deltas: data.deltas[start..start + WINDOW].to_vec(),
            },
        ));
        start += WINDOW;
    }
    out
}

fn main() {
    // `cargo bench` passes `--bench`; a word without dashes picks the chains whose
    // name contains it.
    let filter = std::env::args()
        .skip(1)
        .find(|arg| !arg.starts_with('-'))
        .unwrap_or_default();
    let workloads: Vec<_> = workload::all(CHAIN)
        .into_iter()
        .filter(|workload| workload.name.contains(filter.as_str()))
        .collect();
    println!(
        "{:<18} {:>7} {:>8} {:>14} {:>16}",
        "chain", "deltas", "records", "ns/delta whole", "ns/delta image+3"
    );
    let mut all_whole = Vec::new();
    let mut all_windows = Vec::new();
    for workload in &workloads {
        let whole = vec![(workload.key, workload.data.clone())];
        let cut = windows(workload.key, &workload.data);
        let whole_ns = measure(&whole);
        let cut_ns = measure(&cut);
        println!(
            "{:<18} {:>7} {:>8} {:>14.0} {:>16.0}",
            workload.name,
            workload.deltas(),
            workload.records,
            whole_ns,
            cut_ns
        );
        all_whole.extend(whole);
        all_windows.extend(cut);
    }
    println!(
        "{:<18} {:>7} {:>8} {:>14.0} {:>16.0}",
        "all",
        all_whole
            .iter()
            .map(|(_, data)| data.deltas.len())
            .sum::<usize>(),
        workloads.iter().map(|w| w.records).sum::<usize>(),
        measure(&all_whole),
        measure(&all_windows)
    );
}
