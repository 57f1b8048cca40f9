//! Parallel, deterministic gzip: the input is cut into fixed-size blocks, each block is
//! deflated on a worker thread (primed with the previous block's last 32 KiB as dictionary,
//! like pigz), and the raw deflate pieces are joined into a single gzip member. Output depends
//! only on the input, the level and the block size — never on the thread count — so bundles
//! stay byte-reproducible while using every core. Memory is bounded by the blocks in flight.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use flate2::{Compress, Compression, FlushCompress, Status};

/// Input bytes per block: large enough that priming each block with its predecessor's
/// 32 KiB (and the sync-flush marker) stays noise, small enough that every core has work.
pub const DEFAULT_BLOCK_SIZE: usize = 1024 * 1024;
/// Deflate's window: the dictionary handed from one block to the next.
const DICTIONARY_SIZE: usize = 32 * 1024;
/// gzip header: magic, deflate, no flags, mtime 0, no extra flags, OS = Unix.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];

struct Job {
    block: Vec<u8>,
    dictionary: Option<Vec<u8>>,
    last: bool,
    reply: SyncSender<io::Result<Done>>,
}

struct Done {
    deflated: Vec<u8>,
    crc: crc32fast::Hasher,
}

/// A `Write` that gzips in parallel into `inner`.
pub struct ParallelGzEncoder<W: Write> {
    inner: Option<W>,
    level: u32,
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
    /// Starts an encoder with `threads` workers (at least one) at gzip `level` (1-9).
    pub fn new(inner: W, level: u32, threads: usize, block_size: usize) -> Self {
        let threads = threads.max(1);
        let (tx, rx) = sync_channel::<Job>(threads);
        let rx = Arc::new(Mutex::new(rx));
        let workers = (0..threads)
            .map(|_| {
                let rx = Arc::clone(&rx);
                std::thread::spawn(move || loop {
                    let job = match rx.lock().expect("job queue").recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    };
                    let result =
                        deflate_block(&job.block, job.dictionary.as_deref(), level, job.last);
                    let _ = job.reply.send(result);
                })
            })
            .collect();
        Self {
            inner: Some(inner),
            level,
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

    /// Compression level in use.
    pub fn level(&self) -> u32 {
        self.level
    }

    fn inner(&mut self) -> &mut W {
        self.inner.as_mut().expect("encoder used after finish")
    }

    fn dispatch(&mut self, last: bool) -> io::Result<()> {
        let block = std::mem::replace(&mut self.buffer, Vec::with_capacity(self.block_size));
        let next_dictionary = (block.len() >= DICTIONARY_SIZE)
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
        self.crc.combine(&done.crc);
        if !self.header_written {
            self.inner().write_all(&GZIP_HEADER)?;
            self.header_written = true;
        }
        self.inner().write_all(&done.deflated)
    }

    /// Writes the last block and the gzip trailer; returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.dispatch(true)?;
        while !self.pending.is_empty() {
            self.collect_one()?;
        }
        let crc = std::mem::take(&mut self.crc).finalize();
        let isize = (self.input_len & 0xffff_ffff) as u32;
        let inner = self.inner();
        inner.write_all(&crc.to_le_bytes())?;
        inner.write_all(&isize.to_le_bytes())?;
        inner.flush()?;
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
        flate2::read::GzDecoder::new(data)
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

    fn encode(data: &[u8], threads: usize, block: usize) -> Vec<u8> {
        let mut enc = ParallelGzEncoder::new(Vec::new(), 6, threads, block);
        for chunk in data.chunks(7919) {
            enc.write_all(chunk).unwrap();
        }
        enc.finish().unwrap()
    }

    #[test]
    fn round_trips_through_a_standard_gzip_decoder() {
        for len in [0, 1, 32 * 1024, 100_000, 3 * DEFAULT_BLOCK_SIZE + 17] {
            let data = sample(len);
            assert_eq!(
                gunzip(&encode(&data, 2, DEFAULT_BLOCK_SIZE)),
                data,
                "len {len}"
            );
        }
    }

    #[test]
    fn output_does_not_depend_on_thread_count() {
        let data = sample(2_000_000);
        let one = encode(&data, 1, 64 * 1024);
        assert_eq!(one, encode(&data, 2, 64 * 1024));
        assert_eq!(one, encode(&data, 5, 64 * 1024));
        assert_eq!(&one[..10], &GZIP_HEADER, "no name, no mtime");
    }

    #[test]
    fn size_stays_close_to_single_stream_gzip() {
        let data = sample(4_000_000);
        let ours = encode(&data, 2, DEFAULT_BLOCK_SIZE).len();
        let mut reference = flate2::write::GzEncoder::new(Vec::new(), Compression::new(6));
        reference.write_all(&data).unwrap();
        let reference = reference.finish().unwrap().len();
        assert!(
            (ours as f64) <= reference as f64 * 1.05,
            "parallel {ours} vs single {reference}"
        );
    }
}
