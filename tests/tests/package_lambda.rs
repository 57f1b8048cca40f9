//! The checking half of `scripts/package-lambda` (`--check ZIP`), run by real bash on zips
//! made here with Python's `zipfile` (the same library the check reads them with, so the
//! fixtures are what a zip tool writes). The build half takes about 12 minutes of both cores
//! and runs in the example CI workflow, not here.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// One zip entry to make: name, ELF machine (`None`: not an ELF file), Unix mode.
type Entry<'a> = (&'a str, Option<u16>, u32);

/// ELF machine numbers (`e_machine`).
const EM_AARCH64: u16 = 183;
const EM_X86_64: u16 = 62;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/package-lambda")
}

/// Writes a zip at `path` holding `entries` (name, ELF machine or `None` for non-ELF
/// bytes, Unix mode), each 4 KiB.
fn make_zip(path: &Path, entries: &[Entry<'_>]) {
    let spec: Vec<String> = entries
        .iter()
        .map(|(name, machine, mode)| {
            format!(
                "({name:?}, {}, {mode})",
                machine.map_or("None".to_string(), |m| m.to_string())
            )
        })
        .collect();
    let program = format!(
        r##"
import struct, sys, zipfile
def body(machine):
    if machine is None:
        return b"#!/bin/sh\n" + b"\0" * 4086
    return b"\x7fELF" + bytes([2, 1, 1, 0]) + b"\0" * 8 + struct.pack("<HH", 2, machine) + b"\0" * 4076
with zipfile.ZipFile(sys.argv[1], "w", zipfile.ZIP_DEFLATED) as z:
    for name, machine, mode in [{}]:
        info = zipfile.ZipInfo(name)
        info.external_attr = (0o100000 | mode) << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        z.writestr(info, body(machine))
"##,
        spec.join(", ")
    );
    let status = Command::new("python3")
        .arg("-c")
        .arg(program)
        .arg(path)
        .status()
        .expect("python3 runs");
    assert!(status.success(), "making {}", path.display());
}

fn check(zip: &Path, max_bytes: Option<&str>) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(script()).arg("--check").arg(zip);
    cmd.env_remove("DROPSHIP_LAMBDA_ZIP_MAX_BYTES");
    if let Some(max) = max_bytes {
        cmd.env("DROPSHIP_LAMBDA_ZIP_MAX_BYTES", max);
    }
    cmd.output().expect("bash runs the script")
}

fn refused(out: &Output, zip: &Path, problem: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains(&zip.display().to_string()) && stderr.contains(problem),
        "expected the zip and {problem:?} named, got: {stderr}"
    );
}

#[test]
fn an_aarch64_executable_bootstrap_passes_and_is_described() {
    let dir = tempfile::tempdir().expect("tempdir");
    let zip = dir.path().join("bootstrap.zip");
    make_zip(&zip, &[("bootstrap", Some(EM_AARCH64), 0o755)]);
    let out = check(&zip, None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("ELF 64-bit AArch64, 4096 bytes unzipped"),
        "{stdout}"
    );
    let size = std::fs::metadata(&zip).expect("zip").len();
    assert!(stdout.contains(&format!("{} bytes", size)), "{stdout}");
}

#[test]
fn wrong_architecture_format_mode_layout_and_size_are_each_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: &[(&str, &[Entry<'_>], &str)] = &[
        (
            "x86.zip",
            &[("bootstrap", Some(EM_X86_64), 0o755)],
            "built for x86-64, not AArch64",
        ),
        (
            "script.zip",
            &[("bootstrap", None, 0o755)],
            "not an ELF executable",
        ),
        (
            "mode.zip",
            &[("bootstrap", Some(EM_AARCH64), 0o644)],
            "not executable (mode 0o644)",
        ),
        (
            "name.zip",
            &[("deployer-lambda", Some(EM_AARCH64), 0o755)],
            "expected exactly one entry named bootstrap",
        ),
        (
            "extra.zip",
            &[
                ("bootstrap", Some(EM_AARCH64), 0o755),
                ("notes.txt", None, 0o644),
            ],
            "expected exactly one entry named bootstrap",
        ),
    ];
    for (name, entries, problem) in cases {
        let zip = dir.path().join(name);
        make_zip(&zip, entries);
        refused(&check(&zip, None), &zip, problem);
    }

    let good = dir.path().join("good.zip");
    make_zip(&good, &[("bootstrap", Some(EM_AARCH64), 0o755)]);
    refused(
        &check(&good, Some("64")),
        &good,
        "more than the 64-byte bound",
    );

    let not_zip = dir.path().join("bootstrap.zip");
    std::fs::write(&not_zip, b"not a zip").expect("write");
    refused(&check(&not_zip, None), &not_zip, "not a zip archive");
    refused(
        &check(&dir.path().join("missing.zip"), None),
        &dir.path().join("missing.zip"),
        "no such file",
    );
}

#[test]
fn usage_errors_exit_2() {
    let out = Command::new("bash")
        .arg(script())
        .arg("--check")
        .output()
        .expect("bash");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage: scripts/package-lambda"));
}

/// The tools that build the Lambda come from PyPI: each is pinned by version and by the
/// SHA-256 of its wheels, and installed in pip's hash-checking mode, so a re-uploaded or
/// substituted file is refused instead of building the function that runs as root on hosts.
#[test]
fn packaging_tools_are_pinned_by_hash_and_installed_with_require_hashes() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let req = std::fs::read_to_string(root.join("scripts/requirements-package.txt"))
        .expect("requirements-package.txt");
    // Logical lines (backslash continuations joined), comments dropped.
    let joined = req.replace("\\\n", " ");
    let requirements: Vec<&str> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(requirements.len() >= 2, "{requirements:?}");
    for line in &requirements {
        let mut words = line.split_whitespace();
        let pin = words.next().expect("a requirement");
        let (name, version) = pin
            .split_once("==")
            .unwrap_or_else(|| panic!("{pin}: not pinned to one version (name==version)"));
        assert!(!name.is_empty() && !version.contains('*'), "{pin}");
        let hashes: Vec<&str> = words
            .map(|w| {
                w.strip_prefix("--hash=sha256:")
                    .unwrap_or_else(|| panic!("{pin}: unexpected option {w}"))
            })
            .collect();
        assert!(!hashes.is_empty(), "{pin}: no --hash=sha256:");
        for h in hashes {
            assert!(
                h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()),
                "{pin}: {h} is not a SHA-256"
            );
        }
    }
    let script = std::fs::read_to_string(script()).expect("package-lambda");
    let install = script
        .lines()
        .find(|l| l.contains("pip\" install") && l.contains("$req"))
        .expect("the pip install of the requirements");
    assert!(
        install.contains("--require-hashes") && install.contains("--only-binary=:all:"),
        "{install}"
    );
}
