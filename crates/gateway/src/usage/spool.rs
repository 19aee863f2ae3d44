//! The usage spool: batches of usage records the control plane has not acknowledged, kept
//! under `--cache-dir/usage-spool/` until it does, bounded in bytes.
//!
//! One file per batch, `{sequence:020}-{records}.batch` (the records of a `UsageBatch`,
//! protobuf, without credentials), written atomically (temporary file, fsync, rename), so a
//! crash leaves whole batches only. Replayed oldest first; deleted once acknowledged. When a
//! new batch would take the spool past its bound, the oldest batches are deleted first and
//! their records counted as dropped.

use std::collections::VecDeque;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use prost::Message;
use switchyard_proto::v1 as pb;

/// The spool's directory under the cache dir.
pub(crate) const SPOOL_DIR: &str = "usage-spool";
const SUFFIX: &str = ".batch";

/// One spooled batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Segment {
    seq: u64,
    pub records: u64,
    bytes: u64,
}

/// The spool directory and what it holds.
#[derive(Debug)]
pub(crate) struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segments: VecDeque<Segment>,
    bytes: u64,
    next_seq: u64,
}

/// What appending a batch did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Appended {
    /// Records of older batches deleted to make room (or of this batch, when it alone is
    /// larger than the bound).
    pub dropped: u64,
}

