//! Parallel, deterministic gzip: the input is cut into fixed-size blocks and each block is
//! deflated on a worker thread. Output depends only on the input, the level, the block size
//! and the deflater — never on the thread count — so bundles stay byte-reproducible while
//! using every core. Memory is bounded by the blocks in flight.
//!
//! Two deflaters, measured side by side by `scripts/bench-bundle`:
//! - [`Deflater::Libdeflate`] (the default): libdeflate compresses each block whole, which is
//!   what makes it faster than zlib's streaming matcher. It cannot be primed with the previous
//!   block's window, so each block becomes its own gzip member (RFC 1952 allows a file of
//!   several members; gzip, GNU tar, pigz and the contract's verifier read them all). The size
//!   cost of the unprimed window is about 0.2 % at 1 MiB blocks.
//! - [`Deflater::ZlibRs`]: zlib-rs, each block primed with its predecessor's last 32 KiB (like
//!   pigz) and the raw deflate pieces joined into a single gzip member.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use flate2::{Compress, Compression, FlushCompress, Status};
use libdeflater::{CompressionLvl, Compressor};

/// Input bytes per block: large enough that a block's own window start (libdeflate) or its
/// primed 32 KiB and sync-flush marker (zlib-rs) stay noise, small enough that every core has
/// work and memory stays bounded (a few blocks per thread are in flight).
pub const DEFAULT_BLOCK_SIZE: usize = 1024 * 1024;
/// Deflate's window: the dictionary handed from one block to the next.
const DICTIONARY_SIZE: usize = 32 * 1024;
/// gzip header: magic, deflate, no flags, mtime 0, no extra flags, OS = Unix.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];

/// Which deflate implementation compresses the blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Deflater {
    /// libdeflate, one gzip member per block.
    #[default]
    Libdeflate,
    /// zlib-rs, one gzip member for the whole stream.
    ZlibRs,
}

impl Deflater {
    /// The names `--deflater` accepts.
    pub const NAMES: [&'static str; 2] = ["libdeflate", "zlib-rs"];

    /// Parses one of [`Deflater::NAMES`].
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "libdeflate" => Some(Self::Libdeflate),
            "zlib-rs" => Some(Self::ZlibRs),
            _ => None,
        }
    }
}

/// How a bundle is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GzipSettings {
    /// gzip level, 1 (fast) to 9 (small).
    pub level: u32,
    /// Worker threads (at least one is used).
    pub threads: usize,
    pub deflater: Deflater,
}

struct Job {
    block: Vec<u8>,
    dictionary: Option<Vec<u8>>,
    last: bool,
    reply: SyncSender<io::Result<Done>>,
}

struct Done {
    /// Raw deflate (zlib-rs) or a whole gzip member (libdeflate).
    deflated: Vec<u8>,
    crc: crc32fast::Hasher,
}

/// A `Write` that gzips in parallel into `inner`.
pub struct ParallelGzEncoder<W: Write> {
    inner: Option<W>,
    settings: GzipSettings,
    block_size: usize,
    buffer: Vec<u8>,
    dictionary: Option<Vec<u8>>,
    jobs: Option<SyncSender<Job>>,
    workers: Vec<JoinHandle<()>>,
    pending: VecDeque<Receiver<io::Result<Done>>>,
    max_pending: usize,
    crc: crc32fast::Hasher,
    input_len: u64,
    header_written: bool,
}

impl<W: Write> ParallelGzEncoder<W> {
    /// Starts an encoder with `settings.threads` workers (at least one).
    pub fn new(inner: W, settings: GzipSettings, block_size: usize) -> Self {
        let threads = settings.threads.max(1);
        let (tx, rx) = sync_channel::<Job>(threads);
        let rx = Arc::new(Mutex::new(rx));
        let workers = (0..threads)
            .map(|_| {
                let rx = Arc::clone(&rx);
                std::thread::spawn(move || {
                    // One libdeflate compressor per worker, reused for every block it takes.
                    let mut compressor = None;
                    loop {
                        let job = match rx.lock().expect("job queue").recv() {
                            Ok(job) => job,
                            Err(_) => return,
                        };
                        let result = match settings.deflater {
                            Deflater::Libdeflate => {
                                gzip_member(&job.block, settings.level, &mut compressor)
                            }
                            Deflater::ZlibRs => deflate_block(
                                &job.block,
                                job.dictionary.as_deref(),
                                settings.level,
                                job.last,
                            ),
                        };
                        let _ = job.reply.send(result);
                    }
                })
            })
            .collect();
        Self {
            inner: Some(inner),
            settings,
            block_size: block_size.max(DICTIONARY_SIZE),
            buffer: Vec::with_capacity(block_size),
            dictionary: None,
            jobs: Some(tx),
            workers,
            pending: VecDeque::new(),
            max_pending: threads * 2,
            crc: crc32fast::Hasher::new(),
            input_len: 0,
            header_written: false,
        }
    }

    fn inner(&mut self) -> &mut W {
        self.inner.as_mut().expect("encoder used after finish")
    }

