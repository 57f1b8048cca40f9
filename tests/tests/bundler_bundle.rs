//! `bundle-and-upload --output` against real git repositories: the bundle holds exactly what
//! `git archive HEAD` holds, is reproducible to the byte, is readable by GNU tar, and every
//! refusal names its offenders and writes nothing.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use dropship_tests::repo::{run, temp_file, GitRepo};
use sha2::{Digest, Sha256};

/// What a tree holds at one path, as far as a deploy cares.
#[derive(Debug, PartialEq, Eq)]
enum Node {
    Dir,
    File { executable: bool, sha256: String },
    Symlink(String),
}

/// Walks `root` into path → node (relative paths, sorted).
fn snapshot(root: &Path) -> BTreeMap<String, Node> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Node>) {
        for entry in fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&path).unwrap();
                out.insert(rel, Node::Symlink(target.to_string_lossy().into_owned()));
            } else if meta.is_dir() {
                out.insert(rel, Node::Dir);
                walk(root, &path, out);
            } else {
                let bytes = fs::read(&path).unwrap();
                out.insert(
                    rel,
                    Node::File {
                        executable: meta.permissions().mode() & 0o111 != 0,
                        sha256: hex::encode(Sha256::digest(&bytes)),
                    },
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Extracts a .tar.gz with GNU tar into a new directory.
fn gnu_extract(archive: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("tar")
        .arg("-xzf")
        .arg(archive)
        .arg("-C")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "GNU tar could not extract {}: {}",
        archive.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// What `git archive HEAD` of `repo` holds, extracted by GNU tar: the reference a bundle is
/// compared with.
fn git_archive_tree(repo: &GitRepo) -> BTreeMap<String, Node> {
    let (_keep, reference) = temp_file("reference.tar.gz");
    repo.git(&[
        "archive",
        "--format=tar.gz",
        "-o",
        reference.to_str().unwrap(),
        "HEAD",
    ]);
    snapshot(gnu_extract(&reference).path())
}

/// A repository with nested dirs, symlinks, executables, empty files and unicode names.
fn rich_repo() -> GitRepo {
    let repo = GitRepo::new();
    repo.write_config("shop", "shop-artifacts", "")
        .write("compose.yaml", "services:\n  web:\n    image: nginx:1.27\n")
        .write("app/src/deep/nested/mod.rs", "pub fn f() {}\n")
        .write("app/empty", "")
        .write("docs/ünïcødé — name.md", "# hello\n")
        .write("docs/日本語/ファイル.txt", "テキスト\n")
        .write(".env.example", "DATABASE_URL=\n")
        .write("file with spaces.txt", "spaces\n")
        .write_executable("bin/run.sh", "#!/bin/sh\necho run\n")
        .write_executable("bin/tool", "#!/bin/sh\nexit 0\n")
        .symlink("app/current-link", "src/deep/nested/mod.rs")
        .symlink("bin/up", "../compose.yaml")
        .symlink("dangling-but-inside", "app/not-there-yet");
    // A long path (> 100 bytes) needs a GNU/PAX long-name record.
    let long = format!("{}/file.txt", ["segment"; 16].join("/"));
    repo.write(&long, "long\n");
    // Ignored files must not be bundled.
    repo.write(".gitignore", "target/\n*.log\n");
    repo.commit("rich tree");
    repo.write("target/debug/junk", "junk")
        .write("server.log", "log");
    repo
}

#[test]
fn bundle_extracts_to_exactly_what_git_archive_holds() {
    let repo = rich_repo();
    let (_keep, bundle) = temp_file("bundle.tar.gz");
    let done = run(repo.bundler().arg("--output").arg(&bundle).arg("--json")).success();
    let summary = done.json();

    let ours = gnu_extract(&bundle);
    let mut ours_tree = snapshot(ours.path());
    let manifest = ours.path().join(".dropship/manifest.json");
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(&manifest).expect("manifest in the bundle")).unwrap();
    ours_tree.remove(".dropship/manifest.json");
    ours_tree.remove(".dropship");
    let theirs_tree = git_archive_tree(&repo);
    assert_eq!(ours_tree, theirs_tree);
    assert!(
        theirs_tree.len() > 20,
        "the fixture is rich: {theirs_tree:#?}"
    );
    assert!(matches!(
        theirs_tree.get("bin/run.sh"),
        Some(Node::File {
            executable: true,
            ..
        })
    ));
    assert!(!ours_tree.contains_key("server.log"));
    assert!(!ours_tree.contains_key("target"));

    // Manifest and summary tell the same story as git.
    assert_eq!(manifest["commit"], repo.head());
    assert_eq!(manifest["branch"], "main");
    assert_eq!(manifest["dirty"], false);
    assert_eq!(manifest["app"], "shop");
    // The environment is the key's: the bytes name none (the summary does).
    assert!(manifest.get("env").is_none(), "{manifest}");
    assert_eq!(summary["env"], "staging");
    // `files` counts every entry after the manifest: files, directories and symlinks.
    assert_eq!(manifest["files"], theirs_tree.len() as u64);
    let bytes = fs::read(&bundle).unwrap();
    assert_eq!(summary["sha256"], hex::encode(Sha256::digest(&bytes)));
    assert_eq!(summary["bytes"], bytes.len() as u64);
}

#[test]
fn gnu_tar_lists_the_manifest_first_then_sorted_paths_with_fixed_owner_and_mtime() {
    let repo = rich_repo();
    let (_keep, bundle) = temp_file("bundle.tar.gz");
    run(repo.bundler().arg("--output").arg(&bundle)).success();
    let out = Command::new("tar")
        .args(["--numeric-owner", "-tvzf"])
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(out.status.success());
    let listing = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = listing.lines().collect();
    assert!(lines[0].ends_with(" .dropship/manifest.json"), "{listing}");
    for line in &lines {
        assert!(line.contains(" 0/0 "), "owner is 0/0: {line}");
    }
    let names = Command::new("tar")
        .arg("-tzf")
        .arg(&bundle)
        .output()
        .unwrap();
    let names: Vec<String> = String::from_utf8(names.stdout)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.trim_end_matches('/').to_string())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "entries after the manifest are sorted");

    // mtime is the commit time, not the checkout time.
    let commit_time: i64 = repo
        .git(&["log", "-1", "--format=%ct"])
        .trim()
        .parse()
        .unwrap();
    let out = Command::new("tar")
        .args(["--full-time", "--utc", "-tvzf"])
        .arg(&bundle)
        .output()
        .unwrap();
    let expected = time_of(commit_time);
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        assert!(line.contains(&expected), "mtime {expected} in {line}");
    }
    // No name or mtime in the gzip header (RFC 1952: FLG at byte 3, MTIME bytes 4..8).
    let bytes = fs::read(&bundle).unwrap();
    assert_eq!(&bytes[..3], &[0x1f, 0x8b, 8]);
    assert_eq!(bytes[3] & 0x08, 0, "no FNAME");
    assert_eq!(&bytes[4..8], &[0, 0, 0, 0], "no MTIME");
}

