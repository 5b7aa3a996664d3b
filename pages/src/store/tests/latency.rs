//! A measurement, not a check: put, flush and compaction throughput and `get` latency
//! on a 32 MiB relation after 160 000 small deltas. Run with
//! `cargo test --release -p tarn-pages store::tests::latency -- --ignored --nocapture`.

use std::time::{Duration, Instant};

use tarn_wal::Lsn;

use super::read_amplification::{PAGE_BYTES, Workload};
use super::{TempDir, TestRng};
use crate::store::StoreConfig;

const BLOCKS: u32 = 4096;
const ROUNDS: usize = 40;
const DELTAS_PER_ROUND: usize = 4000;
const GETS: usize = 20_000;

#[test]
#[ignore = "measurement; run in release with --nocapture"]
fn get_latency() {
    let dir = TempDir::new("latency");
    let config = StoreConfig::default();
    let started = Instant::now();
    let mut workload = Workload::new(dir.path(), config.clone(), BLOCKS, 1);
    let load = started.elapsed();
    let mut rng = TestRng::new(2);
    let started = Instant::now();
    for _ in 0..ROUNDS {
        workload.round(&mut rng, DELTAS_PER_ROUND, true);
    }
    let ingest = started.elapsed();
    println!(
        "load {BLOCKS} pages of {PAGE_BYTES} B: {load:?}; {ROUNDS} rounds of {DELTAS_PER_ROUND} deltas \
         (put, freeze, flush, compact with checked fake redo): {ingest:?}; {} layers",
        workload.store.layer_count()
    );

    for (label, lsn_of) in [("latest", None), ("historic", Some(()))] {
        workload.store.reset_metrics();
        let mut latencies = Vec::with_capacity(GETS);
        for _ in 0..GETS {
            let key = workload.keys[rng.below(u64::from(BLOCKS)) as usize];
            let lsn = match lsn_of {
                None => workload.store.durable_lsn(),
                Some(()) => Lsn(0x1000 + rng.below(workload.lsn.0 - 0x1000)),
            };
            let started = Instant::now();
            let data = workload.store.get(key, lsn).expect("get");
            latencies.push(started.elapsed());
            std::hint::black_box(data);
        }
        latencies.sort();
        let at =
            |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
        let mean = latencies.iter().sum::<Duration>() / latencies.len() as u32;
        let m = workload.store.metrics();
        println!(
            "get ({label} LSN, page cache warm): mean {mean:?} p50 {:?} p99 {:?} max {:?}; per get: \
             {:.2} layers visited (max {}), {:.2} blocks read, {:.2} deltas (max {})",
            at(0.5),
            at(0.99),
            at(1.0),
            m.layers_visited as f64 / m.gets as f64,
            m.max_layers_visited,
            m.blocks_read as f64 / m.gets as f64,
            m.deltas_returned as f64 / m.gets as f64,
            m.max_deltas_returned,
        );
    }
}
