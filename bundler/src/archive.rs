//! Turning a list of repository paths into a deterministic tar stream.
//!
//! Three steps: [`collect_facts`] reads sizes and link targets from disk (I/O), [`plan`]
//! decides what goes in and refuses unsafe content with the full list of offenders (pure),
//! and [`write_tar`] streams the planned entries behind the manifest.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use dropship_contract::manifest::{DROPSHIP_DIR, MANIFEST_PATH};
use dropship_contract::tar_rules::{EntryChecker, EntryFacts, EntryKind, Limits};

use crate::git::{ListedKind, ListedPath};
use crate::select::{glob_matches, looks_like_secret};

/// One listed path with what the disk says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileFacts {
    pub path: Vec<u8>,
    pub kind: FactKind,
}

/// The on-disk facts the plan needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FactKind {
    File {
        size: u64,
        executable: bool,
    },
    Symlink {
        target: Vec<u8>,
    },
    /// Listed by git but gone or unreadable on disk.
    Missing(String),
}

/// Reads sizes and link targets for every listed path.
pub fn collect_facts(root: &Path, listed: &[ListedPath]) -> Vec<FileFacts> {
    listed
        .iter()
        .map(|l| {
            let full = root.join(OsStr::from_bytes(&l.path));
            let kind = match l.kind {
                ListedKind::File { executable } => match std::fs::metadata(&full) {
                    Ok(m) if m.is_file() => FactKind::File {
                        size: m.len(),
                        executable,
                    },
                    Ok(_) => FactKind::Missing("is not a regular file on disk".into()),
                    Err(e) => FactKind::Missing(e.to_string()),
                },
                ListedKind::Symlink => match std::fs::read_link(&full) {
                    Ok(t) => FactKind::Symlink {
                        target: t.as_os_str().as_bytes().to_vec(),
                    },
                    Err(e) => FactKind::Missing(e.to_string()),
                },
            };
            FileFacts {
                path: l.path.clone(),
                kind,
            }
        })
        .collect()
}

/// What the user allowed or excluded.
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    pub excludes: Vec<String>,
    /// Exact paths the user vouched for with `--allow-secret`.
    pub allowed_secrets: Vec<String>,
    /// Glob patterns `dropship.toml` vouches for (`allow_secrets`).
    pub allowed_secret_patterns: Vec<String>,
    pub max_file_bytes: u64,
}

/// An entry to write, after the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlannedKind {
    Directory,
    File { size: u64, executable: bool },
    Symlink { target: Vec<u8> },
}

/// One planned entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedEntry {
    pub path: String,
    pub kind: PlannedKind,
}

/// Everything that will be written, sorted, with totals for the manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BundlePlan {
    pub entries: Vec<PlannedEntry>,
    pub file_bytes: u64,
    /// Paths left out by `excludes`.
    pub excluded: usize,
}

/// The bundle was refused; every offender is listed so one fix-up pass is enough.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refusing to bundle {} path(s):\n{}", .offenders.len(), .offenders.iter().map(|o| format!("  {o}")).collect::<Vec<_>>().join("\n"))]
pub struct Refused {
    pub offenders: Vec<String>,
}

