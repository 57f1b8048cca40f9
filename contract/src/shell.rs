//! The one shell-value encoder.
//!
//! Every value the Lambda hands to `deploy-on-host.sh` travels as an `export NAME='value'`
//! line rendered here. Values are strictly single-quoted: inside single quotes bash performs
//! no expansion at all (no `$`, no backticks, no backslash escapes, no globbing), so the only
//! character that needs care is `'` itself, written as `'\''` (close, escaped quote, reopen).
//! NUL is the one byte a bash variable cannot hold; it is refused rather than silently cut.
//! No other code in dropship may interpolate a value into shell text.

use thiserror::Error;

/// Why a value or variable name cannot be rendered for the host script.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ShellValueError {
    /// The value contains a NUL byte, which bash variables cannot carry (it would truncate).
    #[error(
        "value{} contains a NUL byte at byte offset {offset}; bash variables cannot hold NUL, \
         remove it from the input",
        name.as_deref().map(|n| format!(" of {n}")).unwrap_or_default()
    )]
    Nul {
        /// The variable the value was meant for, when known.
        name: Option<String>,
        /// Byte offset of the first NUL.
        offset: usize,
    },
    /// The variable name is not `[A-Z_][A-Z0-9_]*`.
    #[error(
        "shell variable name {name:?} is invalid: names must match [A-Z_][A-Z0-9_]* \
         (upper-case ASCII letters, digits, underscore; not starting with a digit)"
    )]
    InvalidName {
        /// The rejected name.
        name: String,
    },
}

/// Quote `value` so that bash reads it back byte for byte and executes nothing.
///
/// The result is always wrapped in single quotes, also for the empty string (`''`).
pub fn quote(value: &str) -> Result<String, ShellValueError> {
    if let Some(offset) = value.bytes().position(|b| b == 0) {
        return Err(ShellValueError::Nul { name: None, offset });
    }
    let quotes = value.bytes().filter(|&b| b == b'\'').count();
    let mut out = String::with_capacity(value.len() + 2 + quotes * 3);
    out.push('\'');
    for ch in value.chars() {
        if ch == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(ch);
        }
    }
    out.push('\'');
    Ok(out)
}

/// Whether `name` is an acceptable exported variable name (`[A-Z_][A-Z0-9_]*`).
pub fn is_valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_uppercase() || b == b'_' => {}
        _ => return false,
    }
    bytes.all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// Render `export NAME='value'` lines, one per variable, each ending in `\n`.
