//! S3 event `sequencer` ordering.
//!
//! S3 puts a `sequencer` (a hexadecimal string) in PUT and DELETE event notifications: for
//! the same object key, the greater value is the later event. Values may differ in length.
//! The AWS S3 user guide ("Event message structure", current revision) says to compare them
//! by first right-padding the shorter value with zeros and then comparing lexicographically
//! (earlier revisions of that page said "left pad"; AWS corrected it — see
//! `docs/lambda.md`). This module is the only place dropship compares sequencers, so
//! the Lambda and anything else agree.

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why a string is not a usable S3 sequencer.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SequencerError {
    /// Empty sequencer: S3 never sends one for PUT/DELETE events.
    #[error("S3 sequencer is empty; the event carries no ordering information")]
    Empty,
    /// A character outside `[0-9A-Fa-f]`.
    #[error("S3 sequencer {value:?} is not hexadecimal (invalid character at byte {offset})")]
    NotHex {
        /// The rejected value.
        value: String,
        /// Byte offset of the first invalid character.
        offset: usize,
    },
    /// Unreasonably long (S3 sends ~18 characters); refused so stored records stay small.
    #[error("S3 sequencer is {len} characters long, more than the {max} accepted")]
    TooLong {
        /// Length of the value.
        len: usize,
        /// Accepted maximum.
        max: usize,
    },
}

/// Longest sequencer accepted (S3's are 18 hex digits today).
pub const MAX_LEN: usize = 128;

/// A validated S3 sequencer, stored upper-case; `Ord` is S3's event order for one key.
///
/// Equality follows the ordering: `1` and `10` are the same position once padded.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sequencer(String);

impl Sequencer {
    /// Validate and normalise (upper-case) a sequencer string.
    pub fn parse(value: &str) -> Result<Self, SequencerError> {
        if value.is_empty() {
            return Err(SequencerError::Empty);
        }
        if value.len() > MAX_LEN {
            return Err(SequencerError::TooLong {
                len: value.len(),
                max: MAX_LEN,
            });
        }
        if let Some(offset) = value.bytes().position(|b| !b.is_ascii_hexdigit()) {
            return Err(SequencerError::NotHex {
                value: value.to_owned(),
                offset,
            });
        }
        Ok(Self(value.to_ascii_uppercase()))
    }

