//! Records the commit the binaries are built from, for `--version`: `git rev-parse HEAD`,
//! or `unknown` outside a git checkout (a crates.io tarball, a copied tree) or without git.
//! Uncommitted changes are not marked: the script reruns when HEAD moves, not on every edit,
//! so such a mark would go stale.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    out.status.success().then(|| text.trim().to_owned())
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let commit = match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(commit) if !commit.is_empty() => {
            // Rebuild when HEAD moves: HEAD itself, the branch it names, packed refs.
            for path in ["HEAD", "packed-refs"] {
                if let Some(p) = git(&["rev-parse", "--git-path", path]) {
                    println!("cargo:rerun-if-changed={}", absolute(&p).display());
                }
            }
            if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
                if let Some(p) = git(&["rev-parse", "--git-path", &branch]) {
                    println!("cargo:rerun-if-changed={}", absolute(&p).display());
                }
            }
            commit
        }
        _ => "unknown".to_owned(),
    };
    println!("cargo:rustc-env=DROPSHIP_BUILD_COMMIT={commit}");
}

/// `git rev-parse --git-path` answers relative to the manifest directory.
fn absolute(path: &str) -> PathBuf {
    let p = PathBuf::from(path);
    if p.is_absolute() {
        p
    } else {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(p)
    }
}
