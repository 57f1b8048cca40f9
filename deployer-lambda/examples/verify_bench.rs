//! Verification throughput and memory on a large bundle (used by `scripts/bench-lambda`).
//!
//! `verify_bench generate DIR MIB` writes a bundle tree of about MIB MiB (60 % incompressible
//! bytes, 40 % text, files of 8 MiB) with its manifest, and prints the tar member list
//! (manifest first). `verify_bench verify FILE SHA256` streams FILE through exactly the path
//! the Lambda uses for a `GetObject` body (`aws::verify_stream`: bounded channel into the
//! contract verifier) and prints bytes, seconds, MB/s and this process's peak RSS as JSON.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Instant;

use aws_sdk_s3::primitives::ByteStream;
use deployer_lambda::aws::verify_stream;
use dropship_contract::manifest::{DeploySettings, Manifest, MANIFEST_FORMAT};
use dropship_contract::verify::{ExpectedBundle, VerifyLimits};

const APP: &str = "bench";
const ENV: &str = "prod";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const FILE_BYTES: u64 = 8 << 20;

fn usage() -> ! {
    eprintln!("usage: verify_bench generate DIR MIB | verify_bench verify FILE SHA256");
    std::process::exit(2)
}

/// xorshift64*: fast, deterministic filler that gzip cannot shrink.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn generate(dir: &Path, mib: u64) -> std::io::Result<()> {
    const WORDS: &[&str] = &[
        "deploy", "release", "compose", "service", "health", "version", "bucket", "lambda",
        "verify", "manifest", "rollback", "current", "shared", "volume", "network", "config",
    ];
    fs::create_dir_all(dir.join(".dropship"))?;
    fs::create_dir_all(dir.join("data"))?;
    let total = mib << 20;
    let count = total.div_ceil(FILE_BYTES);
    let mut noise = Noise(0x9E37_79B9_7F4A_7C15);
    let mut names = Vec::new();
    let mut bytes = 0u64;
    for i in 0..count {
        let name = format!("data/part-{i:05}.{}", if i % 5 < 3 { "bin" } else { "txt" });
        let mut out = BufWriter::with_capacity(1 << 20, fs::File::create(dir.join(&name))?);
        let mut written = 0u64;
        if i % 5 < 3 {
            let mut buf = vec![0u8; 1 << 16];
            while written < FILE_BYTES {
                for c in buf.chunks_exact_mut(8) {
                    c.copy_from_slice(&noise.next().to_le_bytes());
                }
                out.write_all(&buf)?;
                written += buf.len() as u64;
            }
        } else {
            while written < FILE_BYTES {
                let r = noise.next();
                let line = format!(
                    "{} {} {} id={} {}\n",
                    WORDS[(r & 15) as usize],
                    WORDS[((r >> 4) & 15) as usize],
                    WORDS[((r >> 8) & 15) as usize],
                    r >> 40,
                    WORDS[((r >> 12) & 15) as usize]
                );
                let take = (FILE_BYTES - written).min(line.len() as u64) as usize;
                out.write_all(&line.as_bytes()[..take])?;
                written += take as u64;
            }
        }
        out.flush()?;
        bytes += written;
        names.push(name);
    }
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        app: APP.into(),
        branch: "main".into(),
        commit: COMMIT.into(),
        commit_time: 1_700_000_000,
        dirty: false,
        message: "verification benchmark".into(),
        files: names.len() as u64,
        bytes,
        deploy: DeploySettings::default(),
        overrides: Default::default(),
        legacy_env: None,
    };
    fs::write(dir.join(".dropship/manifest.json"), manifest.to_bytes())?;
    println!(".dropship/manifest.json");
    for n in names {
        println!("{n}");
    }
    Ok(())
}

fn peak_rss_kib() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn verify(file: &Path, sha256: &str) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let expected = ExpectedBundle {
        app: APP.into(),
        env: ENV.into(),
        commit: COMMIT.into(),
        dirty: false,
        branch: "main".into(),
        sha256: sha256.into(),
    };
    let limits = VerifyLimits {
        max_object_bytes: 8 << 30,
        ..VerifyLimits::default()
    };
    let started = Instant::now();
    let verified = rt.block_on(async {
        let body = ByteStream::read_from()
            .path(file)
            .buffer_size(256 * 1024)
            .build()
            .await?;
        anyhow::Ok(verify_stream(body, expected, limits).await?)
    })?;
    let secs = started.elapsed().as_secs_f64();
    let json = serde_json::json!({
        "object_bytes": verified.object_bytes,
        "unpacked_bytes": verified.unpacked_bytes,
        "entries": verified.entries,
        "seconds": secs,
        "mb_per_s": verified.object_bytes as f64 / 1e6 / secs,
        "unpacked_mb_per_s": verified.unpacked_bytes as f64 / 1e6 / secs,
        "peak_rss_kib": peak_rss_kib(),
    });
    println!("{json}");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["generate", dir, mib] => Ok(generate(
            Path::new(dir),
            mib.parse().unwrap_or_else(|_| usage()),
        )?),
        ["verify", file, sha] => verify(Path::new(file), sha),
        _ => usage(),
    }
}