    /// The normalised (upper-case) hex string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Sequencer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Sequencer {
    type Error = SequencerError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Sequencer> for String {
    fn from(s: Sequencer) -> Self {
        s.0
    }
}

impl std::str::FromStr for Sequencer {
    type Err = SequencerError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl PartialEq for Sequencer {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Sequencer {}

impl Ord for Sequencer {
    fn cmp(&self, other: &Self) -> Ordering {
        compare_normalised(&self.0, &other.0)
    }
}

impl PartialOrd for Sequencer {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Compare two upper-case hex strings as if the shorter were right-padded with `0`.
fn compare_normalised(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let len = a.len().max(b.len());
    (0..len)
        .map(|i| {
            let x = a.get(i).copied().unwrap_or(b'0');
            let y = b.get(i).copied().unwrap_or(b'0');
            x.cmp(&y)
        })
        .find(|o| o.is_ne())
        .unwrap_or(Ordering::Equal)
}

/// Order two raw sequencer strings (validating both); `Greater` means `a` happened later.
pub fn compare(a: &str, b: &str) -> Result<Ordering, SequencerError> {
    Ok(Sequencer::parse(a)?.cmp(&Sequencer::parse(b)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn s(v: &str) -> Sequencer {
        Sequencer::parse(v).unwrap()
    }

    #[test]
    fn equal_length_is_plain_hex_order() {
        assert!(s("0055AED6DCD90281E5") < s("0055AED6DCD90281E6"));
        assert!(s("0055AED6DCD90281E5") < s("0055AED6DCD90281F0"));
        assert!(s("0062E99A88DC407460") > s("0055AED6DCD90281E5"));
        assert_eq!(s("00AB").cmp(&s("00AB")), Ordering::Equal);
    }

    #[test]
    fn different_lengths_pad_the_shorter_on_the_right() {
        // "1" is "10" once padded: equal to "10", greater than "0F", less than "11".
        assert_eq!(s("1").cmp(&s("10")), Ordering::Equal);
        assert!(s("1") > s("0F"));
        assert!(s("1") < s("11"));
        // A longer value sharing the prefix is later when its extra digits are non-zero.
        assert!(s("0055AED6DCD90281E5") < s("0055AED6DCD90281E501"));
        assert_eq!(
            s("0055AED6DCD90281E5").cmp(&s("0055AED6DCD90281E500")),
            Ordering::Equal
        );
        // ... and earlier when its prefix is smaller, however long it is.
        assert!(s("0055AED6DCD90281E4FFFFFF") < s("0055AED6DCD90281E5"));
        assert!(s("0A") > s("09FFFFFFFFFFFFFFFFFFFF"));
    }

    #[test]
    fn case_is_normalised() {
        assert_eq!(s("00abcdef"), s("00ABCDEF"));
        assert_eq!(s("00abcdef").as_str(), "00ABCDEF");
        assert_eq!(compare("0a", "0A").unwrap(), Ordering::Equal);
    }

    #[test]
    fn rejects_non_hex_and_empty() {
        assert_eq!(Sequencer::parse(""), Err(SequencerError::Empty));
        assert!(matches!(
            Sequencer::parse("00G1"),
            Err(SequencerError::NotHex { offset: 2, .. })
        ));
        assert!(Sequencer::parse("0x10").is_err());
        assert!(Sequencer::parse(" 10").is_err());
        assert!(matches!(
            Sequencer::parse(&"0".repeat(MAX_LEN + 1)),
            Err(SequencerError::TooLong { .. })
        ));
        assert!(compare("10", "zz").is_err());
    }

    #[test]
    fn serde_roundtrip_validates() {
        let v: Sequencer = serde_json::from_str("\"00ab\"").unwrap();
        assert_eq!(serde_json::to_string(&v).unwrap(), "\"00AB\"");
        assert!(serde_json::from_str::<Sequencer>("\"nothex\"").is_err());
    }

    proptest! {
        #[test]
        fn order_matches_padded_string_order(a in "[0-9A-F]{1,24}", b in "[0-9A-F]{1,24}") {
            let len = a.len().max(b.len());
            let pa = format!("{a:0<len$}");
            let pb = format!("{b:0<len$}");
            prop_assert_eq!(s(&a).cmp(&s(&b)), pa.cmp(&pb));
            prop_assert_eq!(s(&a).cmp(&s(&b)), s(&b).cmp(&s(&a)).reverse());
        }

        #[test]
        fn equal_length_order_is_numeric(a in any::<u64>(), b in any::<u64>()) {
            prop_assert_eq!(s(&format!("{a:016X}")).cmp(&s(&format!("{b:016X}"))), a.cmp(&b));
        }
    }
}

/// The ordering stamp hosts compare (`DROPSHIP_SEQUENCER`) for an object version whose S3
/// `LastModified` is `last_modified_secs` (Unix seconds): upper-case hex, 8 digits until
/// 2106. It comes from S3 itself, never from an event payload (anyone allowed to invoke the
/// Lambda could forge a sequencer), and it is newer than any S3 event sequencer a host may
/// have recorded before (those start with `00`), so upgraded hosts keep deploying.
pub fn order_stamp(last_modified_secs: i64) -> String {
    format!("{:08X}", last_modified_secs.max(0))
}

#[cfg(test)]
mod stamp_tests {
    use super::*;

    #[test]
    fn stamps_order_by_time_and_after_event_sequencers() {
        let a = order_stamp(1_764_400_000);
        let b = order_stamp(1_764_400_001);
        assert_eq!(a.len(), 8);
        assert!(Sequencer::parse(&a).unwrap() < Sequencer::parse(&b).unwrap());
        let event = Sequencer::parse("0062E99A88DC4074A0").unwrap();
        assert!(Sequencer::parse(&a).unwrap() > event);
        assert_eq!(order_stamp(-5), "00000000");
    }
}
