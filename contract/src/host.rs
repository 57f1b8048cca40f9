//! The host script's interface: the variables the Lambda exports for it, the exit codes it
//! returns, and the result line it prints last. `scripts/deploy-on-host.sh` documents the same
//! table; the host-script suite checks the two agree.
//!
//! The inputs carry no credential: the host downloads the bundle with its own instance role
//! (credentials from the instance metadata service, [`IMDS_ADDRESS`]), so a reader of the
//! command's parameters (`ssm:ListCommands`) learns only where the bundle is, which gives
//! nobody access to it.

use serde::{Deserialize, Serialize};

use crate::manifest::EnvRule;
use crate::percent::{self, URI_COMPONENT, URI_PATH};

/// Every input of `deploy-on-host.sh`, in the order the Lambda renders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HostVar {
    Action,
    App,
    Env,
    AppRoot,
    Bucket,
    Key,
    VersionId,
    Sequencer,
    Sha256,
    Region,
    S3Endpoint,
    BundleBytes,
    UnpackedBytes,
    Commit,
    ComposeFile,
    Profiles,
    HealthUrl,
    HealthTimeout,
    SharedPaths,
    KeepReleases,
    RequiredEnv,
    PreSwitchHook,
    Strategy,
    ProxyService,
    ProxyPort,
    ProxyListen,
    ProxyHealthPath,
    ProxyDrainTimeout,
    ProxyImage,
    RollbackTo,
    ExpectVersionId,
    LockTimeout,
    ExecutionTimeout,
}

impl HostVar {
    /// All inputs, for rendering and for checking the script's documented table.
    pub const ALL: [HostVar; 33] = [
        HostVar::Action,
        HostVar::App,
        HostVar::Env,
        HostVar::AppRoot,
        HostVar::Bucket,
        HostVar::Key,
        HostVar::VersionId,
        HostVar::Sequencer,
        HostVar::Sha256,
        HostVar::Region,
        HostVar::S3Endpoint,
        HostVar::BundleBytes,
        HostVar::UnpackedBytes,
        HostVar::Commit,
        HostVar::ComposeFile,
        HostVar::Profiles,
        HostVar::HealthUrl,
        HostVar::HealthTimeout,
        HostVar::SharedPaths,
        HostVar::KeepReleases,
        HostVar::RequiredEnv,
        HostVar::PreSwitchHook,
        HostVar::Strategy,
        HostVar::ProxyService,
        HostVar::ProxyPort,
        HostVar::ProxyListen,
        HostVar::ProxyHealthPath,
        HostVar::ProxyDrainTimeout,
        HostVar::ProxyImage,
        HostVar::RollbackTo,
        HostVar::ExpectVersionId,
        HostVar::LockTimeout,
        HostVar::ExecutionTimeout,
    ];

    /// The environment variable name.
    pub fn name(self) -> &'static str {
        match self {
            HostVar::Action => "DROPSHIP_ACTION",
            HostVar::App => "DROPSHIP_APP",
            HostVar::Env => "DROPSHIP_ENV",
            HostVar::AppRoot => "DROPSHIP_APP_ROOT",
            HostVar::Bucket => "DROPSHIP_BUCKET",
            HostVar::Key => "DROPSHIP_KEY",
            HostVar::VersionId => "DROPSHIP_VERSION_ID",
            HostVar::Sequencer => "DROPSHIP_SEQUENCER",
            HostVar::Sha256 => "DROPSHIP_SHA256",
            HostVar::Region => "DROPSHIP_REGION",
            HostVar::S3Endpoint => "DROPSHIP_S3_ENDPOINT",
            HostVar::BundleBytes => "DROPSHIP_BUNDLE_BYTES",
            HostVar::UnpackedBytes => "DROPSHIP_UNPACKED_BYTES",
            HostVar::Commit => "DROPSHIP_COMMIT",
            HostVar::ComposeFile => "DROPSHIP_COMPOSE_FILE",
            HostVar::Profiles => "DROPSHIP_PROFILES",
            HostVar::HealthUrl => "DROPSHIP_HEALTH_URL",
            HostVar::HealthTimeout => "DROPSHIP_HEALTH_TIMEOUT",
            HostVar::SharedPaths => "DROPSHIP_SHARED_PATHS",
            HostVar::KeepReleases => "DROPSHIP_KEEP_RELEASES",
            HostVar::RequiredEnv => "DROPSHIP_REQUIRED_ENV",
            HostVar::PreSwitchHook => "DROPSHIP_PRE_SWITCH_HOOK",
            HostVar::Strategy => "DROPSHIP_STRATEGY",
            HostVar::ProxyService => "DROPSHIP_PROXY_SERVICE",
            HostVar::ProxyPort => "DROPSHIP_PROXY_PORT",
            HostVar::ProxyListen => "DROPSHIP_PROXY_LISTEN",
            HostVar::ProxyHealthPath => "DROPSHIP_PROXY_HEALTH_PATH",
            HostVar::ProxyDrainTimeout => "DROPSHIP_PROXY_DRAIN_TIMEOUT",
            HostVar::ProxyImage => "DROPSHIP_PROXY_IMAGE",
            HostVar::RollbackTo => "DROPSHIP_ROLLBACK_TO",
            HostVar::ExpectVersionId => "DROPSHIP_EXPECT_VERSION_ID",
            HostVar::LockTimeout => "DROPSHIP_LOCK_TIMEOUT",
            HostVar::ExecutionTimeout => "DROPSHIP_EXECUTION_TIMEOUT",
        }
    }
}

