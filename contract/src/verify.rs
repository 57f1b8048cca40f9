//! The streaming bundle verifier the Lambda runs before any host sees a bundle.
//!
//! The object is read exactly once, through SHA-256, gunzip and tar parsing, in constant
//! memory whatever its size: every entry is checked with [`crate::tar_rules`], the manifest
//! must be the first entry and agree with the object metadata, and the digest of the whole
//! object (read to its last byte) must equal the metadata's `sha256`. Any failure names the
//! object part at fault (entry path and rule, field and both values, …).
//!
//! The tar stream is parsed in "raw" mode with GNU long names and long link names handled
//! here, capped at [`MAX_PATH_BYTES`], so no header can make the verifier buffer an
//! attacker-chosen amount of memory. PAX headers and GNU sparse files are not part of the
//! contract (`ustar` + GNU long names) and are refused.

use std::io::{self, BufRead, BufReader, Read};
use std::time::Instant;

use flate2::bufread::MultiGzDecoder;
use sha2::{Digest, Sha256};
use tar::EntryType;

use crate::manifest::{Manifest, SettingsError, MANIFEST_PATH};
use crate::tar_rules::{EntryChecker, EntryFacts, EntryKind, Limits, Violation, MAX_PATH_BYTES};

/// Largest manifest accepted (it is a few hundred bytes in practice).
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// Decompressed bytes accepted after the tar end-of-archive marker (block padding; all zero).
pub const MAX_TRAILING_BYTES: u64 = 1 << 20;

/// What the metadata promises about the bundle; the verifier holds the bytes to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedBundle {
    /// App name from the key and metadata.
    pub app: String,
    /// Environment name from the key and metadata.
    pub env: String,
    /// Full commit hash from the metadata.
    pub commit: String,
    /// Dirty flag from the metadata.
    pub dirty: bool,
    /// Branch from the metadata.
    pub branch: String,
    /// Lower-case hex SHA-256 of the whole object, from the metadata.
    pub sha256: String,
}

/// Size limits for one verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyLimits {
    /// Largest object (compressed bytes) read before giving up.
    pub max_object_bytes: u64,
    /// Per-entry and total limits of the tar rules.
    pub entries: Limits,
    /// Most decompressed bytes per compressed byte read so far, once more than
    /// [`VerifyLimits::inflation_free_bytes`] have been decompressed: a gzip bomb is refused
    /// after inflating about that many bytes instead of its whole (up to 8 GiB) content.
    pub max_inflation_ratio: u64,
    /// Decompressed bytes allowed whatever the ratio (small bundles of repetitive text).
    pub inflation_free_bytes: u64,
}

/// Default [`VerifyLimits::max_inflation_ratio`]. Deflate's own ceiling is about 1032:1;
/// source trees compress 3-10:1 and tar's block padding of many tiny files about 50:1, so
/// 200:1 leaves real bundles a wide margin (a large file of zeros belongs in `shared/`).
pub const DEFAULT_MAX_INFLATION_RATIO: u64 = 200;
/// Default [`VerifyLimits::inflation_free_bytes`]: 64 MiB.
pub const DEFAULT_INFLATION_FREE_BYTES: u64 = 64 << 20;

impl Default for VerifyLimits {
    fn default() -> Self {
        Self {
            max_object_bytes: 2 << 30,
            entries: Limits::default(),
            max_inflation_ratio: DEFAULT_MAX_INFLATION_RATIO,
            inflation_free_bytes: DEFAULT_INFLATION_FREE_BYTES,
        }
    }
}

/// What a successful verification established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedBundle {
    /// The manifest (first entry), checked against the metadata.
    pub manifest: Manifest,
    /// Lower-case hex SHA-256 of the object (equals the expected one).
    pub sha256: String,
    /// Compressed object size.
    pub object_bytes: u64,
    /// Entries after the manifest.
    pub entries: u64,
    /// Sum of regular file sizes after the manifest (disk needed on the host, roughly).
    pub unpacked_bytes: u64,
    /// Milliseconds spent.
    pub millis: u64,
}