/// Decides the bundle's content. Pure: same facts and options, same plan.
pub fn plan(facts: &[FileFacts], options: &PlanOptions) -> Result<BundlePlan, Refused> {
    let mut offenders = Vec::new();
    let mut files: BTreeMap<String, PlannedKind> = BTreeMap::new();
    let mut excluded = 0;
    for fact in facts {
        let Ok(path) = std::str::from_utf8(&fact.path) else {
            offenders.push(format!(
                "{}: file name is not UTF-8; rename it",
                String::from_utf8_lossy(&fact.path)
            ));
            continue;
        };
        if options.excludes.iter().any(|p| glob_matches(p, path)) {
            excluded += 1;
            continue;
        }
        if path == DROPSHIP_DIR || path.starts_with(&format!("{DROPSHIP_DIR}/")) {
            offenders.push(format!(
                "{path}: {DROPSHIP_DIR}/ is reserved for the bundle manifest; rename or exclude it"
            ));
            continue;
        }
        let vouched = options.allowed_secrets.iter().any(|a| a == path)
            || options
                .allowed_secret_patterns
                .iter()
                .any(|p| glob_matches(p, path));
        if looks_like_secret(path) && !vouched {
            let pattern = match path.rsplit_once('/') {
                Some((dir, name)) => match name.rsplit_once('.') {
                    Some((_, ext)) => format!("{dir}/**/*.{ext}"),
                    None => format!("{dir}/**"),
                },
                None => path.to_string(),
            };
            offenders.push(format!(
                "{path}: looks like a secret; keep it out of git (or in shared/ on the host), or pass --allow-secret {path}, or vouch for a pattern in dropship.toml: allow_secrets = [\"{pattern}\"]"
            ));
            continue;
        }
        let kind = match &fact.kind {
            FactKind::Missing(why) => {
                offenders.push(format!("{path}: cannot be read ({why})"));
                continue;
            }
            FactKind::File { size, executable } => {
                if *size > options.max_file_bytes {
                    offenders.push(format!(
                        "{path}: {size} bytes is over max_file_bytes ({}); exclude it or raise the limit",
                        options.max_file_bytes
                    ));
                    continue;
                }
                PlannedKind::File {
                    size: *size,
                    executable: *executable,
                }
            }
            FactKind::Symlink { target } => PlannedKind::Symlink {
                target: target.clone(),
            },
        };
        files.insert(path.to_string(), kind);
    }
    // Parent directories, so extraction never depends on implicit creation.
    let mut all: BTreeMap<String, PlannedKind> = BTreeMap::new();
    for path in files.keys() {
        let mut rest = path.as_str();
        while let Some((parent, _)) = rest.rsplit_once('/') {
            all.entry(parent.to_string())
                .or_insert(PlannedKind::Directory);
            rest = parent;
        }
    }
    all.extend(files);
    // The contract's rules, exactly as the Lambda will apply them.
    let mut checker = EntryChecker::new(Limits {
        max_file_bytes: options.max_file_bytes,
        ..Limits::default()
    });
    let mut plan = BundlePlan {
        excluded,
        ..BundlePlan::default()
    };
    for (path, kind) in all {
        let (entry_kind, size, mode, target) = match &kind {
            PlannedKind::Directory => (EntryKind::Directory, 0, 0o755, None),
            PlannedKind::File { size, .. } => (EntryKind::File, *size, 0o644, None),
            PlannedKind::Symlink { target } => {
                (EntryKind::Symlink, 0, 0o777, Some(target.as_slice()))
            }
        };
        let facts = EntryFacts {
            path: path.as_bytes(),
            kind: entry_kind,
            mode,
            size,
            link_target: target,
        };
        if let Err(violation) = checker.check(&facts) {
            offenders.push(format!("{violation}"));
            continue;
        }
        if let PlannedKind::File { size, .. } = kind {
            plan.file_bytes += size;
        }
        plan.entries.push(PlannedEntry { path, kind });
    }
    // The whole-tree symlink rule (the Lambda also applies it with the host's shared paths).
    if let Err(violation) = checker.finish(&[]) {
        offenders.push(format!("{violation}"));
    }
    if offenders.is_empty() {
        Ok(plan)
    } else {
        Err(Refused { offenders })
    }
}

/// Called as the tar stream advances: (entries written, file bytes written).
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// Writes the manifest and every planned entry as a deterministic tar stream into `out`.
pub fn write_tar<W: Write>(
    root: &Path,
    plan: &BundlePlan,
    manifest: &[u8],
    mtime: u64,
    out: W,
    progress: Progress<'_>,
) -> io::Result<W> {
    let mut builder = tar::Builder::new(out);
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(mtime);
        h.set_uid(0);
        h.set_gid(0);
        h
    };
    let mut h = header(tar::EntryType::Regular, 0o644, manifest.len() as u64);
    builder.append_data(&mut h, MANIFEST_PATH, manifest)?;
    let (mut entries, mut bytes) = (0u64, 0u64);
    for entry in &plan.entries {
        match &entry.kind {
            PlannedKind::Directory => {
                let mut h = header(tar::EntryType::Directory, 0o755, 0);
                builder.append_data(&mut h, format!("{}/", entry.path), io::empty())?;
            }
            PlannedKind::Symlink { target } => {
                let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                builder.append_link(&mut h, &entry.path, OsStr::from_bytes(target))?;
            }
            PlannedKind::File { size, executable } => {
                let mode = if *executable { 0o755 } else { 0o644 };
                let mut h = header(tar::EntryType::Regular, mode, *size);
                let full = root.join(&entry.path);
                let file = std::fs::File::open(&full)
                    .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", entry.path)))?;
                let mut reader = ExactReader::new(file, *size, &entry.path);
                builder.append_data(&mut h, &entry.path, &mut reader)?;
                reader.ensure_ended()?;
                bytes += size;
            }
        }
        entries += 1;
        progress(entries, bytes);
    }
    builder.into_inner()
}

/// Reads exactly `size` bytes and fails if the file is shorter or longer: a file changed
/// while bundling must fail the bundle, not corrupt it.
struct ExactReader<'a, R> {
    inner: R,
    left: u64,
    path: &'a str,
}

impl<'a, R: Read> ExactReader<'a, R> {
    fn new(inner: R, size: u64, path: &'a str) -> Self {
        Self {
            inner,
            left: size,
            path,
        }
    }