/// Separator of list-valued inputs (profiles, shared paths).
pub const LIST_SEPARATOR: char = ',';

/// Where the host script reads its instance role's credentials (IMDSv2). Fixed in the script,
/// never an input: whoever may set inputs must not be able to point the host's credential
/// lookup anywhere else.
pub const IMDS_ADDRESS: &str = "169.254.169.254";

/// The IAM actions the host's own role needs, and `infra/` grants it on exactly its pair's
/// release key: `GetObject` with a `versionId` (the host never reads without one).
pub const HOST_IAM_ACTIONS: &[&str] = &["s3:GetObjectVersion"];

/// Longest `DROPSHIP_S3_ENDPOINT`.
pub const MAX_S3_ENDPOINT_LEN: usize = 255;
/// Longest `DROPSHIP_REGION`.
pub const MAX_REGION_LEN: usize = 32;

/// `DROPSHIP_REGION`: an AWS region name such as `eu-west-1` or `us-gov-west-1`
/// (`[a-z]{2}(-[a-z]+)+-[0-9]{1,2}`, at most [`MAX_REGION_LEN`] bytes). The host signs its
/// download for it. The script checks the same rule.
pub fn check_region(region: &str) -> Result<(), String> {
    let parts: Vec<&str> = region.split('-').collect();
    let letters = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase());
    let ok = region.len() <= MAX_REGION_LEN
        && parts.len() >= 3
        && parts[0].len() == 2
        && letters(parts[0])
        && parts[1..parts.len() - 1].iter().all(|p| letters(p))
        && (1..=2).contains(&parts[parts.len() - 1].len())
        && parts[parts.len() - 1].bytes().all(|b| b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "an AWS region name such as eu-west-1 (at most {MAX_REGION_LEN} bytes)"
        ))
    }
}

/// `DROPSHIP_S3_ENDPOINT`: `https://HOST[:PORT]`, or `http://` only for a test endpoint on
/// the host's own loopback (`localhost` or `127.x.x.x`, such as moto's); no path, query,
/// user or trailing `/`; at most [`MAX_S3_ENDPOINT_LEN`] bytes; a port is 1-65535 without
/// leading zeros. Plain http anywhere else would send the signed request, session token
/// included, in the clear. The script checks the same rule.
pub fn check_s3_endpoint(endpoint: &str) -> Result<(), String> {
    let expected = || {
        format!(
            "https://HOST[:PORT] without a path (http:// only for localhost or 127.x.x.x), at most {MAX_S3_ENDPOINT_LEN} bytes"
        )
    };
    if endpoint.len() > MAX_S3_ENDPOINT_LEN {
        return Err(expected());
    }
    let (host, secure) = if let Some(rest) = endpoint.strip_prefix("https://") {
        (rest, true)
    } else if let Some(rest) = endpoint.strip_prefix("http://") {
        (rest, false)
    } else {
        return Err(expected());
    };
    let (host, port) = match host.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (host, None),
    };
    let port_ok = port.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 5
            && !p.starts_with('0')
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u32>().is_ok_and(|n| n <= 65_535)
    });
    let host_ok = if secure {
        let b = host.as_bytes();
        !b.is_empty()
            && b.first().is_some_and(u8::is_ascii_alphanumeric)
            && b.last().is_some_and(u8::is_ascii_alphanumeric)
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || *c == b'.' || *c == b'-')
            && !host.contains("..")
    } else {
        host == "localhost" || is_loopback_ipv4(host)
    };
    if port_ok && host_ok {
        Ok(())
    } else {
        Err(expected())
    }
}