/// Why a bundle was refused. Only [`VerifyError::Read`] is transient (the object could not be
/// read); every other variant is a property of the bytes and will not change on retry.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Reading the object itself failed (network, S3); retrying may help.
    #[error("reading the bundle failed after {offset} bytes: {source}; the read is retried")]
    Read {
        /// Bytes read before the failure.
        offset: u64,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The object is larger than allowed.
    #[error(
        "bundle is larger than the {limit}-byte limit (DROPSHIP_MAX_BUNDLE_BYTES); \
         shrink it or raise the limit"
    )]
    ObjectTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The gzip stream inflates far more than any real bundle (a decompression bomb).
    #[error(
        "bundle inflates to more than {ratio} bytes per compressed byte ({inflated} bytes from \
         the first {compressed}): refused as a decompression bomb before inflating the rest; \
         keep large repetitive files out of the bundle (shared/ on the host)"
    )]
    InflationRatio {
        /// The limit.
        ratio: u64,
        /// Decompressed bytes when refused.
        inflated: u64,
        /// Compressed bytes read by then.
        compressed: u64,
    },
    /// The gzip stream is broken (not gzip, truncated, bad CRC).
    #[error("bundle is not a valid gzip stream: {detail}")]
    Gzip {
        /// What the decoder said.
        detail: String,
    },
    /// The tar structure is broken (bad header checksum, truncated entry, …).
    #[error("bundle is not a valid tar archive: {detail}")]
    Tar {
        /// What the parser said.
        detail: String,
    },
    /// A tar header type the contract does not use (PAX, sparse, …).
    #[error(
        "entry {path:?}: tar header type {kind} is not allowed (bundles are ustar with GNU long names)"
    )]
    UnsupportedHeader {
        /// Path of the entry (as stored).
        path: String,
        /// Header type description.
        kind: String,
    },
    /// An entry broke a tar rule; the message names the entry and the rule.
    #[error("{0}")]
    Entry(#[from] Violation),
    /// The archive has no entries, or no manifest at all.
    #[error("bundle has no manifest ({MANIFEST_PATH}); build it with bundle-and-upload")]
    ManifestMissing,
    /// The manifest exists but is not the first entry.
    #[error("bundle's first entry is {first:?}, but the manifest {MANIFEST_PATH} must come first")]
    ManifestNotFirst {
        /// The actual first entry.
        first: String,
    },
    /// The manifest entry is not a regular file or is too large.
    #[error("manifest {MANIFEST_PATH} is {detail}")]
    ManifestShape {
        /// What is wrong with it.
        detail: String,
    },
    /// The manifest is not valid JSON for the contract.
    #[error("manifest {MANIFEST_PATH} is invalid: {detail}")]
    ManifestInvalid {
        /// Parser message.
        detail: String,
    },
    /// The manifest's deploy settings are unsafe.
    #[error("manifest {MANIFEST_PATH}: {0}")]
    ManifestSettings(#[from] SettingsError),
    /// The manifest disagrees with the object metadata.
    #[error(
        "manifest field {field} is {manifest:?} but the object metadata says {metadata:?}; \
         the bundle and its metadata do not belong together"
    )]
    ManifestMismatch {
        /// Field name.
        field: &'static str,
        /// Value in the manifest.
        manifest: String,
        /// Value in the metadata.
        metadata: String,
    },
    /// The manifest's file count or byte total disagrees with the archive.
    #[error("manifest field {field} is {manifest} but the archive holds {actual}")]
    ManifestCounts {
        /// `files` or `bytes`.
        field: &'static str,
        /// Value in the manifest.
        manifest: u64,
        /// Counted value.
        actual: u64,
    },
    /// Data follows the archive (non-zero padding, a second archive in a later gzip member, …).
    #[error("bundle has data after the end of the archive: {detail}")]
    TrailingData {
        /// What was found.
        detail: String,
    },
    /// The object's digest is not the one in its metadata.
    #[error(
        "bundle SHA-256 is {actual} but the object metadata says {expected}: the object was \
         changed or corrupted after upload"
    )]
    ShaMismatch {
        /// From the metadata.
        expected: String,
        /// Computed over every byte read.
        actual: String,
    },
}

impl VerifyError {
    /// Whether retrying could succeed (only a failed read).
    pub fn is_transient(&self) -> bool {
        matches!(self, VerifyError::Read { .. })
    }
}

/// Hashes and counts every byte read from the object, and remembers whether the underlying
/// reader (not the decoder) failed, so read errors stay distinguishable from corrupt data.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    limit: u64,
    read_error: Option<io::Error>,
    too_large: bool,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.hasher.update(&buf[..n]);
                self.count += n as u64;
                if self.count > self.limit {
                    self.too_large = true;
                    return Err(io::Error::other("object over size limit"));
                }
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let copy = io::Error::new(e.kind(), e.to_string());
                self.read_error = Some(e);
                Err(copy)
            }
        }
    }
}

/// Counts what the decoder hands out and stops it once the output outgrows the compressed
/// input by more than the allowed ratio (past the free allowance).
struct InflationGuard<R> {
    gz: MultiGzDecoder<BufReader<HashingReader<R>>>,
    inflated: u64,
    max_ratio: u64,
    free_bytes: u64,
    tripped: Option<(u64, u64)>,
}

impl<R: Read> Read for InflationGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.gz.read(buf)?;
        self.inflated += n as u64;
        if self.inflated > self.free_bytes {
            let compressed = self.gz.get_ref().get_ref().count;
            if self.inflated / self.max_ratio.max(1) > compressed {
                self.tripped = Some((self.inflated, compressed));
                return Err(io::Error::other("decompression bomb"));
            }
        }
        Ok(n)
    }
}

