//! Throwaway git repositories for the bundler and operator suites, driven by the real `git`
//! binary, and runners for the real `bundle-and-upload` and `dropship` binaries inside them.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::bins;

/// A git repository in a temporary directory, removed on drop.
pub struct GitRepo {
    dir: tempfile::TempDir,
}

impl Default for GitRepo {
    fn default() -> Self {
        Self::new()
    }
}

impl GitRepo {
    /// An empty repository on branch `main`.
    pub fn new() -> Self {
        let repo = Self {
            dir: tempfile::tempdir().expect("tempdir for a git repository"),
        };
        repo.git(&["init", "-q", "-b", "main"]);
        repo
    }

    /// The working tree.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs git with a fixed identity; panics with stderr on failure; returns stdout.
    pub fn git(&self, args: &[&str]) -> String {
        let out = Command::new("git")
            .args(args)
            .current_dir(self.path())
            .env("GIT_AUTHOR_NAME", "Dropship Test")
            .env("GIT_AUTHOR_EMAIL", "test@example.com")
            .env("GIT_COMMITTER_NAME", "Dropship Test")
            .env("GIT_COMMITTER_EMAIL", "test@example.com")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .expect("run git");
        assert!(
            out.status.success(),
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("git output is UTF-8")
    }

    /// Writes a file (creating parent directories).
    pub fn write(&self, rel: &str, contents: impl AsRef<[u8]>) -> &Self {
        let path = self.path().join(rel);
        fs::create_dir_all(path.parent().expect("a parent")).expect("create parent dirs");
        fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        self
    }

    /// Writes an executable file.
    pub fn write_executable(&self, rel: &str, contents: impl AsRef<[u8]>) -> &Self {
        self.write(rel, contents);
        let path = self.path().join(rel);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod +x");
        self
    }

    /// Creates a symlink `rel` pointing at `target` (as written).
    pub fn symlink(&self, rel: &str, target: &str) -> &Self {
        let path = self.path().join(rel);
        fs::create_dir_all(path.parent().expect("a parent")).expect("create parent dirs");
        std::os::unix::fs::symlink(target, &path).expect("create symlink");
        self
    }

    /// Stages everything and commits; returns the new commit id.
    pub fn commit(&self, message: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
        self.head()
    }

    /// The commit id at HEAD.
    pub fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"]).trim().to_string()
    }

    /// A `dropship.toml` for `app` with environments staging/production, plus `extra` lines.
    pub fn write_config(&self, app: &str, bucket: &str, extra: &str) -> &Self {
        self.write(
            "dropship.toml",
            format!(
                "app = \"{app}\"\nbucket = \"{bucket}\"\nregion = \"us-east-1\"\nenvironments = [\"staging\", \"production\"]\ndefault_env = \"staging\"\n{extra}"
            ),
        )
    }

    /// A `bundle-and-upload` command running in this repository with a clean CI environment.
    pub fn bundler(&self) -> Command {
        self.tool("bundle-and-upload")
    }

    /// A `dropship` command running in this repository with a clean CI environment.
    pub fn dropship(&self) -> Command {
        self.tool("dropship")
    }

    /// The workspace binary `name`, run in this repository with a clean CI environment.
    fn tool(&self, name: &str) -> Command {
        let mut cmd = Command::new(bins::binary(name));
        cmd.current_dir(self.path());
        for var in [
            "CI",
            "GITHUB_ACTIONS",
            "GITHUB_REF_NAME",
            "GITHUB_HEAD_REF",
            "GITHUB_ACTOR",
            "CI_COMMIT_REF_NAME",
            "GITLAB_USER_LOGIN",
            "BUILDKITE_BRANCH",
            "CIRCLE_BRANCH",
            "DROPSHIP_BRANCH",
            "DROPSHIP_BUCKET",
            "DROPSHIP_ENV",
            "DROPSHIP_APP",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("DROPSHIP_UPLOADER", "tester@example.com");
        cmd
    }
}

/// A finished command's exit code and text output.
#[derive(Debug)]
pub struct Finished {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// The JSON document `--json` printed on stdout.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    /// Panics with the output unless the command succeeded.
    pub fn success(self) -> Self {
        assert_eq!(self.code, 0, "command failed: {self:#?}");
        self
    }
}

/// Runs a command to completion and captures it.
pub fn run(cmd: &mut Command) -> Finished {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("spawn command");
    Finished {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// A file path inside a fresh temporary directory (kept alive by the returned guard).
pub fn temp_file(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(name);
    (dir, path)
}
