//! Which tar entries a bundle may contain. The bundler applies these rules before writing an
//! entry and the Lambda applies them again before any host sees the bundle, so a hand-made or
//! tampered archive cannot write outside the release directory.

use std::collections::HashSet;

/// The kinds of entry the contract allows, plus the ones it names in order to refuse them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Directory,
    Symlink,
    Hardlink,
    CharDevice,
    BlockDevice,
    Fifo,
    /// Anything else (pax/GNU headers are consumed by the tar reader and never reach here).
    Other,
}

/// What the rules need to know about one entry, independent of any tar library.
#[derive(Debug, Clone, Copy)]
pub struct EntryFacts<'a> {
    /// Path as stored (raw bytes).
    pub path: &'a [u8],
    pub kind: EntryKind,
    /// Permission bits as stored.
    pub mode: u32,
    /// Data size in bytes.
    pub size: u64,
    /// Link target for symlinks and hardlinks.
    pub link_target: Option<&'a [u8]>,
}

/// Size limits; the defaults fit any sane compose app and stop decompression bombs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_file_bytes: u64,
    pub max_total_bytes: u64,
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_file_bytes: 1 << 30,
            max_total_bytes: 8 << 30,
            max_entries: 1_000_000,
        }
    }
}

/// Longest path accepted (PATH_MAX on Linux).
pub const MAX_PATH_BYTES: usize = 4096;

/// One broken rule, naming the entry and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("entry {path:?}: path is absolute")]
    AbsolutePath { path: String },
    #[error("entry {path:?}: path contains a '..' component")]
    ParentComponent { path: String },
    #[error("entry {path:?}: path is empty, has an empty or '.' component, or is not UTF-8")]
    MalformedPath { path: String },
    #[error("entry {path:?}: path is longer than {MAX_PATH_BYTES} bytes")]
    PathTooLong { path: String },
    #[error("entry {path:?}: {kind} entries are not allowed (only files, directories and relative symlinks)")]
    ForbiddenKind { path: String, kind: &'static str },
    #[error("entry {path:?}: mode {mode:o} has setuid, setgid or sticky bits")]
    SpecialMode { path: String, mode: u32 },
    #[error("entry {path:?}: symlink target {target:?} is absolute")]
    AbsoluteSymlink { path: String, target: String },
    #[error("entry {path:?}: symlink target {target:?} points outside the bundle")]
    EscapingSymlink { path: String, target: String },
    #[error(
        "entry {path:?}: it lies beneath symlink {link:?}, so writing it would follow the link"
    )]
    BeneathSymlink { path: String, link: String },
    #[error("entry {path:?}: appears twice")]
    Duplicate { path: String },
    #[error(
        "entry {path:?}: symlink target {target:?} goes through {via:?} (a symlink or a shared \
         path) and then up (..), which can lead outside the release on the host; point at the \
         real path instead"
    )]
    UpThroughLink {
        path: String,
        target: String,
        via: String,
    },
    #[error("entry {path:?}: {size} bytes is over the per-file limit of {limit} bytes")]
    FileTooLarge { path: String, size: u64, limit: u64 },
    #[error("bundle content is over the total limit of {limit} bytes")]
    TotalTooLarge { limit: u64 },
    #[error("bundle has more than {limit} entries")]
    TooManyEntries { limit: u64 },
}

/// Checks entries one by one while remembering what it has seen (symlinks, paths, totals),
/// because some rules are about the whole tree: nothing may be written through a symlink.
#[derive(Debug, Default)]
pub struct EntryChecker {
    limits: Limits,
    seen: HashSet<String>,
    symlinks: HashSet<String>,
    /// Every symlink with its target, for the whole-tree rule of [`EntryChecker::finish`].
    targets: Vec<(String, Vec<u8>)>,
    total: u64,
    entries: u64,
}

