//! The in-memory layer: versions ingested since the last freeze, in a sorted map. The
//! open layer takes puts in LSN order; [`InMemoryLayer::freeze`] closes it at an LSN, and
//! a flush writes the frozen layer as one level 0 delta layer file. Lost on a crash by
//! design: the WAL above the durable LSN is ingested again.

use std::collections::BTreeMap;
use std::ops::Range;

use tarn_wal::Lsn;

use super::key::Key;
use super::value::Value;
use super::{Result, StoreError};

pub(crate) struct InMemoryLayer {
    /// The lowest LSN this layer may hold.
    start_lsn: Lsn,
    /// Set by freeze: the highest LSN this layer may hold.
    frozen_at: Option<Lsn>,
    /// Per key, its versions ascending by LSN.
    versions: BTreeMap<Key, Vec<(Lsn, Value)>>,
    /// The highest LSN put.
    last_lsn: Option<Lsn>,
    value_count: usize,
    payload_bytes: usize,
}

impl InMemoryLayer {
    pub fn new(start_lsn: Lsn) -> InMemoryLayer {
        InMemoryLayer {
            start_lsn,
            frozen_at: None,
            versions: BTreeMap::new(),
            last_lsn: None,
            value_count: 0,
            payload_bytes: 0,
        }
    }

    pub fn start_lsn(&self) -> Lsn {
        self.start_lsn
    }

    pub fn frozen_at(&self) -> Option<Lsn> {
        self.frozen_at
    }

    pub fn last_lsn(&self) -> Option<Lsn> {
        self.last_lsn
    }

    pub fn is_empty(&self) -> bool {
        self.value_count == 0
    }

    /// Bytes of images and records held (not counting the map's own overhead).
    pub fn payload_bytes(&self) -> usize {
        self.payload_bytes
    }

    /// Adds a version. LSNs must not decrease across puts, and a key holds one value per
    /// LSN (a record changing one page twice must combine its changes).
    pub fn put(&mut self, key: Key, lsn: Lsn, value: Value) -> Result<()> {
        assert!(self.frozen_at.is_none(), "put into a frozen layer");
        let floor = self.last_lsn.unwrap_or(self.start_lsn);
        if lsn < floor {
            return Err(StoreError::OutOfOrder { key, lsn, floor });
        }
        let versions = self.versions.entry(key).or_default();
        if versions.last().is_some_and(|(last, _)| *last == lsn) {
            return Err(StoreError::DuplicateVersion { key, lsn });
        }
        self.payload_bytes += value.payload().len();
        self.value_count += 1;
        versions.push((lsn, value));
        self.last_lsn = Some(lsn);
        Ok(())
    }

    /// Closes the layer: it holds exactly the versions with LSN in `start..=up_to`.
    pub fn freeze(&mut self, up_to: Lsn) {
        assert!(self.frozen_at.is_none(), "layer frozen twice");
        assert!(up_to >= self.start_lsn && self.last_lsn.is_none_or(|l| l <= up_to));
        self.frozen_at = Some(up_to);
    }

    /// Pushes the versions of `key` at or below `hi` onto `out`, newest first, stopping
    /// after the first image or will_init delta; returns whether it stopped at one.
    pub fn collect(&self, key: Key, hi: Lsn, out: &mut Vec<(Lsn, Value)>) -> bool {
        let Some(versions) = self.versions.get(&key) else {
            return false;
        };
        let below = versions.partition_point(|(lsn, _)| *lsn <= hi);
        for (lsn, value) in versions[..below].iter().rev() {
            out.push((*lsn, value.clone()));
            if value.will_init() {
                return true;
            }
        }
        false
    }

    /// Keys in `range` with a version at or below `lsn`.
    pub fn keys_at<'a>(
        &'a self,
        range: &Range<Key>,
        lsn: Lsn,
    ) -> impl Iterator<Item = Key> + use<'a> {
        self.versions
            .range(range.clone())
            .filter(move |(_, versions)| versions.first().is_some_and(|(first, _)| *first <= lsn))
            .map(|(key, _)| *key)
    }

    /// The newest LSN of the key in this layer.
    pub fn latest_lsn_of(&self, key: Key) -> Option<Lsn> {
        self.versions
            .get(&key)
            .and_then(|v| v.last())
            .map(|(lsn, _)| *lsn)
    }

    /// Every version, in `(key, lsn)` order.
    pub fn iter(&self) -> impl Iterator<Item = (Key, Lsn, &Value)> {
        self.versions.iter().flat_map(|(key, versions)| {
            versions.iter().map(move |(lsn, value)| (*key, *lsn, value))
        })
    }
}