/// Reads `reader` once and checks everything the contract says about a bundle.
pub fn verify_bundle<R: Read>(
    reader: R,
    expected: &ExpectedBundle,
    limits: &VerifyLimits,
) -> Result<VerifiedBundle, VerifyError> {
    let started = Instant::now();
    let hashing = HashingReader {
        inner: reader,
        hasher: Sha256::new(),
        count: 0,
        limit: limits.max_object_bytes,
        read_error: None,
        too_large: false,
    };
    // Every gzip member is read, as `tar -xz` on the host reads them (the bundler writes one
    // member per block); whatever any member holds after the end-of-archive marker is refused.
    let mut gz = InflationGuard {
        gz: MultiGzDecoder::new(BufReader::with_capacity(256 * 1024, hashing)),
        inflated: 0,
        max_ratio: limits.max_inflation_ratio,
        free_bytes: limits.inflation_free_bytes,
        tripped: None,
    };
    let scanned = scan_archive(&mut gz, expected, limits);
    // Map decoder/tar errors that were really read failures, the size limit or a bomb.
    let classify = |guard: &mut InflationGuard<R>, err: VerifyError| {
        if let Some((inflated, compressed)) = guard.tripped {
            return VerifyError::InflationRatio {
                ratio: guard.max_ratio,
                inflated,
                compressed,
            };
        }
        let inner = guard.gz.get_mut().get_mut();
        if let Some(source) = inner.read_error.take() {
            VerifyError::Read {
                offset: inner.count,
                source,
            }
        } else if inner.too_large {
            VerifyError::ObjectTooLarge { limit: inner.limit }
        } else {
            err
        }
    };
    let scan = match scanned {
        Ok(scan) => scan,
        Err(e) => return Err(classify(&mut gz, e)),
    };

    // Drain the decompressed stream: only zero padding may follow the end-of-archive marker,
    // and reaching EOF makes the decoder check the gzip CRC and length.
    if let Err(e) = drain_padding(&mut gz) {
        return Err(classify(&mut gz, e));
    }
    // The decoder stops only at the end of the object or at bytes that are not a gzip member;
    // nothing may be left.
    let mut raw = gz.gz.into_inner();
    let leftover = match count_to_end(&mut raw) {
        Ok(n) => n,
        Err(_) => {
            let inner = raw.get_mut();
            return Err(if let Some(source) = inner.read_error.take() {
                VerifyError::Read {
                    offset: inner.count,
                    source,
                }
            } else {
                VerifyError::ObjectTooLarge { limit: inner.limit }
            });
        }
    };
    if leftover > 0 {
        return Err(VerifyError::TrailingData {
            detail: format!("{leftover} bytes after the gzip stream"),
        });
    }
    let hashing = raw.into_inner();
    let actual = hex::encode(hashing.hasher.finalize());
    if !actual.eq_ignore_ascii_case(&expected.sha256) {
        return Err(VerifyError::ShaMismatch {
            expected: expected.sha256.clone(),
            actual,
        });
    }
    Ok(VerifiedBundle {
        manifest: scan.manifest,
        sha256: actual,
        object_bytes: hashing.count,
        entries: scan.entries,
        unpacked_bytes: scan.unpacked_bytes,
        millis: started.elapsed().as_millis() as u64,
    })
}

struct Scan {
    manifest: Manifest,
    entries: u64,
    unpacked_bytes: u64,
}

fn io_to_verify(err: io::Error) -> VerifyError {
    // flate2 reports corrupt data as InvalidInput/InvalidData; everything else from the
    // decoder stack is classified by the caller (read failure or size limit) first.
    VerifyError::Gzip {
        detail: err.to_string(),
    }
}

fn tar_err(err: io::Error) -> VerifyError {
    if err.kind() == io::ErrorKind::InvalidInput || err.kind() == io::ErrorKind::InvalidData {
        // Decoder errors surface as these kinds through the tar reader.
        if err.to_string().contains("gzip") || err.to_string().contains("deflate") {
            return io_to_verify(err);
        }
    }
    if err.kind() == io::ErrorKind::UnexpectedEof {
        return VerifyError::Tar {
            detail: format!("truncated archive ({err})"),
        };
    }
    VerifyError::Tar {
        detail: err.to_string(),
    }
}

fn trim_nuls(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
    &bytes[..end]
}

/// Reads a GNU long-name payload, refusing anything longer than a path can be.
fn read_long_name<E: Read>(
    entry: &mut E,
    size: u64,
    for_what: &str,
) -> Result<Vec<u8>, VerifyError> {
    if size > MAX_PATH_BYTES as u64 + 1 {
        return Err(VerifyError::Entry(Violation::PathTooLong {
            path: format!("<GNU long {for_what} of {size} bytes>"),
        }));
    }
    let mut buf = Vec::with_capacity(size as usize);
    entry.read_to_end(&mut buf).map_err(tar_err)?;
    Ok(trim_nuls(&buf).to_vec())
}

