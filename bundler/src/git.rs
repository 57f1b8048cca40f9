//! Everything the bundler asks git: where the repository is, what HEAD is, whether the tree is
//! clean, and which paths belong in the bundle. Git is run as a process (`git -C <root> ...`)
//! with arguments, never through a shell.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Why git could not give the bundler what it needs; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("git is not installed or not on PATH ({0}): install git and retry")]
    NotInstalled(std::io::Error),
    #[error("{0} is not inside a git repository: run bundle-and-upload from your app's repository (or pass --repo DIR)")]
    NotARepo(PathBuf),
    #[error("the repository at {0} has no commits yet: commit your app first (git add -A && git commit)")]
    NoCommits(PathBuf),
    #[error("the working tree has uncommitted changes to tracked files:\n{0}\ncommit or stash them, or pass --allow-dirty to bundle the working tree as it is")]
    Dirty(String),
    #[error("`git {args}` failed: {stderr}")]
    Failed { args: String, stderr: String },
}

/// The facts about HEAD that go into metadata and the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadInfo {
    pub commit: String,
    /// Committer time, seconds since the epoch.
    pub commit_time: i64,
    /// First line of the commit message.
    pub subject: String,
    /// Short branch name, or `None` on a detached HEAD.
    pub branch: Option<String>,
}

/// What a listed path is, as git (clean tree) or the file system (dirty tree) says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListedKind {
    File { executable: bool },
    Symlink,
}

/// One path to bundle, relative to the repository root (raw bytes, as git stores them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedPath {
    pub path: Vec<u8>,
    pub kind: ListedKind,
}

/// A repository found from a starting directory.
#[derive(Debug, Clone)]
pub struct Repo {
    root: PathBuf,
}

impl Repo {
    /// Finds the repository containing `start`.
    pub fn discover(start: &Path) -> Result<Self, GitError> {
        let out = Command::new("git")
            .arg("-C")
            .arg(start)
            .args(["rev-parse", "--show-toplevel"])
            .output()
            .map_err(GitError::NotInstalled)?;
        if !out.status.success() {
            return Err(GitError::NotARepo(
                start.canonicalize().unwrap_or_else(|_| start.to_path_buf()),
            ));
        }
        let root = PathBuf::from(OsStr::from_bytes(trim_newline(&out.stdout)));
        Ok(Self { root })
    }