    fn dispatch(&mut self, last: bool) -> io::Result<()> {
        let block = std::mem::replace(&mut self.buffer, Vec::with_capacity(self.block_size));
        let primed = self.settings.deflater == Deflater::ZlibRs;
        let next_dictionary = (primed && block.len() >= DICTIONARY_SIZE)
            .then(|| block[block.len() - DICTIONARY_SIZE..].to_vec());
        let dictionary = std::mem::replace(&mut self.dictionary, next_dictionary);
        let (reply, done) = sync_channel(1);
        self.jobs
            .as_ref()
            .expect("encoder used after finish")
            .send(Job {
                block,
                dictionary,
                last,
                reply,
            })
            .map_err(|_| io::Error::other("gzip worker stopped"))?;
        self.pending.push_back(done);
        while self.pending.len() > self.max_pending {
            self.collect_one()?;
        }
        Ok(())
    }

    fn collect_one(&mut self) -> io::Result<()> {
        let Some(done) = self.pending.pop_front() else {
            return Ok(());
        };
        let done = done
            .recv()
            .map_err(|_| io::Error::other("gzip worker stopped"))??;
        if self.settings.deflater == Deflater::Libdeflate {
            self.header_written = true;
            return self.inner().write_all(&done.deflated);
        }
        self.crc.combine(&done.crc);
        if !self.header_written {
            self.inner().write_all(&GZIP_HEADER)?;
            self.header_written = true;
        }
        self.inner().write_all(&done.deflated)
    }