impl EntryChecker {
    /// A checker enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// Sum of regular-file sizes checked so far.
    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    /// Number of entries checked so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Applies every rule to one entry; returns its normalised path (no trailing `/`).
    pub fn check(&mut self, entry: &EntryFacts<'_>) -> Result<String, Violation> {
        let shown = String::from_utf8_lossy(entry.path).into_owned();
        let path = normalise_path(entry.path, &shown)?;
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(Violation::TooManyEntries {
                limit: self.limits.max_entries,
            });
        }
        let kind = match entry.kind {
            EntryKind::File | EntryKind::Directory | EntryKind::Symlink => entry.kind,
            EntryKind::Hardlink => return Err(forbidden(&path, "hardlink")),
            EntryKind::CharDevice => return Err(forbidden(&path, "character device")),
            EntryKind::BlockDevice => return Err(forbidden(&path, "block device")),
            EntryKind::Fifo => return Err(forbidden(&path, "FIFO")),
            EntryKind::Other => return Err(forbidden(&path, "special")),
        };
        if entry.mode & 0o7000 != 0 {
            return Err(Violation::SpecialMode {
                path,
                mode: entry.mode,
            });
        }
        // Any ancestor that is a symlink would redirect this write.
        let mut ancestor = path.as_str();
        while let Some((parent, _)) = ancestor.rsplit_once('/') {
            if self.symlinks.contains(parent) {
                return Err(Violation::BeneathSymlink {
                    link: parent.to_string(),
                    path,
                });
            }
            ancestor = parent;
        }
        if !self.seen.insert(path.clone()) {
            return Err(Violation::Duplicate { path });
        }
        match kind {
            EntryKind::File => {
                if entry.size > self.limits.max_file_bytes {
                    return Err(Violation::FileTooLarge {
                        path,
                        size: entry.size,
                        limit: self.limits.max_file_bytes,
                    });
                }
                self.total = self.total.saturating_add(entry.size);
                if self.total > self.limits.max_total_bytes {
                    return Err(Violation::TotalTooLarge {
                        limit: self.limits.max_total_bytes,
                    });
                }
            }
            EntryKind::Symlink => {
                let target = entry.link_target.unwrap_or_default();
                check_symlink_target(&path, target)?;
                self.symlinks.insert(path.clone());
                self.targets.push((path.clone(), target.to_vec()));
            }
            _ => {}
        }
        Ok(path)
    }
}

impl EntryChecker {
    /// The rule that needs the whole tree, as strict as the host's: once a symlink target has
    /// passed through a component that is itself a symlink of the bundle or one of the host's
    /// `shared_paths` (linked to `shared/` on the host), it may not go up (`..`) any more.
    /// Resolving lexically, `s -> .` then `t -> s/..` looks inside, but the kernel resolves
    /// `s/..` from where `s` really points; GNU tar then writes through such chains.
    /// Call once every entry has been checked.
    pub fn finish(&self, shared_paths: &[String]) -> Result<(), Violation> {
        let shared: HashSet<&str> = shared_paths
            .iter()
            .map(|p| p.trim_end_matches('/'))
            .collect();
        for (path, target) in &self.targets {
            let parts: Vec<&[u8]> = target
                .split(|b| *b == b'/')
                .filter(|seg| !seg.is_empty() && *seg != b".")
                .collect();
            let mut resolved: Vec<String> = match path.rsplit_once('/') {
                Some((dir, _)) => dir.split('/').map(str::to_owned).collect(),
                None => Vec::new(),
            };
            let mut via: Option<String> = None;
            for (i, seg) in parts.iter().enumerate() {
                if *seg == b".." {
                    if let Some(via) = via {
                        return Err(Violation::UpThroughLink {
                            path: path.clone(),
                            target: String::from_utf8_lossy(target).into_owned(),
                            via,
                        });
                    }
                    // check_symlink_target already refused climbing above the root.
                    resolved.pop();
                    continue;
                }
                resolved.push(String::from_utf8_lossy(seg).into_owned());
                let here = resolved.join("/");
                let last = i + 1 == parts.len();
                if !last
                    && via.is_none()
                    && (self.symlinks.contains(&here) || shared.contains(here.as_str()))
                {
                    via = Some(here);
                }
            }
        }
        Ok(())
    }
}

fn forbidden(path: &str, kind: &'static str) -> Violation {
    Violation::ForbiddenKind {
        path: path.to_string(),
        kind,
    }
}