    /// The top-level directory of the working tree.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn git(&self, args: &[&str]) -> Result<Vec<u8>, GitError> {
        let out = Command::new("git")
            .arg("-C")
            .arg(&self.root)
            .args(args)
            .output()
            .map_err(GitError::NotInstalled)?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(GitError::Failed {
                args: args.join(" "),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }

    /// Commit, time, subject and branch of HEAD.
    pub fn head(&self) -> Result<HeadInfo, GitError> {
        let out = self
            .git(&["log", "-1", "--format=%H%x00%ct%x00%s", "HEAD"])
            .map_err(|_| GitError::NoCommits(self.root.clone()))?;
        let text = String::from_utf8_lossy(trim_newline(&out)).into_owned();
        let mut parts = text.splitn(3, '\0');
        let commit = parts.next().unwrap_or_default().to_string();
        let commit_time = parts
            .next()
            .and_then(|t| t.parse().ok())
            .unwrap_or_default();
        let subject = parts.next().unwrap_or_default().to_string();
        let branch = self
            .git(&["symbolic-ref", "--short", "-q", "HEAD"])
            .ok()
            .map(|b| String::from_utf8_lossy(trim_newline(&b)).into_owned())
            .filter(|b| !b.is_empty());
        Ok(HeadInfo {
            commit,
            commit_time,
            subject,
            branch,
        })
    }

    /// Tracked paths whose working-tree or index state differs from HEAD (empty when clean).
    pub fn dirty_paths(&self) -> Result<Vec<String>, GitError> {
        let out = self.git(&["status", "--porcelain=v1", "-z", "--untracked-files=no"])?;
        Ok(out
            .split(|b| *b == 0)
            .filter(|entry| entry.len() > 3)
            .map(|entry| String::from_utf8_lossy(entry).into_owned())
            .collect())
    }

    /// Fails with the list of changes unless the tracked tree equals HEAD.
    pub fn require_clean(&self) -> Result<(), GitError> {
        let dirty = self.dirty_paths()?;
        if dirty.is_empty() {
            Ok(())
        } else {
            let shown: Vec<String> = dirty.iter().take(20).map(|d| format!("  {d}")).collect();
            let more = dirty.len().saturating_sub(20);
            let mut text = shown.join("\n");
            if more > 0 {
                text.push_str(&format!("\n  … and {more} more"));
            }
            Err(GitError::Dirty(text))
        }
    }

    /// Files and symlinks of HEAD's tree, with git's modes (what `git archive HEAD` contains).
    /// Submodules (gitlinks) are skipped, as their content is not in this repository.
    pub fn list_head(&self) -> Result<Vec<ListedPath>, GitError> {
        let out = self.git(&["ls-tree", "-r", "-z", "--full-tree", "HEAD"])?;
        let mut listed = Vec::new();
        for record in out.split(|b| *b == 0).filter(|r| !r.is_empty()) {
            // "<mode> SP <type> SP <object> TAB <path>"
            let Some(tab) = record.iter().position(|b| *b == b'\t') else {
                continue;
            };
            let (meta, path) = (&record[..tab], &record[tab + 1..]);
            let kind = match meta.split(|b| *b == b' ').next() {
                Some(b"100755") => ListedKind::File { executable: true },
                Some(b"100644") => ListedKind::File { executable: false },
                Some(b"120000") => ListedKind::Symlink,
                _ => continue,
            };
            listed.push(ListedPath {
                path: path.to_vec(),
                kind,
            });
        }
        Ok(listed)
    }

    /// Tracked plus untracked-but-not-ignored files as they are on disk (`--allow-dirty`).
    pub fn list_working_tree(&self) -> Result<Vec<ListedPath>, GitError> {
        use std::os::unix::fs::PermissionsExt;
        let out = self.git(&[
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])?;
        let mut listed = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for path in out.split(|b| *b == 0).filter(|p| !p.is_empty()) {
            if !seen.insert(path.to_vec()) {
                continue;
            }
            let full = self.root.join(OsStr::from_bytes(path));
            // Deleted-but-tracked files and submodule directories are not part of the tree.
            let Ok(meta) = std::fs::symlink_metadata(&full) else {
                continue;
            };
            let kind = if meta.file_type().is_symlink() {
                ListedKind::Symlink
            } else if meta.is_file() {
                ListedKind::File {
                    executable: meta.permissions().mode() & 0o111 != 0,
                }
            } else {
                continue;
            };
            listed.push(ListedPath {
                path: path.to_vec(),
                kind,
            });
        }
        Ok(listed)
    }

    /// A git config value, if set.
    pub fn config(&self, key: &str) -> Option<String> {
        self.git(&["config", "--get", key])
            .ok()
            .map(|v| String::from_utf8_lossy(trim_newline(&v)).into_owned())
            .filter(|v| !v.is_empty())
    }
}

fn trim_newline(bytes: &[u8]) -> &[u8] {
    bytes.strip_suffix(b"\n").unwrap_or(bytes)
}

/// CI systems check out a detached HEAD; these variables name the branch they built.
pub const CI_BRANCH_VARIABLES: &[&str] = &[
    "GITHUB_HEAD_REF",
    "GITHUB_REF_NAME",
    "CI_COMMIT_REF_NAME",
    "BUILDKITE_BRANCH",
    "CIRCLE_BRANCH",
    "BITBUCKET_BRANCH",
    "BRANCH_NAME",
];

/// Branch to record: explicit flag, then git, then CI variables, else `detached`.
pub fn resolve_branch(
    flag: Option<&str>,
    head: &HeadInfo,
    env: &dyn Fn(&str) -> Option<String>,
) -> String {
    if let Some(b) = flag.filter(|b| !b.is_empty()) {
        return b.to_string();
    }
    if let Some(b) = &head.branch {
        return b.clone();
    }
    CI_BRANCH_VARIABLES
        .iter()
        .find_map(|name| env(name).filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "detached".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(branch: Option<&str>) -> HeadInfo {
        HeadInfo {
            commit: "a".repeat(40),
            commit_time: 0,
            subject: String::new(),
            branch: branch.map(String::from),
        }
    }

    #[test]
    fn branch_prefers_flag_then_git_then_ci() {
        let none = |_: &str| None;
        let ci = |name: &str| (name == "GITHUB_REF_NAME").then(|| "release/1".to_string());
        assert_eq!(resolve_branch(Some("x"), &head(Some("main")), &ci), "x");
        assert_eq!(resolve_branch(None, &head(Some("main")), &ci), "main");
        assert_eq!(resolve_branch(None, &head(None), &ci), "release/1");
        assert_eq!(resolve_branch(None, &head(None), &none), "detached");
        let pr = |name: &str| match name {
            "GITHUB_HEAD_REF" => Some("feature/pr".to_string()),
            "GITHUB_REF_NAME" => Some("42/merge".to_string()),
            _ => None,
        };
        assert_eq!(resolve_branch(None, &head(None), &pr), "feature/pr");
    }
}