///
/// This is the header the Lambda puts in front of the host script; every name is validated
/// and every value goes through [`quote`].
pub fn render_exports(vars: &[(&str, &str)]) -> Result<String, ShellValueError> {
    let mut out = String::new();
    for (name, value) in vars {
        if !is_valid_name(name) {
            return Err(ShellValueError::InvalidName {
                name: (*name).to_owned(),
            });
        }
        let quoted = quote(value).map_err(|e| match e {
            ShellValueError::Nul { offset, .. } => ShellValueError::Nul {
                name: Some((*name).to_owned()),
                offset,
            },
            other => other,
        })?;
        out.push_str("export ");
        out.push_str(name);
        out.push('=');
        out.push_str(&quoted);
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::Path;
    use std::process::Command;

    #[test]
    fn quotes_plain_and_empty_values() {
        assert_eq!(quote("abc").unwrap(), "'abc'");
        assert_eq!(quote("").unwrap(), "''");
        assert_eq!(quote("a b").unwrap(), "'a b'");
    }

    #[test]
    fn escapes_single_quotes_only() {
        assert_eq!(quote("it's").unwrap(), "'it'\\''s'");
        assert_eq!(quote("'").unwrap(), "''\\'''");
        assert_eq!(quote("$(x) `y` \\n \"z\"").unwrap(), "'$(x) `y` \\n \"z\"'");
    }

    #[test]
    fn refuses_nul_and_names_it() {
        let err = quote("a\0b").unwrap_err();
        assert_eq!(
            err,
            ShellValueError::Nul {
                name: None,
                offset: 1
            }
        );
        let err = render_exports(&[("OK", "x"), ("DROPSHIP_APP", "ab\0")]).unwrap_err();
        assert_eq!(
            err,
            ShellValueError::Nul {
                name: Some("DROPSHIP_APP".into()),
                offset: 2
            }
        );
        let msg = err.to_string();
        assert!(msg.contains("NUL") && msg.contains("DROPSHIP_APP"), "{msg}");
    }

    #[test]
    fn validates_names() {
        for good in ["A", "_", "DROPSHIP_APP", "X1", "_9"] {
            assert!(is_valid_name(good), "{good}");
        }
        for bad in ["", "1A", "a", "A-B", "A B", "A=B", "Ä", "A$", "A\n"] {
            assert!(!is_valid_name(bad), "{bad:?}");
            let err = render_exports(&[(bad, "v")]).unwrap_err();
            assert!(matches!(err, ShellValueError::InvalidName { .. }));
        }
    }

    #[test]
    fn renders_export_lines() {
        let header = render_exports(&[("A", "1"), ("B", "x'y")]).unwrap();
        assert_eq!(header, "export A='1'\nexport B='x'\\''y'\n");
    }

    /// Source `header` in a real bash, then print each variable NUL-terminated.
    fn bash_roundtrip(dir: &Path, header: &str, names: &[String]) -> Vec<String> {
        let mut script = String::from(header);
        script.push_str("printf '%s\\0'");
        for n in names {
            script.push_str(&format!(" \"${n}\""));
        }
        script.push('\n');
        let out = Command::new("bash")
            .arg("--noprofile")
            .arg("--norc")
            .arg("-c")
            .arg(&script)
            .current_dir(dir)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("LC_ALL", "C.UTF-8")
            .output()
            .expect("bash must be installed to run the shell-encoder tests");
        assert!(
            out.status.success(),
            "bash failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "bash wrote to stderr: {:?}",
            out.stderr
        );
        let mut values: Vec<String> = out
            .stdout
            .split(|&b| b == 0)
            .map(|v| String::from_utf8(v.to_vec()).expect("bash returned non-UTF-8"))
            .collect();
        assert_eq!(values.pop().as_deref(), Some(""), "trailing NUL expected");
        values
    }

    /// Fragments that would execute something or break out of naive quoting.
    fn hostile_fragment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("'".to_owned()),
            Just("\"".to_owned()),
            Just("'\\''".to_owned()),
            Just("$(touch canary)".to_owned()),
            Just("`touch canary`".to_owned()),
            Just("${PATH}".to_owned()),
            Just("$((1+1))".to_owned()),
            Just("'; touch canary; '".to_owned()),
            Just("\"; touch canary; \"".to_owned()),
            Just("\n".to_owned()),
            Just("\r\n".to_owned()),
            Just("\\".to_owned()),
            Just("!!".to_owned()),
            Just("*".to_owned()),
            Just("~".to_owned()),
            Just("<(touch canary)".to_owned()),
            Just("\u{7f}\u{1b}[0m".to_owned()),
            "[^\u{0}]{0,16}".prop_map(|s| s),
            any::<String>().prop_map(|s| s.replace('\0', "")),
        ]
    }

    fn hostile_value() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => proptest::collection::vec(hostile_fragment(), 0..24).prop_map(|v| v.concat()),
            1 => proptest::collection::vec(hostile_fragment(), 1..8)
                .prop_map(|v| {
                    // Grow to at least 8 KiB by repeating the fragments.
                    let unit = v.concat() + "x";
                    let mut s = String::new();
                    while s.len() < 8 * 1024 {
                        s.push_str(&unit);
                    }
                    s
                }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

        #[test]
        fn bash_reads_back_exactly_and_executes_nothing(
            values in proptest::collection::vec(hostile_value(), 1..5)
        ) {
            let dir = tempfile::tempdir().unwrap();
            let names: Vec<String> = (0..values.len()).map(|i| format!("DROPSHIP_V{i}")).collect();
            let vars: Vec<(&str, &str)> =
                names.iter().map(String::as_str).zip(values.iter().map(String::as_str)).collect();
            let header = render_exports(&vars).unwrap();
            let got = bash_roundtrip(dir.path(), &header, &names);
            prop_assert_eq!(&got, &values);
            prop_assert!(!dir.path().join("canary").exists(), "header executed a command");
        }
    }

    #[test]
    fn eight_kib_of_every_hostile_fragment_roundtrips() {
        let dir = tempfile::tempdir().unwrap();
        let unit = "'$(touch canary)`touch canary`\"\n\\ é 日本 🦀 ";
        let big = unit.repeat(8 * 1024 / unit.len() + 1);
        assert!(big.len() >= 8 * 1024);
        let header = render_exports(&[("BIG", &big)]).unwrap();
        let got = bash_roundtrip(dir.path(), &header, &["BIG".to_owned()]);
        assert_eq!(got, vec![big]);
        assert!(!dir.path().join("canary").exists());
    }
}