/// `YYYY-MM-DD HH:MM:SS` in UTC, as GNU tar's --full-time prints it.
fn time_of(unix: i64) -> String {
    let out = Command::new("date")
        .args(["-u", "-d", &format!("@{unix}"), "+%Y-%m-%d %H:%M:%S"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn same_commit_gives_the_same_bytes_across_runs_clones_and_thread_counts() {
    let repo = rich_repo();
    let sha = |dir: &Path, extra: &[&str]| {
        let (_keep, out) = temp_file("b.tar.gz");
        let mut cmd = Command::new(dropship_tests::bins::binary("bundle-and-upload"));
        cmd.current_dir(dir)
            .env("DROPSHIP_UPLOADER", "x")
            .env_remove("GITHUB_REF_NAME")
            .arg("--output")
            .arg(&out)
            .args(extra);
        run(&mut cmd).success();
        hex::encode(Sha256::digest(fs::read(&out).unwrap()))
    };
    let first = sha(repo.path(), &[]);
    assert_eq!(first, sha(repo.path(), &[]), "second run");
    assert_eq!(first, sha(repo.path(), &["--threads", "1"]), "one thread");
    assert_eq!(
        first,
        sha(repo.path(), &["--threads", "7"]),
        "seven threads"
    );

    // A fresh clone has different file mtimes and inode order: same bytes.
    let clone = tempfile::tempdir().unwrap();
    let status = Command::new("git")
        .args(["clone", "-q"])
        .arg(repo.path())
        .arg(clone.path().join("c"))
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(first, sha(&clone.path().join("c"), &[]), "fresh clone");

    // A different level is a different (valid) stream.
    assert_ne!(first, sha(repo.path(), &["--level", "1"]));
}

/// gzip members in `data`, walked with a single-member decoder.
fn gzip_members(mut data: &[u8]) -> usize {
    let mut count = 0;
    while !data.is_empty() {
        let mut member = flate2::bufread::GzDecoder::new(data);
        std::io::copy(&mut member, &mut std::io::sink()).expect("a whole gzip member");
        data = member.into_inner();
        count += 1;
    }
    count
}

/// A bundle larger than one 1 MiB block is several gzip members (libdeflate, the default) or
/// one (the previous zlib-rs deflater); either way GNU tar unpacks exactly what `git archive`
/// holds and the deployer's verifier accepts the whole of it.
#[test]
fn a_bundle_of_several_blocks_unpacks_and_verifies_whole_with_either_deflater() {
    let repo = GitRepo::new();
    repo.write_config("shop", "shop-artifacts", "")
        .write("compose.yaml", "services:\n  web:\n    image: nginx:1.27\n");
    // About 3.4 MB of text that deflates to well over one member's worth of work.
    for part in 0..3 {
        let text: String = (0..40_000)
            .map(|i| {
                format!(
                    "part {part} line {i} value {}\n",
                    (i * 7919 + part) % 10_007
                )
            })
            .collect();
        repo.write(&format!("data/part-{part}.txt"), text);
    }
    repo.commit("large tree");
    let theirs = git_archive_tree(&repo);

    for deflater in ["libdeflate", "zlib-rs"] {
        let (_keep, bundle) = temp_file("bundle.tar.gz");
        let done = run(repo
            .bundler()
            .args(["--deflater", deflater, "--json", "--output"])
            .arg(&bundle))
        .success();
        let bytes = fs::read(&bundle).unwrap();
        let mut tar = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(&bytes[..]), &mut tar)
            .unwrap();
        let blocks = tar.len().div_ceil(1024 * 1024);
        assert!(
            blocks >= 3,
            "the tree spans several blocks: {} bytes",
            tar.len()
        );
        let members = if deflater == "libdeflate" { blocks } else { 1 };
        assert_eq!(gzip_members(&bytes), members, "{deflater}");

        let ours = gnu_extract(&bundle);
        let mut ours_tree = snapshot(ours.path());
        ours_tree.remove(".dropship/manifest.json");
        ours_tree.remove(".dropship");
        assert_eq!(ours_tree, theirs, "{deflater}");

        let summary = done.json();
        let expected = dropship_contract::verify::ExpectedBundle {
            app: "shop".into(),
            env: "staging".into(),
            commit: repo.head(),
            dirty: false,
            branch: "main".into(),
            sha256: summary["sha256"].as_str().unwrap().to_string(),
        };
        let verified = dropship_contract::verify::verify_bundle(
            &bytes[..],
            &expected,
            &dropship_contract::verify::VerifyLimits::default(),
        )
        .unwrap_or_else(|e| panic!("{deflater}: {e}"));
        assert_eq!(
            verified.entries,
            summary["files"].as_u64().unwrap(),
            "{deflater}"
        );
    }
}

/// The environment is the S3 key's, not the bundle's: one commit and config give the same
/// bytes for every environment, and the manifest carries every environment's overrides.
#[test]
fn same_commit_gives_the_same_bytes_for_every_environment() {
    let repo = GitRepo::new();
    repo.write_config(
        "shop",
        "shop-artifacts",
        "[deploy]\nprofiles = [\"web\"]\n[env.production.deploy]\nprofiles = [\"web\", \"prod\"]\n",
    )
    .write("compose.yaml", "services:\n  web:\n    image: nginx:1.27\n");
    repo.commit("two environments");
    let bundle = |env: &str| {
        let (keep, out) = temp_file("b.tar.gz");
        let mut cmd = repo.bundler();
        cmd.env("DROPSHIP_UPLOADER", "x")
            .args(["--env", env, "--output"])
            .arg(&out);
        run(&mut cmd).success();
        (keep, fs::read(&out).unwrap())
    };
    let (_a, staging) = bundle("staging");
    let (_b, production) = bundle("production");
    assert_eq!(
        hex::encode(Sha256::digest(&staging)),
        hex::encode(Sha256::digest(&production)),
        "staging and production bundles of one commit differ"
    );
    let (_c, path) = temp_file("b.tar.gz");
    fs::write(&path, &staging).unwrap();
    let dir = gnu_extract(&path);
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.path().join(".dropship/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["format"], 2);
    assert!(manifest.get("env").is_none(), "{manifest}");
    assert_eq!(manifest["deploy"]["profiles"], serde_json::json!(["web"]));
    assert_eq!(
        manifest["overrides"]["production"]["profiles"],
        serde_json::json!(["web", "prod"])
    );
}

/// Runs the bundler expecting a refusal; checks the exit code, that the message names every
/// offender, and that no output file appeared.
fn assert_refused(repo: &GitRepo, extra: &[&str], code: i32, needles: &[&str]) -> String {
    let (_keep, out) = temp_file("refused.tar.gz");
    let done = run(repo.bundler().arg("--output").arg(&out).args(extra));
    assert_eq!(done.code, code, "exit code: {done:#?}");
    for needle in needles {
        assert!(
            done.stderr.contains(needle),
            "stderr should mention {needle:?}: {}",
            done.stderr
        );
    }
    assert!(!out.exists(), "nothing written on refusal");
    let leftovers: Vec<_> = fs::read_dir(out.parent().unwrap()).unwrap().collect();
    assert!(leftovers.is_empty(), "no temp file left: {leftovers:?}");
    done.stderr
}

#[test]
fn secrets_are_refused_by_name_with_every_offender_listed() {
    let repo = GitRepo::new();
    repo.write_config("shop", "shop-artifacts", "")
        .write(".env", "SECRET=1\n")
        .write("config/.env.production", "SECRET=2\n")
        .write(".env.example", "SECRET=\n")
        .write("certs/server.pem", "-----BEGIN-----\n")
        .write("keys/deploy.key", "k\n")
        .write("home/.ssh/id_rsa", "k\n")
        .write("ok.txt", "fine\n");
    repo.commit("secrets");
    let stderr = assert_refused(
        &repo,
        &[],
        4,
        &[
            ".env",
            "config/.env.production",
            "certs/server.pem",
            "keys/deploy.key",
            "home/.ssh/id_rsa",
            "--allow-secret",
        ],
    );
    assert!(!stderr.contains(".env.example"), "{stderr}");

    // Allowing all but one still refuses that one only.
    let stderr = assert_refused(
        &repo,
        &[
            "--allow-secret",
            ".env",
            "--allow-secret",
            "config/.env.production",
            "--allow-secret",
            "certs/server.pem",
            "--allow-secret",
            "home/.ssh/id_rsa",
        ],
        4,
        &["keys/deploy.key"],
    );
    assert!(!stderr.contains("certs/server.pem"), "{stderr}");

    // Allowing every offender bundles them.
    let (_keep, out) = temp_file("ok.tar.gz");
    run(repo.bundler().arg("--output").arg(&out).args([
        "--allow-secret",
        ".env",
        "--allow-secret",
        "config/.env.production",
        "--allow-secret",
        "certs/server.pem",
        "--allow-secret",
        "home/.ssh/id_rsa",
        "--allow-secret",
        "keys/deploy.key",
    ]))
    .success();
    let tree = snapshot(gnu_extract(&out).path());
    assert!(tree.contains_key("keys/deploy.key") && tree.contains_key(".env"));
}

#[test]
fn unsafe_symlinks_are_refused() {
    let repo = GitRepo::new();
    repo.write_config("shop", "shop-artifacts", "")
        .symlink("etc-passwd", "/etc/passwd")
        .symlink("app/escape", "../../outside")
        .symlink("app/fine", "../ok.txt")
        .write("ok.txt", "fine\n");
    repo.commit("links");
    let stderr = assert_refused(&repo, &[], 4, &["etc-passwd", "/etc/passwd", "app/escape"]);
    assert!(!stderr.contains("app/fine"), "{stderr}");
}

#[test]
fn oversized_files_are_refused_with_the_limit_and_how_to_raise_it() {
    let repo = GitRepo::new();
    repo.write_config("shop", "shop-artifacts", "max_file_bytes = 1000\n")
        .write("big.bin", vec![7u8; 1001])
        .write("small.bin", vec![7u8; 1000]);
    repo.commit("big");
    let stderr = assert_refused(&repo, &[], 4, &["big.bin", "1000"]);
    assert!(!stderr.contains("small.bin"), "{stderr}");
    // The flag overrides the file.
    let (_keep, out) = temp_file("ok.tar.gz");
    run(repo
        .bundler()
        .arg("--output")
        .arg(&out)
        .args(["--max-file-bytes", "2000"]))
    .success();
}

#[test]
fn a_dirty_tree_is_refused_unless_allowed_and_then_bundles_the_working_tree() {
    let repo = GitRepo::new();
    repo.write_config("shop", "shop-artifacts", "")
        .write("tracked.txt", "v1\n")
        .write(".gitignore", "*.log\n");
    repo.commit("base");
    repo.write("tracked.txt", "v2 uncommitted\n")
        .write("untracked.txt", "new\n")
        .write("ignored.log", "noise\n");
    // Only changes to tracked files make a clean bundle impossible; untracked files would
    // simply not be bundled, so the message lists the modified ones.
    assert_refused(&repo, &[], 3, &["tracked.txt", "--allow-dirty"]);

    let (_keep, out) = temp_file("dirty.tar.gz");
    let done = run(repo
        .bundler()
        .arg("--output")
        .arg(&out)
        .args(["--allow-dirty", "--json"]))
    .success();
    assert_eq!(done.json()["dirty"], true);
    let x = gnu_extract(&out);
    assert_eq!(
        fs::read_to_string(x.path().join("tracked.txt")).unwrap(),
        "v2 uncommitted\n"
    );
    assert!(x.path().join("untracked.txt").exists());
    assert!(!x.path().join("ignored.log").exists());
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(x.path().join(".dropship/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["dirty"], true);
}

#[test]
fn git_state_errors_say_what_to_do() {
    let not_repo = tempfile::tempdir().unwrap();
    let (_keep, out) = temp_file("x.tar.gz");
    let done = run(
        Command::new(dropship_tests::bins::binary("bundle-and-upload"))
            .current_dir(not_repo.path())
            .env("GIT_CEILING_DIRECTORIES", not_repo.path().parent().unwrap())
            .arg("--output")
            .arg(&out),
    );
    assert_eq!(done.code, 3, "{done:#?}");
    assert!(
        done.stderr.contains("not inside a git repository"),
        "{}",
        done.stderr
    );
    assert!(done.stderr.contains("--repo"), "{}", done.stderr);
    let shown = not_repo.path().canonicalize().unwrap();
    assert!(
        done.stderr.contains(shown.to_str().unwrap()),
        "names the directory: {}",
        done.stderr
    );

    let empty = GitRepo::new();
    empty.write_config("shop", "shop-artifacts", "");
    let done = run(empty.bundler().arg("--output").arg(&out));
    assert_eq!(done.code, 3, "{done:#?}");
    assert!(done.stderr.contains("no commits"), "{}", done.stderr);
    assert!(!out.exists());
}

#[test]
fn config_errors_name_the_file_and_the_key() {
    let cases: &[(&str, &[&str], &[&str])] = &[
        ("colour = \"blue\"\n", &[], &["dropship.toml", "colour"]),
        ("", &["--env", "qa"], &["qa", "staging", "production"]),
        (
            "\n[deploy]\nkeep_releases = 0\n",
            &[],
            &["dropship.toml", "keep_releases"],
        ),
        (
            "\n[deploy]\ncompose_file = \"../x.yaml\"\n",
            &[],
            &["compose_file"],
        ),
    ];
    for (extra, args, needles) in cases {
        let repo = GitRepo::new();
        repo.write_config("shop", "shop-artifacts", extra)
            .write("a", "a");
        repo.commit("c");
        assert_refused(&repo, args, 2, needles);
    }
    let repo = GitRepo::new();
    repo.write("a", "a");
    repo.commit("no config");
    assert_refused(&repo, &[], 2, &["dropship.toml"]);
}

#[test]
fn branch_comes_from_git_ci_variables_or_the_flag() {
    let repo = GitRepo::new();
    repo.write_config("shop", "shop-artifacts", "")
        .write("a", "a");
    repo.git(&["checkout", "-q", "-b", "feature/x"]);
    let commit = repo.commit("c");
    let branch = |cmd: &mut Command| {
        run(cmd.arg("--dry-run").arg("--json")).success().json()["branch"].clone()
    };
    assert_eq!(branch(&mut repo.bundler()), "feature/x");
    assert_eq!(
        branch(repo.bundler().args(["--branch", "release/1"])),
        "release/1"
    );
    repo.git(&["checkout", "-q", "--detach", &commit]);
    assert_eq!(
        branch(repo.bundler().env("GITHUB_REF_NAME", "main")),
        "main"
    );
    assert_eq!(
        branch(repo.bundler().env("CI_COMMIT_REF_NAME", "gitlab-branch")),
        "gitlab-branch"
    );
}
