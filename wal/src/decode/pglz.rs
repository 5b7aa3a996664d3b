//! PGLZ decompression (`wal_compression = pglz`): Postgres's own LZ77 variant.
//! Mirrors pglz_decompress (common/pg_lzcompress.c) with `check_complete = true`.
//!
//! The stream is a sequence of groups: one control byte, then up to 8 items, one per
//! control bit from the least significant: a 0 bit is a literal byte; a 1 bit is a
//! match tag of 2 or 3 bytes copying `len` bytes from `off` bytes back in the output:
//! `len - 3` in the low nibble of the first byte, `off` in its high nibble (bits 8..12)
//! and the second byte (bits 0..8); a length nibble of 15 means a third byte adds up
//! to 255 more.

/// Why a PGLZ stream did not decompress.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PglzError {
    #[error("match tag truncated at input byte {at}")]
    TruncatedTag { at: u32 },
    #[error("match at output byte {at} refers {offset} bytes back")]
    BadOffset { at: u32, offset: u32 },
    #[error(
        "decompressed {produced} of {expected} bytes and consumed {consumed} of {input} input \
         bytes"
    )]
    Incomplete {
        produced: u32,
        expected: u32,
        consumed: u32,
        input: u32,
    },
}

/// Error fields are u32 to keep errors small; page images are far below 4 GiB.
fn narrow(value: usize) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

/// Decompresses `source` into exactly `dest.len()` bytes; all of `source` must be used.
pub fn pglz_decompress(source: &[u8], dest: &mut [u8]) -> Result<(), PglzError> {
    let mut sp = 0;
    let mut dp = 0;
    // Bounded: every item consumes at least one input byte.
    while sp < source.len() && dp < dest.len() {
        let mut control = source[sp];
        sp += 1;
        for _ in 0..8 {
            if sp >= source.len() || dp >= dest.len() {
                break;
            }
            if control & 1 != 0 {
                let Some(&[first, second]) = source.get(sp..sp + 2) else {
                    return Err(PglzError::TruncatedTag { at: narrow(sp) });
                };
                let mut len = usize::from(first & 0x0f) + 3;
                let offset = (usize::from(first & 0xf0) << 4) | usize::from(second);
                sp += 2;
                if len == 18 {
                    let Some(&extra) = source.get(sp) else {
                        return Err(PglzError::TruncatedTag { at: narrow(sp) });
                    };
                    len += usize::from(extra);
                    sp += 1;
                }
                // Offset 0 would loop forever below; beyond the output start would read
                // outside the buffer.
                if offset == 0 || offset > dp {
                    return Err(PglzError::BadOffset {
                        at: narrow(dp),
                        offset: narrow(offset),
                    });
                }
                len = len.min(dest.len() - dp);
                copy_match(dest, dp, offset, len);
                dp += len;
            } else {
                dest[dp] = source[sp];
                dp += 1;
                sp += 1;
            }
            control >>= 1;
        }
    }
    if dp != dest.len() || sp != source.len() {
        return Err(PglzError::Incomplete {
            produced: narrow(dp),
            expected: narrow(dest.len()),
            consumed: narrow(sp),
            input: narrow(source.len()),
        });
    }
    Ok(())
}

/// Copies `len` bytes from `offset` bytes before `at` to `at`, where the two ranges may
/// overlap (a run repeating with period `offset`). As in pglz_decompress: copy whole
/// periods, doubling the period each time, until the rest does not overlap.
/// Requires `0 < offset <= at` and `at + len <= dest.len()`.
fn copy_match(dest: &mut [u8], mut at: usize, mut offset: usize, mut len: usize) {
    while offset < len {
        dest.copy_within(at - offset..at, at);
        len -= offset;
        at += offset;
        offset += offset;
    }
    dest.copy_within(at - offset..at - offset + len, at);
}

/// A simple PGLZ compressor for tests: greedy, taking the longest match among the last
/// few positions with the same 3-byte prefix within the 4095-byte window. Its output is
/// valid input for [`pglz_decompress`] (and for Postgres's), not byte-identical to
/// pglz_compress.
#[cfg(test)]
pub(crate) fn pglz_compress_for_tests(source: &[u8]) -> Vec<u8> {
    const MAX_OFFSET: usize = 0x0fff;
    const MAX_LEN: usize = 18 + 255;
    const CANDIDATES: usize = 16;
    let mut recent: std::collections::HashMap<[u8; 3], Vec<usize>> = Default::default();
    let remember = |recent: &mut std::collections::HashMap<[u8; 3], Vec<usize>>, at: usize| {
        if let Some(key) = source.get(at..at + 3) {
            let key = [key[0], key[1], key[2]];
            recent.entry(key).or_default().push(at);
        }
    };
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < source.len() {
        let control_at = out.len();
        out.push(0u8);
        for bit in 0..8 {
            if pos >= source.len() {
                break;
            }
            let mut best = (0, 0);
            if let Some(key) = source.get(pos..pos + 3) {
                let candidates = recent.get(&[key[0], key[1], key[2]]);
                for &from in candidates.into_iter().flatten().rev().take(CANDIDATES) {
                    let offset = pos - from;
                    if offset > MAX_OFFSET {
                        break;
                    }
                    let mut len = 0;
                    while len < MAX_LEN
                        && pos + len < source.len()
                        && source[pos + len] == source[pos + len - offset]
                    {
                        len += 1;
                    }
                    if len > best.1 {
                        best = (offset, len);
                    }
                }
            }
            let (offset, len) = best;
            if len >= 3 {
                out[control_at] |= 1 << bit;
                let nibble = (len - 3).min(15);
                out.push((((offset >> 8) as u8) << 4) | nibble as u8);
                out.push(offset as u8);
                if nibble == 15 {
                    out.push((len - 18) as u8);
                }
                for at in pos..pos + len {
                    remember(&mut recent, at);
                }
                pos += len;
            } else {
                out.push(source[pos]);
                remember(&mut recent, pos);
                pos += 1;
            }
        }
    }
    out
}
