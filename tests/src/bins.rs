//! Locates the workspace's built binaries and scripts, so suites run the real artefacts.

use std::path::PathBuf;

/// The workspace root (parent of this crate), where `scripts/` and `target/` live.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The directory cargo put this test binary's sibling executables in (`target/<profile>`).
fn target_profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current test executable");
    // target/<profile>/deps/<test-binary>
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf()
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