impl Spool {
    /// Opens (creating it) the spool under `cache_dir`, indexing what an earlier run left.
    /// Unreadable names and stray temporary files are removed.
    pub(crate) fn open(cache_dir: &Path, max_bytes: u64) -> io::Result<Spool> {
        let dir = cache_dir.join(SPOOL_DIR);
        fs::create_dir_all(&dir)?;
        let mut segments = Vec::new();
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            match parse_name(&name) {
                Some((seq, records)) => segments.push(Segment {
                    seq,
                    records,
                    bytes: entry.metadata()?.len(),
                }),
                None => {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        segments.sort_by_key(|s| s.seq);
        let bytes = segments.iter().map(|s| s.bytes).sum();
        let next_seq = segments.last().map_or(0, |s| s.seq + 1);
        Ok(Spool {
            dir,
            max_bytes,
            segments: segments.into(),
            bytes,
            next_seq,
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    pub(crate) fn records(&self) -> u64 {
        self.segments.iter().map(|s| s.records).sum()
    }

    fn path(&self, s: &Segment) -> PathBuf {
        self.dir
            .join(format!("{:020}-{}{SUFFIX}", s.seq, s.records))
    }

    /// Writes `records` as the newest batch, first deleting the oldest batches that would
    /// take the spool past its bound.
    pub(crate) fn append(&mut self, records: Vec<pb::UsageRecord>) -> io::Result<Appended> {
        let count = records.len() as u64;
        if count == 0 {
            return Ok(Appended::default());
        }
        let bytes = pb::UsageBatch {
            records,
            ..pb::UsageBatch::default()
        }
        .encode_to_vec();
        let size = bytes.len() as u64;
        let mut appended = Appended::default();
        if size > self.max_bytes {
            appended.dropped = count;
            return Ok(appended);
        }
        while self.bytes + size > self.max_bytes {
            let Some(oldest) = self.segments.pop_front() else {
                break;
            };
            remove(&self.path(&oldest))?;
            self.bytes -= oldest.bytes;
            appended.dropped += oldest.records;
        }
        let segment = Segment {
            seq: self.next_seq,
            records: count,
            bytes: size,
        };
        write_atomic(&self.dir, &self.path(&segment), &bytes)?;
        self.next_seq += 1;
        self.bytes += size;
        self.segments.push_back(segment);
        Ok(appended)
    }

    /// The oldest batch: its segment and records. A batch that cannot be read is deleted and
    /// its record count returned as the error's payload.
    pub(crate) fn oldest(&mut self) -> Option<Result<(Segment, Vec<pb::UsageRecord>), u64>> {
        let segment = self.segments.front()?.clone();
        let path = self.path(&segment);
        let read = fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| pb::UsageBatch::decode(b.as_slice()).map_err(|e| e.to_string()));
        match read {
            Ok(batch) => Some(Ok((segment, batch.records))),
            Err(error) => {
                tracing::error!(file = %path.display(), error, "unreadable usage spool file: deleted");
                let records = segment.records;
                let _ = self.remove(&segment);
                Some(Err(records))
            }
        }
    }

    /// Deletes a batch (acknowledged, or refused for good).
    pub(crate) fn remove(&mut self, segment: &Segment) -> io::Result<()> {
        if let Some(at) = self.segments.iter().position(|s| s.seq == segment.seq) {
            let s = self.segments.remove(at).unwrap_or_else(|| segment.clone());
            self.bytes -= s.bytes;
            remove(&self.path(&s))?;
        }
        Ok(())
    }
}

fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn parse_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(SUFFIX)?;
    let (seq, records) = stem.split_once('-')?;
    Some((seq.parse().ok()?, records.parse().ok()?))
}

/// Writes `path` atomically: a fresh private temporary file (`O_EXCL`), fsync, rename, fsync
/// of the directory.
fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!(".{:016x}.tmp", rand::random::<u64>()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn records(n: usize, tag: u8) -> Vec<pb::UsageRecord> {
        (0..n)
            .map(|i| pb::UsageRecord {
                id: vec![tag; 16],
                at_unix_ms: i as i64,
                model: "gpt-4.1".into(),
                ..pb::UsageRecord::default()
            })
            .collect()
    }

    #[test]
    fn appends_replays_in_order_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.append(records(3, 1)).unwrap();
        spool.append(records(2, 2)).unwrap();
        assert_eq!(spool.records(), 5);
        drop(spool);
        // A stray temporary file from a crash is cleaned up.
        std::fs::write(dir.path().join(SPOOL_DIR).join(".abc.tmp"), b"x").unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(spool.records(), 5);
        let (segment, first) = spool.oldest().unwrap().unwrap();
        assert_eq!((first.len(), first[0].id[0]), (3, 1));
        spool.remove(&segment).unwrap();
        let (segment, second) = spool.oldest().unwrap().unwrap();
        assert_eq!((second.len(), second[0].id[0]), (2, 2));
        spool.remove(&segment).unwrap();
        assert!(spool.oldest().is_none());
        assert_eq!(spool.bytes(), 0);
        assert_eq!(
            std::fs::read_dir(dir.path().join(SPOOL_DIR))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn past_the_bound_the_oldest_batches_go() {
        let dir = tempfile::tempdir().unwrap();
        let one = pb::UsageBatch {
            records: records(10, 0),
            ..Default::default()
        }
        .encode_to_vec()
        .len() as u64;
        let mut spool = Spool::open(dir.path(), one * 3).unwrap();
        for tag in 1..=3 {
            assert_eq!(spool.append(records(10, tag)).unwrap().dropped, 0);
        }
        assert_eq!(spool.append(records(10, 4)).unwrap().dropped, 10);
        assert_eq!(spool.records(), 30);
        let (_, oldest) = spool.oldest().unwrap().unwrap();
        assert_eq!(oldest[0].id[0], 2);
        // A batch larger than the whole bound is dropped itself.
        assert_eq!(spool.append(records(100, 5)).unwrap().dropped, 100);
        assert_eq!(spool.records(), 30);
    }

    #[test]
    fn a_garbled_file_is_deleted_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.append(records(4, 1)).unwrap();
        let file = std::fs::read_dir(dir.path().join(SPOOL_DIR))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        std::fs::write(&file, [0xff, 0xff, 0xff]).unwrap();
        assert_eq!(spool.oldest().unwrap().unwrap_err(), 4);
        assert!(spool.is_empty());
    }
}