fn normalise_path(raw: &[u8], shown: &str) -> Result<String, Violation> {
    if raw.len() > MAX_PATH_BYTES {
        return Err(Violation::PathTooLong {
            path: shown.to_string(),
        });
    }
    let malformed = || Violation::MalformedPath {
        path: shown.to_string(),
    };
    let text = std::str::from_utf8(raw).map_err(|_| malformed())?;
    if text.starts_with('/') {
        return Err(Violation::AbsolutePath {
            path: shown.to_string(),
        });
    }
    let trimmed = text.strip_suffix('/').unwrap_or(text);
    if trimmed.is_empty() || trimmed.contains('\0') {
        return Err(malformed());
    }
    for seg in trimmed.split('/') {
        match seg {
            ".." => {
                return Err(Violation::ParentComponent {
                    path: shown.to_string(),
                })
            }
            "" | "." => return Err(malformed()),
            _ => {}
        }
    }
    Ok(trimmed.to_string())
}

/// A symlink must be relative and, resolved lexically from its own directory, stay inside.
pub fn check_symlink_target(path: &str, target: &[u8]) -> Result<(), Violation> {
    let shown_target = String::from_utf8_lossy(target).into_owned();
    if target.is_empty() || target.contains(&0) {
        return Err(Violation::EscapingSymlink {
            path: path.to_string(),
            target: shown_target,
        });
    }
    if target.starts_with(b"/") {
        return Err(Violation::AbsoluteSymlink {
            path: path.to_string(),
            target: shown_target,
        });
    }
    // Depth of the link's directory below the bundle root.
    let mut depth: i64 = path.matches('/').count() as i64;
    for seg in target.split(|b| *b == b'/') {
        match seg {
            b"" | b"." => {}
            b".." => {
                depth -= 1;
                if depth < 0 {
                    return Err(Violation::EscapingSymlink {
                        path: path.to_string(),
                        target: shown_target,
                    });
                }
            }
            _ => depth += 1,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> EntryFacts<'_> {
        EntryFacts {
            path: path.as_bytes(),
            kind: EntryKind::File,
            mode: 0o644,
            size: 1,
            link_target: None,
        }
    }

    fn link<'a>(path: &'a str, target: &'a str) -> EntryFacts<'a> {
        EntryFacts {
            path: path.as_bytes(),
            kind: EntryKind::Symlink,
            mode: 0o777,
            size: 0,
            link_target: Some(target.as_bytes()),
        }
    }

    #[test]
    fn symlinks_may_not_go_up_after_passing_through_a_symlink_or_a_shared_path() {
        // The chain GNU tar extracts outside the release: each link looks inside lexically.
        let mut c = EntryChecker::new(Limits::default());
        for (path, target) in [("s", "."), ("t", "s/.."), ("u", "t/.."), ("v", "u/etc")] {
            c.check(&link(path, target)).unwrap();
        }
        match c.finish(&[]) {
            Err(Violation::UpThroughLink { path, via, .. }) => {
                assert!(path == "t" || path == "u", "{path}");
                assert!(via == "s" || via == "t", "{via}");
            }
            other => panic!("chain accepted: {other:?}"),
        }
        // Order does not matter: the link used may come after the one using it.
        let mut c = EntryChecker::new(Limits::default());
        c.check(&link("a/t", "../s/../x")).unwrap();
        c.check(&link("s", "a")).unwrap();
        assert!(matches!(
            c.finish(&[]),
            Err(Violation::UpThroughLink { .. })
        ));
        // A shared path is a symlink on the host (shared/<path>).
        let mut c = EntryChecker::new(Limits::default());
        c.check(&link("up", "data/../app.conf")).unwrap();
        assert!(c.finish(&[]).is_ok());
        assert!(matches!(
            c.finish(&["data".to_string()]),
            Err(Violation::UpThroughLink { via, .. }) if via == "data"
        ));
        // Through a link to its end, or up before any link: fine.
        let mut c = EntryChecker::new(Limits::default());
        c.check(&link("s", ".")).unwrap();
        c.check(&link("docs/up", "../src/main.rs")).unwrap();
        c.check(&link("to-s", "s")).unwrap();
        c.check(&link("into", "docs/../s/file")).unwrap();
        c.finish(&["data".to_string()]).unwrap();
    }

    #[test]
    fn accepts_ordinary_trees() {
        let mut c = EntryChecker::new(Limits::default());
        c.check(&EntryFacts {
            kind: EntryKind::Directory,
            mode: 0o755,
            size: 0,
            ..file("src/")
        })
        .unwrap();
        c.check(&file("src/main.rs")).unwrap();
        c.check(&link("src/lib.rs", "main.rs")).unwrap();
        c.check(&link("docs/up", "../src/main.rs")).unwrap();
        c.check(&EntryFacts {
            mode: 0o755,
            ..file("run.sh")
        })
        .unwrap();
        c.check(&file("ünï/cödé.txt")).unwrap();
        assert_eq!(c.entries(), 6);
        assert_eq!(c.total_bytes(), 3);
    }

    #[test]
    fn refuses_each_hostile_entry_with_its_reason() {
        let cases: Vec<(EntryFacts<'_>, &str)> = vec![
            (file("../x"), "'..'"),
            (file("a/../../x"), "'..'"),
            (file("/etc/x"), "absolute"),
            (file("a//b"), "empty"),
            (file("./a"), "empty"),
            (link("up", "../.."), "outside"),
            (link("root", "/"), "absolute"),
            (link("a/b", "../../x"), "outside"),
            (
                EntryFacts {
                    kind: EntryKind::Hardlink,
                    link_target: Some(b"x"),
                    ..file("h")
                },
                "hardlink",
            ),
            (
                EntryFacts {
                    kind: EntryKind::CharDevice,
                    ..file("c")
                },
                "character device",
            ),
            (
                EntryFacts {
                    kind: EntryKind::BlockDevice,
                    ..file("b")
                },
                "block device",
            ),
            (
                EntryFacts {
                    kind: EntryKind::Fifo,
                    ..file("f")
                },
                "FIFO",
            ),
            (
                EntryFacts {
                    mode: 0o4755,
                    ..file("suid")
                },
                "setuid",
            ),
            (
                EntryFacts {
                    mode: 0o2755,
                    ..file("sgid")
                },
                "setuid",
            ),
            (
                EntryFacts {
                    path: b"bad\xff",
                    ..file("x")
                },
                "UTF-8",
            ),
        ];
        for (entry, reason) in cases {
            let err = EntryChecker::new(Limits::default())
                .check(&entry)
                .unwrap_err();
            assert!(
                err.to_string().contains(reason),
                "{err} should mention {reason}"
            );
        }
    }

    #[test]
    fn refuses_writes_through_a_symlink_even_one_inside_the_tree() {
        let mut c = EntryChecker::new(Limits::default());
        c.check(&link("link", "dir")).unwrap();
        let err = c.check(&file("link/file")).unwrap_err();
        assert!(matches!(err, Violation::BeneathSymlink { .. }), "{err}");
    }

    #[test]
    fn enforces_size_count_and_duplicate_limits() {
        let limits = Limits {
            max_file_bytes: 10,
            max_total_bytes: 15,
            max_entries: 3,
        };
        let mut c = EntryChecker::new(limits);
        let big = EntryFacts {
            size: 11,
            ..file("big")
        };
        assert!(matches!(c.check(&big), Err(Violation::FileTooLarge { .. })));
        let mut c = EntryChecker::new(limits);
        c.check(&EntryFacts {
            size: 10,
            ..file("a")
        })
        .unwrap();
        assert!(matches!(
            c.check(&EntryFacts {
                size: 10,
                ..file("b")
            }),
            Err(Violation::TotalTooLarge { .. })
        ));
        let mut c = EntryChecker::new(limits);
        c.check(&file("a")).unwrap();
        assert!(matches!(
            c.check(&file("a")),
            Err(Violation::Duplicate { .. })
        ));
        c.check(&file("b")).unwrap();
        assert!(matches!(
            c.check(&file("c")),
            Err(Violation::TooManyEntries { .. })
        ));
    }
}