    fn changed(&self) -> io::Error {
        io::Error::other(format!(
            "{} changed size while it was being bundled; retry when nothing writes to the tree",
            self.path
        ))
    }

    fn ensure_ended(&mut self) -> io::Result<()> {
        let mut probe = [0u8; 1];
        if self.left != 0 || self.inner.read(&mut probe)? != 0 {
            return Err(self.changed());
        }
        Ok(())
    }
}

impl<R: Read> Read for ExactReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(self.changed());
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, size: u64) -> FileFacts {
        FileFacts {
            path: path.as_bytes().to_vec(),
            kind: FactKind::File {
                size,
                executable: false,
            },
        }
    }

    fn options() -> PlanOptions {
        PlanOptions {
            max_file_bytes: 1000,
            ..PlanOptions::default()
        }
    }

    #[test]
    fn plans_sorted_entries_with_parent_directories() {
        let facts = vec![file("b/z.txt", 1), file("a.txt", 2), file("b/c/d.txt", 3)];
        let p = plan(&facts, &options()).unwrap();
        let paths: Vec<&str> = p.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["a.txt", "b", "b/c", "b/c/d.txt", "b/z.txt"]);
        assert_eq!(p.file_bytes, 6);
    }

    #[test]
    fn lists_every_offender_at_once() {
        let facts = vec![
            file(".env", 1),
            file("certs/tls.pem", 1),
            file("big.bin", 5000),
            FileFacts {
                path: b"up".to_vec(),
                kind: FactKind::Symlink {
                    target: b"../../etc".to_vec(),
                },
            },
            FileFacts {
                path: b"abs".to_vec(),
                kind: FactKind::Symlink {
                    target: b"/etc/passwd".to_vec(),
                },
            },
            file(".dropship/manifest.json", 1),
            file("ok.txt", 1),
        ];
        let err = plan(&facts, &options()).unwrap_err();
        assert_eq!(err.offenders.len(), 6, "{err}");
        let text = err.to_string();
        for needle in [
            ".env",
            "--allow-secret certs/tls.pem",
            "big.bin",
            "\"up\"",
            "\"abs\"",
            "reserved",
        ] {
            assert!(text.contains(needle), "{text} lacks {needle}");
        }
    }

    #[test]
    fn excludes_and_allowed_secrets() {
        let facts = vec![
            file("docs/a.md", 1),
            file("config/dev.pem", 1),
            file("app.py", 1),
        ];
        let opts = PlanOptions {
            excludes: vec!["docs/**".into()],
            allowed_secrets: vec!["config/dev.pem".into()],
            max_file_bytes: 1000,
            ..PlanOptions::default()
        };
        let p = plan(&facts, &opts).unwrap();
        let paths: Vec<&str> = p.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["app.py", "config", "config/dev.pem"]);
        assert_eq!(p.excluded, 1);
    }

    #[test]
    fn a_pattern_in_dropship_toml_vouches_for_many_fixtures_and_the_refusal_says_how() {
        let facts: Vec<FileFacts> = (0..60)
            .map(|i| file(&format!("tests/fixtures/certs/k{i}.pem"), 1))
            .chain([file("deploy/prod.pem", 1)])
            .collect();
        let refused = plan(
            &facts,
            &PlanOptions {
                max_file_bytes: 1000,
                ..PlanOptions::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            refused.contains(r#"allow_secrets = ["tests/fixtures/certs/**/*.pem"]"#),
            "{refused}"
        );
        let opts = PlanOptions {
            allowed_secret_patterns: vec!["tests/fixtures/**/*.pem".into()],
            max_file_bytes: 1000,
            ..PlanOptions::default()
        };
        // The fixtures pass; a key outside the pattern is still refused, by name.
        let refused = plan(&facts, &opts).unwrap_err().to_string();
        assert!(refused.contains("deploy/prod.pem"), "{refused}");
        assert!(!refused.contains("tests/fixtures"), "{refused}");
        let fixtures_only = &facts[..60];
        let p = plan(fixtures_only, &opts).unwrap();
        assert_eq!(
            p.entries
                .iter()
                .filter(|e| e.path.ends_with(".pem"))
                .count(),
            60
        );
    }

    #[test]
    fn a_file_that_changes_size_fails_the_stream() {
        let mut short = ExactReader::new(&b"abc"[..], 5, "x");
        let mut buf = Vec::new();
        assert!(short.read_to_end(&mut buf).is_err());
        let mut long = ExactReader::new(&b"abcdef"[..], 3, "x");
        let mut buf = Vec::new();
        long.read_to_end(&mut buf).unwrap();
        assert!(long.ensure_ended().is_err());
    }
}
