//! What the store keeps per `(key, lsn)` — a [`Value`] — and what a read returns —
//! [`ReconstructData`]. Both are opaque to the store: the redo layer interprets them.

use std::fmt;

use bytes::Bytes;
use tarn_wal::Lsn;

/// One version of a key.
#[derive(Clone, PartialEq, Eq)]
pub enum Value {
    /// The whole value at this LSN: an 8 KiB page or a small blob.
    Image(Bytes),
    /// A change to apply on top of the previous version. With `will_init` the change
    /// does not need a previous version (it initialises the page), so reads stop here
    /// as they do at an image.
    Delta { will_init: bool, record: Bytes },
}

/// The versions needed to build a key's value at some LSN: the newest image at or below
/// it (if the search stopped at one) and every delta above that image, oldest first.
/// The caller replays `deltas` on `image`; if `image` is `None`, the first delta is
/// either `will_init` or the key's history simply starts without one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReconstructData {
    pub image: Option<(Lsn, Bytes)>,
    /// Always [`Value::Delta`]s, ascending by LSN.
    pub deltas: Vec<(Lsn, Value)>,
}

/// How a value's kind is encoded in layer files.
pub(crate) const KIND_IMAGE: u8 = 0;
pub(crate) const KIND_DELTA: u8 = 1;
pub(crate) const KIND_DELTA_WILL_INIT: u8 = 2;

impl Value {
    /// Whether a read stops at this version (an image or an initialising delta).
    pub fn will_init(&self) -> bool {
        match self {
            Value::Image(_) => true,
            Value::Delta { will_init, .. } => *will_init,
        }
    }

    pub fn is_image(&self) -> bool {
        matches!(self, Value::Image(_))
    }

    /// The image or the record bytes.
    pub fn payload(&self) -> &Bytes {
        match self {
            Value::Image(image) => image,
            Value::Delta { record, .. } => record,
        }
    }

    pub(crate) fn kind_code(&self) -> u8 {
        match self {
            Value::Image(_) => KIND_IMAGE,
            Value::Delta {
                will_init: false, ..
            } => KIND_DELTA,
            Value::Delta {
                will_init: true, ..
            } => KIND_DELTA_WILL_INIT,
        }
    }

    /// The value of an encoded kind and payload; `None` for an unknown kind.
    pub(crate) fn from_code(kind: u8, payload: Bytes) -> Option<Value> {
        match kind {
            KIND_IMAGE => Some(Value::Image(payload)),
            KIND_DELTA => Some(Value::Delta {
                will_init: false,
                record: payload,
            }),
            KIND_DELTA_WILL_INIT => Some(Value::Delta {
                will_init: true,
                record: payload,
            }),
            _ => None,
        }
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Image(image) => write!(f, "Image({} bytes)", image.len()),
            Value::Delta { will_init, record } => {
                write!(
                    f,
                    "Delta({} bytes{})",
                    record.len(),
                    if *will_init { ", will_init" } else { "" }
                )
            }
        }
    }
}

impl ReconstructData {
    /// Whether the key has no version at or below the LSN read.
    pub fn is_empty(&self) -> bool {
        self.image.is_none() && self.deltas.is_empty()
    }
}