fn scan_archive<R: Read>(
    gz: &mut R,
    expected: &ExpectedBundle,
    limits: &VerifyLimits,
) -> Result<Scan, VerifyError> {
    let mut archive = tar::Archive::new(gz);
    let entries = archive.entries().map_err(tar_err)?.raw(true);
    let mut checker = EntryChecker::new(limits.entries);
    let mut manifest: Option<Manifest> = None;
    let mut first: Option<String> = None;
    let mut manifest_later = false;
    let mut long_name: Option<Vec<u8>> = None;
    let mut long_link: Option<Vec<u8>> = None;
    let mut files_after = 0u64;
    let mut bytes_after = 0u64;

    for entry in entries {
        let mut entry = entry.map_err(tar_err)?;
        let header = entry.header();
        let ty = header.entry_type();
        let size = entry.size();
        if ty.is_gnu_longname() {
            if long_name.is_some() {
                return Err(VerifyError::Tar {
                    detail: "two GNU long-name headers for one entry".into(),
                });
            }
            long_name = Some(read_long_name(&mut entry, size, "name")?);
            continue;
        }
        if ty.is_gnu_longlink() {
            if long_link.is_some() {
                return Err(VerifyError::Tar {
                    detail: "two GNU long-link headers for one entry".into(),
                });
            }
            long_link = Some(read_long_name(&mut entry, size, "link name")?);
            continue;
        }
        let path_bytes: Vec<u8> = match long_name.take() {
            Some(p) => p,
            None => entry.path_bytes().into_owned(),
        };
        let link_bytes: Option<Vec<u8>> = match long_link.take() {
            Some(l) => Some(l),
            None => entry.link_name_bytes().map(|l| l.into_owned()),
        };
        let shown = String::from_utf8_lossy(&path_bytes).into_owned();
        let kind = match ty {
            EntryType::Regular | EntryType::Continuous => EntryKind::File,
            EntryType::Directory => EntryKind::Directory,
            EntryType::Symlink => EntryKind::Symlink,
            EntryType::Link => EntryKind::Hardlink,
            EntryType::Char => EntryKind::CharDevice,
            EntryType::Block => EntryKind::BlockDevice,
            EntryType::Fifo => EntryKind::Fifo,
            EntryType::XHeader | EntryType::XGlobalHeader | EntryType::GNUSparse => {
                return Err(VerifyError::UnsupportedHeader {
                    path: shown,
                    kind: format!("{ty:?}"),
                })
            }
            _ => EntryKind::Other,
        };
        let mode = entry.header().mode().map_err(|e| VerifyError::Tar {
            detail: format!("entry {shown:?}: unreadable mode ({e})"),
        })?;
        let path = checker.check(&EntryFacts {
            path: &path_bytes,
            kind,
            mode,
            size,
            link_target: link_bytes.as_deref(),
        })?;

        if first.is_none() {
            first = Some(path.clone());
            if path == MANIFEST_PATH {
                if kind != EntryKind::File {
                    return Err(VerifyError::ManifestShape {
                        detail: "not a regular file".into(),
                    });
                }
                if size > MAX_MANIFEST_BYTES {
                    return Err(VerifyError::ManifestShape {
                        detail: format!("{size} bytes, over the {MAX_MANIFEST_BYTES}-byte limit"),
                    });
                }
                let mut buf = Vec::with_capacity(size as usize);
                entry.read_to_end(&mut buf).map_err(tar_err)?;
                let parsed =
                    Manifest::from_bytes(&buf).map_err(|e| VerifyError::ManifestInvalid {
                        detail: e.to_string(),
                    })?;
                check_manifest(&parsed, expected)?;
                manifest = Some(parsed);
                continue;
            }
        } else if path == MANIFEST_PATH {
            manifest_later = true;
        }
        files_after += 1;
        if kind == EntryKind::File {
            bytes_after += size;
        }
    }
    if long_name.is_some() || long_link.is_some() {
        return Err(VerifyError::Tar {
            detail: "GNU long-name header at the end of the archive describes no entry".into(),
        });
    }
    // The whole-tree symlink rule, with the shared paths the host will link in.
    if let Some(m) = &manifest {
        let shared = m
            .settings_for(&expected.env)
            .map(|s| s.shared_paths)
            .unwrap_or_default();
        checker.finish(&shared)?;
    }

    let manifest = match (manifest, first) {
        (Some(m), _) => m,
        (None, Some(first)) if manifest_later => {
            return Err(VerifyError::ManifestNotFirst { first })
        }
        (None, _) => return Err(VerifyError::ManifestMissing),
    };
    if manifest.files != files_after {
        return Err(VerifyError::ManifestCounts {
            field: "files",
            manifest: manifest.files,
            actual: files_after,
        });
    }
    if manifest.bytes != bytes_after {
        return Err(VerifyError::ManifestCounts {
            field: "bytes",
            manifest: manifest.bytes,
            actual: bytes_after,
        });
    }
    Ok(Scan {
        manifest,
        entries: files_after,
        unpacked_bytes: bytes_after,
    })
}

fn check_manifest(m: &Manifest, expected: &ExpectedBundle) -> Result<(), VerifyError> {
    let mismatch = |field, manifest: &str, metadata: &str| VerifyError::ManifestMismatch {
        field,
        manifest: manifest.to_owned(),
        metadata: metadata.to_owned(),
    };
    if m.app != expected.app {
        return Err(mismatch("app", &m.app, &expected.app));
    }
    if m.commit != expected.commit {
        return Err(mismatch("commit", &m.commit, &expected.commit));
    }
    if m.dirty != expected.dirty {
        return Err(mismatch(
            "dirty",
            &m.dirty.to_string(),
            &expected.dirty.to_string(),
        ));
    }
    if m.branch != expected.branch {
        return Err(mismatch("branch", &m.branch, &expected.branch));
    }
    // The environment is the key's (the bytes name none): its effective settings must hold.
    m.settings_for(&expected.env)?;
    Ok(())
}

