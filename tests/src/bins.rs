//! Locates the workspace's built binaries and scripts, so suites run the real artefacts.

use std::path::PathBuf;

/// The workspace root (parent of this crate), where `scripts/` and `target/` live.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The directory cargo put the workspace's executables in (`target/<profile>`): the parent
/// of `deps/` for a test binary, the executable's own directory for a workspace binary such
/// as `local-pipeline`.
fn target_profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current executable");
    let dir = exe.parent().expect("executable has a directory");
    // target/<profile>/deps/<test-binary> or target/<profile>/<binary>
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("deps/ has a parent").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Path to a workspace binary such as `bundle-and-upload`; panics with the command to build it.
pub fn binary(name: &str) -> PathBuf {
    let path = target_profile_dir().join(name);
    assert!(
        path.is_file(),
        "{} is not built; run `cargo build --workspace --bins` first (scripts/test does)",
        path.display()
    );
    path
}

/// Path to a file under `scripts/`.
pub fn script(name: &str) -> PathBuf {
    workspace_root().join("scripts").join(name)
}