    /// Writes the last block and the gzip trailer; returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        // A libdeflate stream whose input ended on a block boundary is complete; an empty
        // input still gets one (empty) member, so the output is always a gzip file.
        let members = self.settings.deflater == Deflater::Libdeflate;
        if !(members && self.buffer.is_empty() && self.input_len > 0) {
            self.dispatch(true)?;
        }
        while !self.pending.is_empty() {
            self.collect_one()?;
        }
        if !members {
            let crc = std::mem::take(&mut self.crc).finalize();
            let isize = (self.input_len & 0xffff_ffff) as u32;
            let inner = self.inner();
            inner.write_all(&crc.to_le_bytes())?;
            inner.write_all(&isize.to_le_bytes())?;
        }
        self.inner().flush()?;
        self.shutdown();
        Ok(self.inner.take().expect("inner writer"))
    }

    fn shutdown(&mut self) {
        self.jobs = None;
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

impl<W: Write> Write for ParallelGzEncoder<W> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let written = data.len();
        while !data.is_empty() {
            let room = self.block_size - self.buffer.len();
            let take = room.min(data.len());
            self.buffer.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buffer.len() == self.block_size {
                self.dispatch(false)?;
            }
        }
        self.input_len += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write> Drop for ParallelGzEncoder<W> {
    fn drop(&mut self) {
        self.pending.clear();
        self.shutdown();
    }
}

/// One whole gzip member for `block`: header, libdeflate's raw deflate, CRC-32 and length.
fn gzip_member(block: &[u8], level: u32, compressor: &mut Option<Compressor>) -> io::Result<Done> {
    let compressor = match compressor {
        Some(compressor) => compressor,
        None => {
            let level = CompressionLvl::new(level as i32)
                .map_err(|e| io::Error::other(format!("libdeflate level {level}: {e:?}")))?;
            compressor.insert(Compressor::new(level))
        }
    };
    let mut crc = crc32fast::Hasher::new();
    crc.update(block);
    let bound = compressor.deflate_compress_bound(block.len());
    let mut out = vec![0u8; GZIP_HEADER.len() + bound + 8];
    out[..GZIP_HEADER.len()].copy_from_slice(&GZIP_HEADER);
    let n = compressor
        .deflate_compress(
            block,
            &mut out[GZIP_HEADER.len()..GZIP_HEADER.len() + bound],
        )
        .map_err(|e| io::Error::other(format!("libdeflate: {e:?}")))?;
    out.truncate(GZIP_HEADER.len() + n);
    out.extend_from_slice(&crc.clone().finalize().to_le_bytes());
    out.extend_from_slice(&(block.len() as u32).to_le_bytes());
    Ok(Done { deflated: out, crc })
}

/// Raw deflate for `block` with zlib-rs, primed with `dictionary`; sync-flushed so the next
/// block's piece can follow, or finished when it is the `last`.
fn deflate_block(
    block: &[u8],
    dictionary: Option<&[u8]>,
    level: u32,
    last: bool,
) -> io::Result<Done> {
    let mut crc = crc32fast::Hasher::new();
    crc.update(block);
    let mut compress = Compress::new(Compression::new(level), false);
    if let Some(dictionary) = dictionary {
        compress
            .set_dictionary(dictionary)
            .map_err(|e| io::Error::other(format!("deflate dictionary: {e}")))?;
    }
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let mut out = Vec::with_capacity(block.len() / 2 + 1024);
    loop {
        let consumed = compress.total_in() as usize;
        if out.capacity() - out.len() < 1024 {
            out.reserve(out.capacity().max(64 * 1024));
        }
        let status = compress
            .compress_vec(&block[consumed..], &mut out, flush)
            .map_err(|e| io::Error::other(format!("deflate: {e}")))?;
        let all_in = compress.total_in() as usize == block.len();
        match status {
            Status::StreamEnd => break,
            // A sync flush is complete once all input is in and output space was left over.
            Status::Ok | Status::BufError if !last && all_in && out.len() < out.capacity() => break,
            _ => {}
        }
    }
    Ok(Done { deflated: out, crc })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn gunzip(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(data)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    fn sample(len: usize) -> Vec<u8> {
        // Compressible but not trivial: words with a slowly changing counter.
        let mut out = Vec::with_capacity(len);
        let mut i = 0u64;
        while out.len() < len {
            out.extend_from_slice(format!("line {i} of the sample text {}\n", i % 97).as_bytes());
            i += 1;
        }
        out.truncate(len);
        out
    }

    fn encode_with(data: &[u8], deflater: Deflater, threads: usize, block: usize) -> Vec<u8> {
        let settings = GzipSettings {
            level: 6,
            threads,
            deflater,
        };
        let mut enc = ParallelGzEncoder::new(Vec::new(), settings, block);
        for chunk in data.chunks(7919) {
            enc.write_all(chunk).unwrap();
        }
        enc.finish().unwrap()
    }

    const BOTH: [Deflater; 2] = [Deflater::Libdeflate, Deflater::ZlibRs];

    /// gzip members in `data`, counted by walking the stream with a single-member decoder.
    fn members(mut data: &[u8]) -> usize {
        let mut count = 0;
        while !data.is_empty() {
            let mut decoder = flate2::bufread::GzDecoder::new(data);
            io::copy(&mut decoder, &mut io::sink()).unwrap();
            data = decoder.into_inner();
            count += 1;
        }
        count
    }

    #[test]
    fn round_trips_through_a_standard_gzip_decoder() {
        for deflater in BOTH {
            for len in [0, 1, 32 * 1024, 100_000, 3 * DEFAULT_BLOCK_SIZE + 17] {
                let data = sample(len);
                let encoded = encode_with(&data, deflater, 2, DEFAULT_BLOCK_SIZE);
                assert_eq!(gunzip(&encoded), data, "{deflater:?} len {len}");
            }
        }
    }

    #[test]
    fn gnu_gzip_reads_every_member() {
        let data = sample(3 * 64 * 1024 + 5);
        let encoded = encode_with(&data, Deflater::Libdeflate, 2, 64 * 1024);
        let mut child = std::process::Command::new("gzip")
            .args(["-d", "-c"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("gzip is installed");
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || stdin.write_all(&encoded).unwrap());
        let output = child.wait_with_output().unwrap();
        writer.join().unwrap();
        assert!(output.status.success());
        assert_eq!(output.stdout, data);
    }

    #[test]
    fn libdeflate_writes_one_member_per_block_and_zlib_rs_one_in_all() {
        let block = 64 * 1024;
        let data = sample(3 * block + 1);
        assert_eq!(
            members(&encode_with(&data, Deflater::Libdeflate, 2, block)),
            4
        );
        assert_eq!(members(&encode_with(&data, Deflater::ZlibRs, 2, block)), 1);
        // Input ending on a block boundary gets no empty trailing member; empty input one.
        let exact = sample(2 * block);
        assert_eq!(
            members(&encode_with(&exact, Deflater::Libdeflate, 2, block)),
            2
        );
        let empty = encode_with(&[], Deflater::Libdeflate, 2, block);
        assert_eq!(members(&empty), 1);
        assert_eq!(gunzip(&empty), b"");
    }

    #[test]
    fn output_does_not_depend_on_thread_count() {
        let data = sample(2_000_000);
        for deflater in BOTH {
            let one = encode_with(&data, deflater, 1, 64 * 1024);
            assert_eq!(
                one,
                encode_with(&data, deflater, 2, 64 * 1024),
                "{deflater:?}"
            );
            assert_eq!(
                one,
                encode_with(&data, deflater, 5, 64 * 1024),
                "{deflater:?}"
            );
            assert_eq!(&one[..10], &GZIP_HEADER, "no name, no mtime");
        }
    }

    #[test]
    fn size_stays_close_to_single_stream_gzip() {
        let data = sample(4_000_000);
        let mut reference = flate2::write::GzEncoder::new(Vec::new(), Compression::new(6));
        reference.write_all(&data).unwrap();
        let reference = reference.finish().unwrap().len();
        for deflater in BOTH {
            let ours = encode_with(&data, deflater, 2, DEFAULT_BLOCK_SIZE).len();
            assert!(
                (ours as f64) <= reference as f64 * 1.05,
                "{deflater:?}: parallel {ours} vs single {reference}"
            );
        }
    }

    #[test]
    fn deflater_names_parse_and_unknown_names_do_not() {
        for name in Deflater::NAMES {
            assert!(Deflater::from_name(name).is_some(), "{name}");
        }
        assert_eq!(Deflater::from_name("zlib"), None);
        assert_eq!(Deflater::default(), Deflater::Libdeflate);
    }
}
