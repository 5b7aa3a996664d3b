//! Domain identifiers shared by every WAL component: log positions, terms and ids.

use std::fmt;
use std::str::FromStr;

/// A byte position in the PostgreSQL write-ahead log (XLogRecPtr).
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const INVALID: Lsn = Lsn(0);
    pub const MAX: Lsn = Lsn(u64::MAX);

    /// Byte offset of this LSN inside its segment.
    pub fn segment_offset(self, segment_size_bytes: u64) -> u64 {
        self.0 % segment_size_bytes
    }

    /// Segment number (XLogSegNo) that holds this LSN.
    pub fn segment_number(self, segment_size_bytes: u64) -> u64 {
        self.0 / segment_size_bytes
    }

    /// Offset of this LSN inside its WAL page.
    pub fn page_offset(self, page_size_bytes: u64) -> u64 {
        self.0 % page_size_bytes
    }

    /// Rounds up to a multiple of 8, as Postgres's MAXALIGN does for record starts.
    pub fn max_align(self) -> Lsn {
        Lsn((self.0 + 7) & !7)
    }

    pub fn checked_sub(self, other: Lsn) -> Option<u64> {
        self.0.checked_sub(other.0)
    }

    pub fn plus(self, bytes: u64) -> Lsn {
        Lsn(self.0 + bytes)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid LSN {0:?}: expected the form X/Y in hexadecimal, e.g. 0/16B3748")]
pub struct ParseLsnError(pub String);

impl FromStr for Lsn {
    type Err = ParseLsnError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError(s.to_string());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

/// A Paxos term: a proposer's ballot number. Higher terms supersede lower ones.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    Debug,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Term(pub u64);

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Identifies one timeline (one linear WAL history) in tarn.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub struct TimelineId(pub u128);

impl fmt::Display for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid timeline id {0:?}: expected 32 hexadecimal digits")]
pub struct ParseTimelineIdError(pub String);

impl FromStr for TimelineId {
    type Err = ParseTimelineIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 32 {
            return Err(ParseTimelineIdError(s.to_string()));
        }
        u128::from_str_radix(s, 16)
            .map(TimelineId)
            .map_err(|_| ParseTimelineIdError(s.to_string()))
    }
}

/// The database system identifier from `pg_control` (IDENTIFY_SYSTEM's `systemid`).
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, Default, Debug, serde::Serialize, serde::Deserialize,
)]
pub struct SystemId(pub u64);

impl fmt::Display for SystemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Identifies one safekeeper node in a quorum.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    Debug,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sk-{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips_through_text() {
        let lsn = Lsn(0x1_016B_3748);
        assert_eq!(lsn.to_string(), "1/16B3748");
        assert_eq!("1/16B3748".parse::<Lsn>(), Ok(lsn));
        assert!("16B3748".parse::<Lsn>().is_err());
        assert!("x/1".parse::<Lsn>().is_err());
    }

    #[test]
    fn max_align_rounds_up_to_eight() {
        assert_eq!(Lsn(17).max_align(), Lsn(24));
        assert_eq!(Lsn(24).max_align(), Lsn(24));
    }
}