/// `127.a.b.c`, each part 1-3 digits and at most 255.
fn is_loopback_ipv4(host: &str) -> bool {
    let parts: Vec<&str> = host.split('.').collect();
    parts.len() == 4
        && parts[0] == "127"
        && parts.iter().all(|p| {
            (1..=3).contains(&p.len())
                && p.bytes().all(|b| b.is_ascii_digit())
                && p.parse::<u16>().is_ok_and(|n| n <= 255)
        })
}

/// S3's regional endpoint, what the Lambda hands hosts when it talks to AWS's own S3.
pub fn regional_s3_endpoint(region: &str) -> String {
    let suffix = if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    };
    format!("https://s3.{region}.{suffix}")
}

/// The request target the host GETs under `DROPSHIP_S3_ENDPOINT` (path style): the bucket,
/// the key percent-encoded as a URI path, and the version as a query value. The script
/// encodes the same way (the host-script suite serves the object only at this target).
pub fn object_request_target(bucket: &str, key: &str, version_id: &str) -> String {
    format!(
        "/{bucket}/{}?versionId={}",
        percent::encode(key, &URI_PATH),
        percent::encode(version_id, &URI_COMPONENT)
    )
}

/// `DROPSHIP_REQUIRED_ENV`: one rule per line, `NAME`, `NAME MIN` or `NAME MIN PATTERN`
/// (single spaces; the pattern is the rest of the line and may hold spaces and commas, never
/// a control character, so a line cannot hide another).
pub fn required_env_value(rules: &[EnvRule]) -> String {
    rules
        .iter()
        .map(|r| match (&r.pattern, r.min_length) {
            (None, 0) => r.name.clone(),
            (None, min) => format!("{} {min}", r.name),
            (Some(p), min) => format!("{} {min} {p}", r.name),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The host script as it is sent: comment lines and indentation removed (the script keeps
/// its documentation in the repository, SSM's command size limit counts every byte). Only
/// whole comment lines go, so nothing the script executes changes; the host-script suite
/// runs exactly this form.
pub fn compact_script(script: &str) -> String {
    let mut out = String::with_capacity(script.len());
    for line in script.lines() {
        let code = line.trim_start();
        if code.is_empty() || code.starts_with('#') {
            continue;
        }
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// Name prefix of the private directory (`mktemp -d`, mode 0700) the command unpacks the
/// host script into; the script removes a directory of this name it runs from at once.
pub const SCRIPT_DIR_PREFIX: &str = "dropship-host.";

/// The host script as it is sent ([`compact_script`], then gzip level 9 and base64 in a quoted
/// here-document), followed by the lines that unpack it into a fresh private directory under
/// `/run` (else `$TMPDIR` or `/tmp`) and `exec` bash on that file. SSM's command limit is
/// 64 KiB; the compacted script alone grew past what the largest inputs leave, and compressed
/// it takes well under half. A file, not a pipe into bash: the script's children must not
/// inherit the script as their standard input. When the host cannot unpack it (no `base64`,
/// `gzip`, `mktemp` or writable temporary directory), the command prints a result line of
/// its own (exit 4, nothing touched). The bytes depend only on the script (gzip without a
/// name or time).
pub fn packed_script(script: &str) -> String {
    use std::io::Write;
    let compact = compact_script(script);
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    gz.write_all(compact.as_bytes())
        .expect("gzip into memory cannot fail");
    let packed = gz.finish().expect("gzip into memory cannot fail");
    let prefix = SCRIPT_DIR_PREFIX;
    let mut out = String::with_capacity(packed.len() * 4 / 3 + 1024);
    out.push_str(&format!(
        "if dropship_dir=$(mktemp -d /run/{prefix}XXXXXXXX 2>/dev/null || mktemp -d \"${{TMPDIR:-/tmp}}/{prefix}XXXXXXXX\") &&\n\
         base64 -d <<'DROPSHIP_SCRIPT' | gzip -dc >\"$dropship_dir/deploy-on-host.sh\"; then\n"
    ));
    for line in base64_encode(&packed).as_bytes().chunks(76) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(
        "DROPSHIP_SCRIPT\n\
         exec /bin/bash \"$dropship_dir/deploy-on-host.sh\"\n\
         fi\n\
         if [ -n \"${dropship_dir:-}\" ]; then rm -rf -- \"$dropship_dir\"; fi\n",
    );
    out.push_str(&format!(
        "printf '%s\\n' '{RESULT_PREFIX}{{\"outcome\":\"failed\",\"exit_code\":4,\"message\":\"preflight failed: the host could not unpack the deploy script (it needs base64, gzip, mktemp and a writable /run or /tmp); nothing was touched\"}}'\nexit 4\n"
    ));
    out
}

/// Standard base64 (RFC 4648, with padding), as `base64 -d` reads it.
fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The script's exit codes; distinct so SSM's per-host status says what happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ExitCode {
    /// Deployed, no-op, stale, or a requested rollback done.
    Ok = 0,
    BadInput = 2,
    LockTimeout = 3,
    PreflightFailed = 4,
    DownloadFailed = 5,
    UnpackFailed = 6,
    ConfigInvalid = 7,
    HookFailed = 8,
    RolledBack = 9,
    RollbackFailed = 10,
}

impl ExitCode {
    /// Every code, for documentation and tests.
    pub const ALL: [ExitCode; 10] = [
        ExitCode::Ok,
        ExitCode::BadInput,
        ExitCode::LockTimeout,
        ExitCode::PreflightFailed,
        ExitCode::DownloadFailed,
        ExitCode::UnpackFailed,
        ExitCode::ConfigInvalid,
        ExitCode::HookFailed,
        ExitCode::RolledBack,
        ExitCode::RollbackFailed,
    ];

    /// The numeric process exit code.
    pub fn code(self) -> i32 {
        self as i32
    }

    /// Maps a process exit code back; `None` for codes the script never returns.
    pub fn from_code(code: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.code() == code)
    }

    /// One line for operators.
    pub fn describe(self) -> &'static str {
        match self {
            ExitCode::Ok => {
                "deployed, already current, stale (skipped), superseded or rollback done"
            }
            ExitCode::BadInput => "bad input: nothing was touched",
            ExitCode::LockTimeout => "another deploy held the host lock too long",
            ExitCode::PreflightFailed => {
                "preflight failed (disk space, time before SSM's timeout, or docker compose missing)"
            }
            ExitCode::DownloadFailed => "download, image pull or SHA-256 verification failed",
            ExitCode::UnpackFailed => "unpacking the bundle failed",
            ExitCode::ConfigInvalid => "compose file or .env invalid",
            ExitCode::HookFailed => "pre-switch hook failed",
            ExitCode::RolledBack => {
                "new release failed compose up, health or its commit; previous release restored"
            }
            ExitCode::RollbackFailed => {
                "rollback also failed, or the script was stopped: the host needs an operator or a rerun"
            }
        }
    }
}

/// Prefix of the script's last output line.
pub const RESULT_PREFIX: &str = "DROPSHIP_RESULT ";

/// What the host reports in its result line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostOutcome {
    Deployed,
    Noop,
    Stale,
    RolledBack,
    Failed,
    RollbackFailed,
    Status,
    /// Printed before a step after which only a complete run leaves the host verified (the
    /// switch). It stays the last result line only when the run was killed there (SSM's
    /// timeout or cancel is SIGKILL to the whole process group): the next run restores the
    /// committed release first. Exit code 10.
    Interrupted,
    /// `rollback` with `DROPSHIP_EXPECT_VERSION_ID`: the host's committed version is another
    /// one (it moved on, or never got it), so nothing was done. Exit code 0.
    Superseded,
}

/// The JSON after [`RESULT_PREFIX`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostResult {
    pub outcome: HostOutcome,
    #[serde(default)]
    pub release: String,
    #[serde(default)]
    pub previous: String,
    #[serde(default)]
    pub version_id: String,
    #[serde(default)]
    pub commit: String,
    pub exit_code: i32,
    #[serde(default)]
    pub message: String,
}

impl HostResult {
    /// Finds the last result line in a script's output.
    pub fn from_output(output: &str) -> Option<Self> {
        output
            .lines()
            .rev()
            .find_map(|line| line.strip_prefix(RESULT_PREFIX))
            .and_then(|json| serde_json::from_str(json).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(plain.as_bytes()), encoded, "{plain:?}");
        }
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(base64_encode(&all).len(), 344);
    }

    /// Runs `command` with bash as the agent would (a file), `path` as PATH; (status, stdout).
    fn run_command(command: &str, path: &str) -> (i32, String) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("_script.sh");
        std::fs::write(&file, command).unwrap();
        let out = std::process::Command::new("/bin/bash")
            .arg(&file)
            .env_clear()
            .env("PATH", path)
            .env("TMPDIR", dir.path())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    #[test]
    fn the_packed_script_unpacks_into_a_private_file_and_runs_it_with_bash() {
        // What the host script does first: remove the directory it was unpacked into.
        let script = "# comment lines are not sent\n\
                      if [[ $0 == */dropship-host.*/deploy-on-host.sh ]]; then rm -rf -- \"${0%/*}\"; fi\n\
                      printf 'ran from %s; dir gone: %s; stdin: %s\\n' \"$0\" \"$([[ -e ${0%/*} ]] && echo no || echo yes)\" \"$(cat)\"\n";
        let packed = packed_script(script);
        assert!(
            !packed.contains("comment lines"),
            "compacted before packing"
        );
        assert_eq!(packed, packed_script(script), "deterministic");
        let (code, out) = run_command(&packed, "/usr/bin:/bin");
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("/dropship-host."), "{out}");
        assert!(out.contains("dir gone: yes"), "{out}");
        // Not run from a pipe: its standard input is the command's, not the script.
        assert!(out.ends_with("stdin: \n"), "{out:?}");
    }

    #[test]
    fn a_host_that_cannot_unpack_the_script_says_so_in_a_result_line() {
        let packed = packed_script("echo never\n");
        let empty = tempfile::tempdir().unwrap();
        // bash itself is called by its path; base64, gzip and mktemp are not found.
        let (code, out) = run_command(&packed, &empty.path().display().to_string());
        assert_eq!(code, 4, "{out}");
        let result = HostResult::from_output(&out).expect("a result line");
        assert_eq!((result.outcome, result.exit_code), (HostOutcome::Failed, 4));
        assert!(
            result.message.contains("could not unpack"),
            "{}",
            result.message
        );
        assert!(!out.contains("never"));
    }

    #[test]
    fn exit_codes_are_distinct_and_round_trip() {
        let mut codes: Vec<i32> = ExitCode::ALL.iter().map(|c| c.code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), ExitCode::ALL.len());
        for c in ExitCode::ALL {
            assert_eq!(ExitCode::from_code(c.code()), Some(c));
        }
        assert_eq!(ExitCode::from_code(1), None);
    }

    #[test]
    fn variable_names_are_unique_and_prefixed() {
        let mut names: Vec<&str> = HostVar::ALL.iter().map(|v| v.name()).collect();
        assert!(names.iter().all(|n| n.starts_with("DROPSHIP_")));
        names.sort();
        names.dedup();
        assert_eq!(names.len(), HostVar::ALL.len());
    }

    #[test]
    fn region_names_follow_aws_and_nothing_else_passes() {
        for ok in [
            "eu-west-1",
            "us-gov-west-1",
            "cn-north-1",
            "ap-southeast-10",
        ] {
            assert_eq!(check_region(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "eu-west",
            "EU-west-1",
            "eu-west-100",
            "e-west-1",
            "eu--1",
            "eu-west-1 ",
            "eu-west-1\n",
            &format!("eu-{}-1", "w".repeat(MAX_REGION_LEN)),
        ] {
            assert!(check_region(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn s3_endpoints_are_https_or_loopback_http_without_a_path() {
        let long_host = format!("https://{}.com", "a".repeat(MAX_S3_ENDPOINT_LEN - 12));
        assert_eq!(long_host.len(), MAX_S3_ENDPOINT_LEN);
        for ok in [
            "https://s3.eu-west-1.amazonaws.com",
            "https://bucket.vpce-1a2b.s3.eu-west-1.vpce.amazonaws.com:443",
            "https://10.0.0.5:65535",
            "http://127.0.0.1:5000",
            "http://127.255.0.1",
            "http://localhost:1",
            long_host.as_str(),
        ] {
            assert_eq!(check_s3_endpoint(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "s3.amazonaws.com",
            "ftp://s3.amazonaws.com",
            "https://",
            "https://s3.amazonaws.com/",
            "https://s3.amazonaws.com/bucket",
            "https://s3.amazonaws.com?x=1",
            "https://user@s3.amazonaws.com",
            "https://s3..amazonaws.com",
            "https://-s3.amazonaws.com",
            "https://s3.amazonaws.com:0",
            "https://s3.amazonaws.com:065",
            "https://s3.amazonaws.com:65536",
            "https://s3.amazonaws.com:",
            "http://10.0.0.5",
            "http://128.0.0.1",
            "http://127.0.0.256",
            "http://127.0.0.1.evil.example",
            "http://localhost.evil.example",
            "http://[::1]:5000",
            "https://s3.amazonaws.com\n",
            &format!("{long_host}a"),
        ] {
            assert!(check_s3_endpoint(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            regional_s3_endpoint("eu-west-1"),
            "https://s3.eu-west-1.amazonaws.com"
        );
        assert_eq!(
            regional_s3_endpoint("cn-north-1"),
            "https://s3.cn-north-1.amazonaws.com.cn"
        );
        check_s3_endpoint(&regional_s3_endpoint("us-gov-west-1")).unwrap();
    }

    #[test]
    fn the_object_target_encodes_the_key_as_a_path_and_the_version_as_a_value() {
        assert_eq!(
            object_request_target("rel", "releases/shop/prod.tar.gz", "3HL4kq.x_y"),
            "/rel/releases/shop/prod.tar.gz?versionId=3HL4kq.x_y"
        );
        assert_eq!(
            object_request_target("rel", "releases/a b/é.tar.gz", "v+1=&x"),
            "/rel/releases/a%20b/%C3%A9.tar.gz?versionId=v%2B1%3D%26x"
        );
    }

    #[test]
    fn required_env_rules_travel_one_per_line_and_plain_names_stay_plain() {
        let rules = vec![
            EnvRule::named("DB_URL"),
            EnvRule {
                min_length: 32,
                ..EnvRule::named("SECRET_KEY")
            },
            EnvRule {
                pattern: Some("a, b|c d".into()),
                ..EnvRule::named("MODE")
            },
        ];
        assert_eq!(
            required_env_value(&rules),
            "DB_URL\nSECRET_KEY 32\nMODE 0 a, b|c d"
        );
        assert_eq!(required_env_value(&[]), "");
    }

    #[test]
    fn compaction_drops_comment_lines_and_indentation_only() {
        let script = "#!/usr/bin/env bash\n# doc\n\nf() {\n    # inside\n    echo '# not a comment' \\\n        done\n}\n";
        assert_eq!(
            compact_script(script),
            "f() {\necho '# not a comment' \\\ndone\n}\n"
        );
    }

    #[test]
    fn new_outcomes_read_back() {
        let r = HostResult::from_output(
            "DROPSHIP_RESULT {\"outcome\":\"interrupted\",\"exit_code\":10}\n",
        )
        .unwrap();
        assert_eq!(r.outcome, HostOutcome::Interrupted);
        let r =
            HostResult::from_output("DROPSHIP_RESULT {\"outcome\":\"superseded\",\"exit_code\":0}")
                .unwrap();
        assert_eq!(r.outcome, HostOutcome::Superseded);
    }

    #[test]
    fn reads_the_last_result_line() {
        let out = "step lock\nDROPSHIP_RESULT {\"outcome\":\"noop\",\"exit_code\":0}\nnoise\nDROPSHIP_RESULT {\"outcome\":\"rolled_back\",\"release\":\"r2\",\"exit_code\":9}\n";
        let r = HostResult::from_output(out).unwrap();
        assert_eq!(r.outcome, HostOutcome::RolledBack);
        assert_eq!(r.release, "r2");
        assert_eq!(r.exit_code, 9);
        assert!(HostResult::from_output("nothing").is_none());
    }
}