/// Reads the decompressed stream after the end-of-archive marker; only zeros are allowed.
fn drain_padding<R: Read>(gz: &mut R) -> Result<(), VerifyError> {
    let mut buf = [0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match gz.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_to_verify(e)),
        };
        total += n as u64;
        if buf[..n].iter().any(|&b| b != 0) {
            return Err(VerifyError::TrailingData {
                detail: "non-zero bytes after the end-of-archive marker".into(),
            });
        }
        if total > MAX_TRAILING_BYTES {
            return Err(VerifyError::TrailingData {
                detail: format!("more than {MAX_TRAILING_BYTES} bytes of padding"),
            });
        }
    }
}

/// Reads what is left of a buffered reader, counting bytes (so they are hashed too).
fn count_to_end<R: BufRead>(r: &mut R) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        let n = {
            let buf = r.fill_buf()?;
            if buf.is_empty() {
                return Ok(total);
            }
            buf.len()
        };
        r.consume(n);
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{DeployOverrides, DeploySettings, MANIFEST_FORMAT};
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use std::io::Write;

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    fn manifest(files: u64, bytes: u64) -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            app: "shop".into(),
            branch: "main".into(),
            commit: COMMIT.into(),
            commit_time: 1_700_000_000,
            dirty: false,
            message: "init".into(),
            files,
            bytes,
            deploy: DeploySettings::default(),
            overrides: Default::default(),
            legacy_env: None,
        }
    }

    /// One raw tar entry; paths are written into the header bytes directly so tests can
    /// build archives the `tar` crate's safe setters would refuse.
    #[derive(Clone)]
    struct Raw {
        path: Vec<u8>,
        ty: EntryType,
        mode: u32,
        data: Vec<u8>,
        link: Option<Vec<u8>>,
    }

    fn file(path: &str, data: &[u8]) -> Raw {
        Raw {
            path: path.as_bytes().to_vec(),
            ty: EntryType::Regular,
            mode: 0o644,
            data: data.to_vec(),
            link: None,
        }
    }

    fn special(path: &str, ty: EntryType, link: Option<&str>) -> Raw {
        Raw {
            path: path.as_bytes().to_vec(),
            ty,
            mode: 0o644,
            data: Vec::new(),
            link: link.map(|l| l.as_bytes().to_vec()),
        }
    }

    fn manifest_entry(m: &Manifest) -> Raw {
        file(MANIFEST_PATH, &m.to_bytes())
    }

    fn tar_bytes(entries: &[Raw]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            let mut h = tar::Header::new_ustar();
            {
                let old = h.as_old_mut();
                assert!(
                    e.path.len() <= 100,
                    "test paths must fit the ustar name field"
                );
                old.name = [0; 100];
                old.name[..e.path.len()].copy_from_slice(&e.path);
                if let Some(l) = &e.link {
                    old.linkname = [0; 100];
                    old.linkname[..l.len()].copy_from_slice(l);
                }
            }
            h.set_entry_type(e.ty);
            h.set_mode(e.mode);
            h.set_size(e.data.len() as u64);
            h.set_mtime(1_700_000_000);
            h.set_cksum();
            b.append(&h, e.data.as_slice()).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    fn expected_for(object: &[u8]) -> ExpectedBundle {
        ExpectedBundle {
            app: "shop".into(),
            env: "prod".into(),
            commit: COMMIT.into(),
            dirty: false,
            branch: "main".into(),
            sha256: hex::encode(Sha256::digest(object)),
        }
    }

    fn verify(object: &[u8]) -> Result<VerifiedBundle, VerifyError> {
        verify_bundle(object, &expected_for(object), &VerifyLimits::default())
    }

    /// A bundle with a correct manifest followed by `rest`.
    fn bundle(rest: &[Raw]) -> Vec<u8> {
        let files = rest.len() as u64;
        let bytes = rest
            .iter()
            .filter(|e| e.ty == EntryType::Regular)
            .map(|e| e.data.len() as u64)
            .sum();
        let mut all = vec![manifest_entry(&manifest(files, bytes))];
        all.extend_from_slice(rest);
        gzip(&tar_bytes(&all))
    }

    fn good_rest() -> Vec<Raw> {
        vec![
            Raw {
                ty: EntryType::Directory,
                mode: 0o755,
                ..file("app/", b"")
            },
            file("app/compose.yaml", b"services: {}\n"),
            special("app/link", EntryType::Symlink, Some("compose.yaml")),
            file("compose.yaml", b"services:\n  web:\n    image: nginx\n"),
        ]
    }

    fn reason(object: &[u8]) -> String {
        verify(object).unwrap_err().to_string()
    }

    #[test]
    fn accepts_a_good_bundle_and_reports_its_facts() {
        let object = bundle(&good_rest());
        let v = verify(&object).unwrap();
        assert_eq!(v.entries, 4);
        assert_eq!(v.unpacked_bytes, 13 + 34);
        assert_eq!(v.object_bytes, object.len() as u64);
        assert_eq!(v.sha256, expected_for(&object).sha256);
        assert_eq!(v.manifest.app, "shop");
    }

    /// A bundle whose one file is `gib` GiB of zeros: the tar stream is cut into gzip members
    /// (as `tar -xz` reads them), the zero run being one 64 MiB member repeated.
    pub(super) fn bomb(gib: u64) -> Vec<u8> {
        let size = gib << 30;
        let m = manifest(1, size);
        let mut head = tar_bytes(&[manifest_entry(&m)]);
        head.truncate(head.len() - 1024); // no end-of-archive marker yet
        let mut h = tar::Header::new_ustar();
        h.set_path("zeros").unwrap();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(size);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        head.extend_from_slice(h.as_bytes());
        let zeros = {
            let mut enc = GzEncoder::new(Vec::new(), Compression::best());
            enc.write_all(&vec![0u8; 64 << 20]).unwrap();
            enc.finish().unwrap()
        };
        let mut object = gzip(&head);
        for _ in 0..(size >> 26) {
            object.extend_from_slice(&zeros);
        }
        object.extend_from_slice(&gzip(&[0u8; 1024]));
        object
    }

    #[test]
    fn refuses_a_gzip_bomb_after_inflating_a_bounded_amount() {
        let object = bomb(1);
        assert!(object.len() < 2 << 20, "{} bytes", object.len());
        let started = Instant::now();
        let err = verify(&object).unwrap_err();
        let took = started.elapsed();
        match err {
            VerifyError::InflationRatio {
                ratio, inflated, ..
            } => {
                assert_eq!(ratio, DEFAULT_MAX_INFLATION_RATIO);
                assert!(
                    inflated < DEFAULT_INFLATION_FREE_BYTES + (4 << 20),
                    "{inflated} bytes inflated before refusing"
                );
            }
            other => panic!("bomb not refused as one: {other}"),
        }
        assert!(!VerifyError::InflationRatio {
            ratio: 1,
            inflated: 1,
            compressed: 1
        }
        .is_transient());
        assert!(took.as_secs() < 10, "{took:?}");
        // The same content below the ratio is fine: the free allowance covers small bundles.
        let small = bundle(&[file("a.txt", &vec![b'a'; 1 << 20])]);
        verify(&small).unwrap();
    }

    #[test]
    fn refuses_symlink_chains_the_host_refuses() {
        // s -> ., t -> s/.., u -> t/.., v -> u/etc: each looks inside lexically, GNU tar on the
        // host resolves them outside the release.
        let chain = vec![
            special("s", EntryType::Symlink, Some(".")),
            special("t", EntryType::Symlink, Some("s/..")),
            special("u", EntryType::Symlink, Some("t/..")),
            special("v", EntryType::Symlink, Some("u/etc")),
        ];
        let why = reason(&bundle(&chain));
        assert!(why.contains("and then up (..)"), "{why}");
        // Through a shared path of the manifest (a link to shared/ on the host).
        let files = 1u64;
        let mut m = manifest(files, 0);
        m.deploy.shared_paths = vec!["data".into()];
        let rest = [special("conf", EntryType::Symlink, Some("data/../x"))];
        let mut all = vec![manifest_entry(&m)];
        all.extend_from_slice(&rest);
        let object = gzip(&tar_bytes(&all));
        let why = reason(&object);
        assert!(why.contains("\"data\""), "{why}");
    }

    #[test]
    fn accepts_gnu_long_names() {
        let long = format!("{}/file.txt", "d".repeat(150));
        let mut b = tar::Builder::new(Vec::new());
        let m = manifest(1, 3);
        let mut h = tar::Header::new_gnu();
        h.set_size(m.to_bytes().len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, MANIFEST_PATH, m.to_bytes().as_slice())
            .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        b.append_data(&mut h, &long, &b"abc"[..]).unwrap();
        let object = gzip(&b.into_inner().unwrap());
        let v = verify(&object).unwrap();
        assert_eq!(v.entries, 1);
    }

    #[test]
    fn rejects_each_hostile_entry_with_its_path_and_rule() {
        let cases: Vec<(Vec<Raw>, &str, &str)> = vec![
            (vec![file("../x", b"x")], "../x", "'..'"),
            (vec![file("/etc/x", b"x")], "/etc/x", "absolute"),
            (
                vec![
                    special("link", EntryType::Symlink, Some("/")),
                    file("link/file", b"x"),
                ],
                "link",
                "absolute",
            ),
            (
                vec![
                    special("link", EntryType::Symlink, Some("dir")),
                    file("link/file", b"x"),
                ],
                "link/file",
                "beneath symlink",
            ),
            (
                vec![special("up", EntryType::Symlink, Some("../../etc"))],
                "up",
                "outside",
            ),
            (
                vec![file("a", b"x"), special("h", EntryType::Link, Some("a"))],
                "\"h\"",
                "hardlink",
            ),
            (
                vec![special("dev", EntryType::Char, None)],
                "dev",
                "character device",
            ),
            (
                vec![special("blk", EntryType::Block, None)],
                "blk",
                "block device",
            ),
            (vec![special("fifo", EntryType::Fifo, None)], "fifo", "fifo"),
            (
                vec![Raw {
                    mode: 0o4755,
                    ..file("suid", b"x")
                }],
                "suid",
                "setuid",
            ),
            (
                vec![Raw {
                    mode: 0o2755,
                    ..file("sgid", b"x")
                }],
                "sgid",
                "setgid",
            ),
        ];
        for (rest, path, rule) in cases {
            let err = verify(&bundle(&rest)).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, VerifyError::Entry(_)), "{msg}");
            assert!(
                msg.contains(path) && msg.to_lowercase().contains(rule),
                "{msg}"
            );
            assert!(!err.is_transient());
        }
    }

    #[test]
    fn rejects_a_digest_mismatch() {
        let object = bundle(&good_rest());
        let mut expected = expected_for(&object);
        expected.sha256 = "f".repeat(64);
        let err =
            verify_bundle(object.as_slice(), &expected, &VerifyLimits::default()).unwrap_err();
        assert!(matches!(err, VerifyError::ShaMismatch { .. }), "{err}");
        assert!(err.to_string().contains(&"f".repeat(64)));
    }

    #[test]
    fn hashes_every_byte_even_after_the_archive_end() {
        // Extra zero blocks after the end marker are hashed (digest of the whole object).
        let mut tar = tar_bytes(&[manifest_entry(&manifest(0, 0))]);
        tar.extend_from_slice(&[0u8; 8192]);
        let object = gzip(&tar);
        assert!(verify(&object).is_ok());
        let mut expected = expected_for(&object);
        expected.sha256 = hex::encode(Sha256::digest(&object[..object.len() - 1]));
        assert!(verify_bundle(object.as_slice(), &expected, &VerifyLimits::default()).is_err());
    }

    #[test]
    fn rejects_missing_or_late_manifest() {
        let only_files = gzip(&tar_bytes(&[file("a", b"x")]));
        assert!(matches!(
            verify(&only_files),
            Err(VerifyError::ManifestMissing)
        ));
        let empty = gzip(&tar_bytes(&[]));
        assert!(matches!(verify(&empty), Err(VerifyError::ManifestMissing)));
        let late = gzip(&tar_bytes(&[
            file("a", b"x"),
            manifest_entry(&manifest(1, 1)),
        ]));
        let err = verify(&late).unwrap_err();
        assert!(
            matches!(&err, VerifyError::ManifestNotFirst { first } if first == "a"),
            "{err}"
        );
    }

    #[test]
    fn rejects_manifest_disagreeing_with_metadata() {
        for (field, change) in [
            (
                "app",
                Box::new(|m: &mut Manifest| m.app = "other".into()) as Box<dyn Fn(&mut Manifest)>,
            ),
            (
                "commit",
                Box::new(|m: &mut Manifest| m.commit = "f".repeat(40)),
            ),
            ("dirty", Box::new(|m: &mut Manifest| m.dirty = true)),
            (
                "branch",
                Box::new(|m: &mut Manifest| m.branch = "dev".into()),
            ),
        ] {
            let mut m = manifest(0, 0);
            change(&mut m);
            let object = gzip(&tar_bytes(&[manifest_entry(&m)]));
            let err = verify(&object).unwrap_err();
            assert!(
                matches!(&err, VerifyError::ManifestMismatch { field: f, .. } if *f == field),
                "{field}: {err}"
            );
        }
        let mut m = manifest(0, 0);
        m.deploy.compose_file = "../x.yaml".into();
        let err = verify(&gzip(&tar_bytes(&[manifest_entry(&m)]))).unwrap_err();
        assert!(err.to_string().contains("compose_file"), "{err}");
        // The settings that count are the key's environment's (the metadata's `env`).
        let mut m = manifest(0, 0);
        m.overrides.insert(
            "prod".into(),
            DeployOverrides {
                keep_releases: Some(1),
                ..Default::default()
            },
        );
        let err = verify(&gzip(&tar_bytes(&[manifest_entry(&m)]))).unwrap_err();
        assert!(err.to_string().contains("keep_releases"), "{err}");
        let staging_only = m.overrides.remove("prod").unwrap();
        m.overrides.insert("staging".into(), staging_only);
        verify(&gzip(&tar_bytes(&[manifest_entry(&m)]))).unwrap();
        // A bundle of the format that named its environment is refused, saying what to do.
        let mut old: serde_json::Value =
            serde_json::from_slice(&manifest(0, 0).to_bytes()).unwrap();
        old["format"] = 1.into();
        old["env"] = "prod".into();
        let object = gzip(&tar_bytes(&[file(
            MANIFEST_PATH,
            old.to_string().as_bytes(),
        )]));
        let err = verify(&object).unwrap_err();
        assert!(
            matches!(&err, VerifyError::ManifestInvalid { detail } if detail.contains("rebuild")),
            "{err}"
        );
        let bad_json = gzip(&tar_bytes(&[file(MANIFEST_PATH, b"{not json")]));
        assert!(matches!(
            verify(&bad_json),
            Err(VerifyError::ManifestInvalid { .. })
        ));
    }

    #[test]
    fn rejects_manifest_counts_that_do_not_match() {
        let object = gzip(&tar_bytes(&[
            manifest_entry(&manifest(5, 1)),
            file("a", b"x"),
        ]));
        assert!(reason(&object).contains("files"));
        let object = gzip(&tar_bytes(&[
            manifest_entry(&manifest(1, 9)),
            file("a", b"x"),
        ]));
        assert!(reason(&object).contains("bytes"));
    }

    #[test]
    fn enforces_size_limits() {
        let object = bundle(&[file("big", &[7u8; 4096])]);
        let exp = expected_for(&object);
        let limits = VerifyLimits {
            max_object_bytes: 100,
            ..VerifyLimits::default()
        };
        let err = verify_bundle(object.as_slice(), &exp, &limits).unwrap_err();
        assert!(
            matches!(err, VerifyError::ObjectTooLarge { limit: 100 }),
            "{err}"
        );
        let limits = VerifyLimits {
            max_object_bytes: 1 << 20,
            entries: Limits {
                max_file_bytes: 1000,
                ..Limits::default()
            },
            ..VerifyLimits::default()
        };
        let err = verify_bundle(object.as_slice(), &exp, &limits).unwrap_err();
        assert!(
            err.to_string().contains("big") && err.to_string().contains("per-file"),
            "{err}"
        );
    }

    #[test]
    fn rejects_long_name_bombs_without_buffering_them() {
        // A GNU long-name header claiming 10 MB.
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(EntryType::GNULongName);
        h.set_size(10 << 20);
        h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        h.set_cksum();
        let mut tar = h.as_bytes().to_vec();
        tar.extend(std::iter::repeat_n(b'a', 10 << 20));
        let err = verify(&gzip(&tar)).unwrap_err();
        assert!(err.to_string().contains("longer than"), "{err}");
    }

    #[test]
    fn rejects_pax_headers_and_garbage() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(EntryType::XHeader);
        h.set_size(0);
        h.set_cksum();
        b.append(&h, &b""[..]).unwrap();
        let err = verify(&gzip(&b.into_inner().unwrap())).unwrap_err();
        assert!(
            matches!(err, VerifyError::UnsupportedHeader { .. }),
            "{err}"
        );

        assert!(matches!(
            verify(b"not gzip at all"),
            Err(VerifyError::Gzip { .. })
        ));
        let object = bundle(&good_rest());
        let truncated = &object[..object.len() / 2];
        let err = verify(truncated).unwrap_err();
        assert!(!err.is_transient(), "{err}");
    }

    #[test]
    fn rejects_data_after_the_archive() {
        let mut object = bundle(&good_rest());
        object.extend_from_slice(&gzip(&tar_bytes(&[file("smuggled", b"x")])));
        assert!(matches!(
            verify(&object),
            Err(VerifyError::TrailingData { .. })
        ));
        let mut tar = tar_bytes(&[manifest_entry(&manifest(0, 0))]);
        tar.extend_from_slice(b"hidden");
        assert!(matches!(
            verify(&gzip(&tar)),
            Err(VerifyError::TrailingData { .. })
        ));
    }

    /// The bundle's tar, cut at odd offsets into separate gzip members (as the bundler's
    /// libdeflate engine writes them).
    fn bundle_in_members(rest: &[Raw], cut: usize) -> Vec<u8> {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&bundle(rest)[..])
            .read_to_end(&mut raw)
            .unwrap();
        raw.chunks(cut).flat_map(gzip).collect()
    }

    #[test]
    fn a_bundle_in_several_gzip_members_verifies_whole() {
        let object = bundle_in_members(&good_rest(), 777);
        let verified = verify(&object).unwrap();
        let single = verify(&bundle(&good_rest())).unwrap();
        assert_eq!(verified.entries, single.entries);
        assert_eq!(verified.unpacked_bytes, single.unpacked_bytes);
        assert_eq!(verified.manifest, single.manifest);
        assert_eq!(verified.object_bytes, object.len() as u64);
    }

    #[test]
    fn every_member_is_checked_and_bytes_after_the_last_are_refused() {
        // A bad entry in a later member is found: the decoder does not stop at the first.
        let mut bad = good_rest();
        bad.push(file("../escape", b"x"));
        let err = verify(&bundle_in_members(&bad, 600)).unwrap_err();
        assert!(!matches!(err, VerifyError::TrailingData { .. }), "{err}");
        assert!(err.to_string().contains("escape"), "{err}");
        // Bytes that are not a gzip member after the last one.
        let mut object = bundle_in_members(&good_rest(), 777);
        object.extend_from_slice(b"not a gzip member");
        let err = verify(&object).unwrap_err();
        assert!(
            matches!(
                err,
                VerifyError::Gzip { .. } | VerifyError::TrailingData { .. }
            ),
            "{err}"
        );
        // A corrupt later member (its CRC no longer matches).
        let mut object = bundle_in_members(&good_rest(), 777);
        let at = object.len() - 6;
        object[at] ^= 0xff;
        assert!(verify(&object).is_err());
    }

    #[test]
    fn read_failures_are_transient() {
        struct Failing<'a>(&'a [u8], usize);
        impl Read for Failing<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.1 >= 100 {
                    return Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset"));
                }
                let n = buf.len().min(10).min(self.0.len() - self.1);
                buf[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
                self.1 += n;
                Ok(n)
            }
        }
        let object = bundle(&good_rest());
        let err = verify_bundle(
            Failing(&object, 0),
            &expected_for(&object),
            &VerifyLimits::default(),
        )
        .unwrap_err();
        assert!(err.is_transient(), "{err}");
    }
}
