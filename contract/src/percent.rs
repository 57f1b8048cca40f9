//! Percent-encoding, the one implementation in the workspace.
//!
//! Every place that escapes bytes into an ASCII alphabet uses it, each with its own
//! [`Alphabet`]: object metadata values (S3 keeps only ASCII), the `CopySource` of a
//! rollback (a URI path and query), and deploy-record names (a version id must never add a
//! path segment). Decoding is strict: a broken escape or invalid UTF-8 is `None`, never a
//! guess; S3 event keys additionally read `+` as a space ([`Plus::Space`]).

/// Which bytes stay as they are, and the escape character for the rest (`<escape>XX`,
/// upper-case hex of each UTF-8 byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alphabet {
    /// Bytes kept besides ASCII letters and digits.
    pub keep: &'static [u8],
    /// The escape character.
    pub escape: u8,
}

/// Object metadata values: readable, ASCII-only, and decodable back to any Unicode.
pub const METADATA: Alphabet = Alphabet {
    keep: b" ._~/:@+=,-",
    escape: b'%',
};
/// A URI path such as a `CopySource` key: RFC 3986 unreserved bytes and `/`.
pub const URI_PATH: Alphabet = Alphabet {
    keep: b"-_.~/",
    escape: b'%',
};
/// A URI query value such as a `versionId`: RFC 3986 unreserved bytes only.
pub const URI_COMPONENT: Alphabet = Alphabet {
    keep: b"-_.~",
    escape: b'%',
};
/// A name inside a deploy-record key: no `.` or `/`, so it can never add a path segment or
/// collide with `latest.json`; `~` escapes, which S3 keys carry without quoting.
pub const RECORD_NAME: Alphabet = Alphabet {
    keep: b"-_",
    escape: b'~',
};

/// How `+` decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plus {
    /// `+` is itself (metadata values).
    Literal,
    /// `+` is a space (form encoding, as S3 event notifications encode keys).
    Space,
}

impl Alphabet {
    fn keeps(&self, b: u8) -> bool {
        b.is_ascii_alphanumeric() || self.keep.contains(&b)
    }
}

/// Encodes `value`: kept bytes as they are, every other byte as `<escape>XX`.
pub fn encode(value: &str, alphabet: &Alphabet) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if alphabet.keeps(b) {
            out.push(b as char);
        } else {
            out.push(alphabet.escape as char);
            out.push_str(&format!("{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes (and `+` as `plus` says); `None` on a malformed escape or bytes
/// that are not UTF-8.
pub fn decode(value: &str, plus: Plus) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = value.get(i + 1..i + 3)?;
                if !hex.bytes().all(|h| h.is_ascii_hexdigit()) {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus == Plus::Space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_alphabet_keeps_its_bytes_and_escapes_the_rest() {
        assert_eq!(encode("feature/x y+z", &METADATA), "feature/x y+z");
        assert_eq!(encode("100% 'é'", &METADATA), "100%25 %27%C3%A9%27");
        assert_eq!(
            encode("releases/shop/prod.tar.gz", &URI_PATH),
            "releases/shop/prod.tar.gz"
        );
        assert_eq!(encode("a/b+c d", &URI_PATH), "a/b%2Bc%20d");
        assert_eq!(encode("3HL4kq/J+x=", &URI_COMPONENT), "3HL4kq%2FJ%2Bx%3D");
        assert_eq!(encode("../latest", &RECORD_NAME), "~2E~2E~2Flatest");
    }

    #[test]
    fn decoding_is_strict_and_round_trips() {
        for text in ["a b", "日本語/ブランチ", "100%", "'$(x)'\n", "a+b"] {
            assert_eq!(
                decode(&encode(text, &METADATA), Plus::Literal).as_deref(),
                Some(text)
            );
        }
        assert_eq!(decode("a%20b+c", Plus::Space).as_deref(), Some("a b c"));
        assert_eq!(decode("a+b", Plus::Literal).as_deref(), Some("a+b"));
        assert_eq!(decode("caf%C3%A9", Plus::Space).as_deref(), Some("café"));
        for bad in ["%4", "%zz", "%FF", "%+1", "bad%"] {
            assert_eq!(decode(bad, Plus::Literal), None, "{bad}");
        }
    }
}
