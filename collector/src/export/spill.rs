//! The disk spill: a durable FIFO of encoded export requests in the agent's store directory,
//! used when the endpoint fails or is slower than the intake.
//!
//! Why segment files rather than SQLite: records are written once, read once in order and
//! deleted from the front — an append-only log. A length-prefixed, CRC-checked segment file
//! costs one `write` + `fdatasync` per record and no per-record index; SQLite would add a
//! B-tree, WAL checkpoints and page-sized overhead for the same guarantee, and every failure mode
//! of the log (a torn tail after a crash) is visible and testable here.
//!
//! Layout in `dir`: `NNNNNNNNNNNNNNNNNNNN.seg` files (8-byte magic, then records) and a `cursor`
//! file (`segment offset`, replaced atomically with tmp + fsync + rename) that names the first
//! record not yet delivered. A record is `len u32 | envelopes u32 | items u32 | crc32 u32 |
//! payload`, little-endian, the CRC covering envelopes, items and payload. On open, every
//! segment is scanned; the first bad record (short, oversized or a CRC mismatch: a write torn
//! by a crash) ends that segment: it is truncated there, logged, and counted.
//!
//! The spill is capped in record bytes: appending beyond `max_bytes` drops the oldest records
//! first, and the caller counts their envelopes as dropped. Disk use is at most `max_bytes` plus
//! one segment (consumed records stay on disk until their segment is deleted).

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"SLSPILL1";
const HEADER: usize = 16;
/// The largest record accepted (a corrupt length beyond this ends a segment).
pub const MAX_RECORD: usize = 256 << 20;

/// Spill errors (IO, with the file concerned).
#[derive(Debug, thiserror::Error)]
pub enum SpillError {
    /// A file could not be read, written or synced.
    #[error("spill {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A record larger than [`MAX_RECORD`] or than the spill itself.
    #[error("record of {0} bytes does not fit in the spill")]
    TooLarge(usize),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpillError + '_ {
    move |source| SpillError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One record's place and what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMeta {
    /// In-process sequence number (for acknowledgements).
    pub seq: u64,
    /// The segment holding it.
    pub segment: u64,
    /// Offset of its header in the segment.
    pub offset: u64,
    /// Payload length.
    pub len: u32,
    /// Envelopes merged into it.
    pub envelopes: u32,
    /// Items inside.
    pub items: u32,
}

impl RecordMeta {
    fn size(&self) -> u64 {
        HEADER as u64 + u64::from(self.len)
    }
}

/// A record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Where it is.
    pub meta: RecordMeta,
    /// The encoded export request.
    pub payload: Vec<u8>,
}

/// What opening found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Records waiting to be replayed.
    pub records: usize,
    /// Segments whose tail was corrupt (truncated).
    pub corrupt_segments: usize,
    /// Bytes cut off by those truncations.
    pub corrupt_bytes: u64,
}

/// Records dropped to stay under the cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Records dropped.
    pub records: u64,
    /// Envelopes inside them.
    pub envelopes: u64,
    /// Items inside them.
    pub items: u64,
}

/// A durable FIFO of records in one directory. Synchronous: call it from a blocking thread.
#[derive(Debug)]
pub struct Spill {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    records: VecDeque<RecordMeta>,
    /// Sum of `size()` of `records`.
    bytes: u64,
    next_seq: u64,
    /// The segment being appended to, its id and length.
    writer: Option<(u64, File, u64)>,
    /// Highest segment id seen.
    last_segment: u64,
}

impl Spill {
    /// Opens (or creates) the spill in `dir`, capped at `max_bytes` of records, and scans what a
    /// previous run left.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<(Spill, OpenReport), SpillError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut segments: Vec<u64> = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(id) = name
                .strip_suffix(".seg")
                .and_then(|s| s.parse::<u64>().ok())
            {
                segments.push(id);
            }
        }
        segments.sort_unstable();
        let (cur_seg, cur_off) = read_cursor(dir).unwrap_or((0, 0));
        let mut spill = Spill {
            dir: dir.to_owned(),
            max_bytes,
            segment_bytes: (max_bytes / 8).clamp(64 << 10, 16 << 20),
            records: VecDeque::new(),
            bytes: 0,
            next_seq: 0,
            writer: None,
            last_segment: segments.last().copied().unwrap_or(0),
        };
        let mut report = OpenReport::default();
        for id in segments {
            let path = spill.segment_path(id);
            if id < cur_seg {
                fs::remove_file(&path).map_err(io_err(&path))?;
                continue;
            }
            let skip_to = if id == cur_seg { cur_off } else { 0 };
            let (metas, good_end, file_len) = scan_segment(&path, id, &mut spill.next_seq)?;
            if good_end < file_len {
                tracing::error!(
                    segment = %path.display(),
                    offset = good_end,
                    cut_bytes = file_len - good_end,
                    "spill segment has a corrupt or torn tail (a crash during a write?): truncating it there; the records before it are kept"
                );
                report.corrupt_segments += 1;
                report.corrupt_bytes += file_len - good_end;
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                f.set_len(good_end).map_err(io_err(&path))?;
                f.sync_all().map_err(io_err(&path))?;
            }
            let mut any = false;
            for m in metas.into_iter().filter(|m| m.offset >= skip_to) {
                spill.bytes += m.size();
                spill.records.push_back(m);
                any = true;
            }
            if !any {
                fs::remove_file(&path).map_err(io_err(&path))?;
            }
        }
        report.records = spill.records.len();
        Ok((spill, report))
    }

    fn segment_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:020}.seg"))
    }

    /// Records waiting.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Record bytes waiting (headers included).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Appends one record and syncs it to disk; drops the oldest records first if the cap
    /// requires it (returned, for counting). The record is durable when this returns `Ok`.
    pub fn append(
        &mut self,
        payload: &[u8],
        envelopes: u32,
        items: u32,
    ) -> Result<Dropped, SpillError> {
        let size = (HEADER + payload.len()) as u64;
        if payload.len() > MAX_RECORD || size > self.max_bytes {
            return Err(SpillError::TooLarge(payload.len()));
        }
        let mut dropped = Dropped::default();
        while self.bytes + size > self.max_bytes {
            let Some(m) = self.records.pop_front() else {
                break;
            };
            self.bytes -= m.size();
            dropped.records += 1;
            dropped.envelopes += u64::from(m.envelopes);
            dropped.items += u64::from(m.items);
        }
        if dropped.records > 0 {
            self.advance_cursor()?;
        }
        let needs_new = match &self.writer {
            None => true,
            Some((_, _, len)) => *len >= self.segment_bytes,
        };
        if needs_new {
            self.last_segment += 1;
            let id = self.last_segment;
            let path = self.segment_path(id);
            let mut f = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)
                .map_err(io_err(&path))?;
            f.write_all(MAGIC).map_err(io_err(&path))?;
            f.sync_all().map_err(io_err(&path))?;
            sync_dir(&self.dir)?;
            self.writer = Some((id, f, MAGIC.len() as u64));
        }
        let Some((id, file, len)) = self.writer.as_mut() else {
            return Err(SpillError::TooLarge(payload.len()));
        };
        let path = self.dir.join(format!("{:020}.seg", *id));
        let mut buf = Vec::with_capacity(HEADER + payload.len());
        buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        buf.extend_from_slice(&envelopes.to_le_bytes());
        buf.extend_from_slice(&items.to_le_bytes());
        buf.extend_from_slice(&checksum(envelopes, items, payload).to_le_bytes());
        buf.extend_from_slice(payload);
        let offset = *len;
        if let Err(e) = file.write_all(&buf).and_then(|()| file.sync_data()) {
            // Leave no half record behind for the next append.
            let _ = file.set_len(offset);
            return Err(SpillError::Io { path, source: e });
        }
        *len += buf.len() as u64;
        let meta = RecordMeta {
            seq: self.next_seq,
            segment: *id,
            offset,
            len: payload.len() as u32,
            envelopes,
            items,
        };
        self.next_seq += 1;
        self.bytes += meta.size();
        self.records.push_back(meta);
        Ok(dropped)
    }

    /// The oldest record, read from disk (not removed: [`ack`](Self::ack) it once delivered).
    pub fn peek(&self) -> Result<Option<Record>, SpillError> {
        let Some(meta) = self.records.front().copied() else {
            return Ok(None);
        };
        let path = self.segment_path(meta.segment);
        let f = File::open(&path).map_err(io_err(&path))?;
        let mut payload = vec![0; meta.len as usize];
        f.read_exact_at(&mut payload, meta.offset + HEADER as u64)
            .map_err(io_err(&path))?;
        Ok(Some(Record { meta, payload }))
    }

    /// Removes the record `seq` if it is still the oldest (the cap may have dropped it while it
    /// was being sent). Returns whether it was removed.
    pub fn ack(&mut self, seq: u64) -> Result<bool, SpillError> {
        match self.records.front() {
            Some(m) if m.seq == seq => {
                self.bytes -= m.size();
                self.records.pop_front();
                self.advance_cursor()?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Persists the cursor at the oldest record (or past everything) and deletes segments that
    /// hold nothing unsent.
    fn advance_cursor(&mut self) -> Result<(), SpillError> {
        let (seg, off) = match self.records.front() {
            Some(m) => (m.segment, m.offset),
            None => match &self.writer {
                Some((id, _, len)) => (*id, *len),
                None => (self.last_segment + 1, 0),
            },
        };
        write_cursor(&self.dir, seg, off)?;
        let mut old = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let entry = entry.map_err(io_err(&self.dir))?;
            let name = entry.file_name();
            if let Some(id) = name
                .to_string_lossy()
                .strip_suffix(".seg")
                .and_then(|s| s.parse::<u64>().ok())
                && id < seg
            {
                old.push(id);
            }
        }
        for id in old {
            let p = self.segment_path(id);
            fs::remove_file(&p).map_err(io_err(&p))?;
        }
        Ok(())
    }
}

fn checksum(envelopes: u32, items: u32, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&envelopes.to_le_bytes());
    h.update(&items.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Scans a segment: the valid records, where the valid part ends, and the file's length.
fn scan_segment(
    path: &Path,
    id: u64,
    next_seq: &mut u64,
) -> Result<(Vec<RecordMeta>, u64, u64), SpillError> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(io_err(path))?;
    let file_len = data.len() as u64;
    if data.len() < MAGIC.len() || &data[..MAGIC.len()] != MAGIC {
        return Ok((Vec::new(), 0, file_len));
    }
    let mut metas = Vec::new();
    let mut pos = MAGIC.len();
    while pos + HEADER <= data.len() {
        let word = |i: usize| {
            let b = &data[pos + 4 * i..pos + 4 * i + 4];
            u32::from_le_bytes([b[0], b[1], b[2], b[3]])
        };
        let (len, envelopes, items, crc) = (word(0), word(1), word(2), word(3));
        let end = pos + HEADER + len as usize;
        if len as usize > MAX_RECORD || end > data.len() {
            break;
        }
        if checksum(envelopes, items, &data[pos + HEADER..end]) != crc {
            break;
        }
        metas.push(RecordMeta {
            seq: *next_seq,
            segment: id,
            offset: pos as u64,
            len,
            envelopes,
            items,
        });
        *next_seq += 1;
        pos = end;
    }
    Ok((metas, pos as u64, file_len))
}

fn read_cursor(dir: &Path) -> Option<(u64, u64)> {
    let text = fs::read_to_string(dir.join("cursor")).ok()?;
    let mut it = text.split_whitespace();
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

fn write_cursor(dir: &Path, segment: u64, offset: u64) -> Result<(), SpillError> {
    let tmp = dir.join("cursor.tmp");
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(format!("{segment} {offset}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io_err(&tmp))?;
    let dst = dir.join("cursor");
    fs::rename(&tmp, &dst).map_err(io_err(&dst))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), SpillError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: usize, size: usize) -> Vec<u8> {
        let mut v = format!("record-{i}-").into_bytes();
        v.resize(size, b'x');
        v
    }

    fn drain(s: &mut Spill) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(r) = s.peek().expect("read") {
            assert!(s.ack(r.meta.seq).expect("ack"));
            out.push(r.payload);
        }
        out
    }

    #[test]
    fn write_replay_in_order_across_reopen() {
        let dir = tempfile::tempdir().expect("tmp");
        let (mut s, report) = Spill::open(dir.path(), 1 << 20).expect("open");
        assert_eq!(report, OpenReport::default());
        for i in 0..50 {
            s.append(&rec(i, 4000), 2, 10).expect("append");
        }
        assert_eq!(s.len(), 50);
        // Deliver ten, then "crash" (drop) and reopen: the other forty come back, in order.
        for i in 0..10 {
            let r = s.peek().expect("read").expect("record");
            assert_eq!(r.payload, rec(i, 4000));
            assert_eq!((r.meta.envelopes, r.meta.items), (2, 10));
            assert!(s.ack(r.meta.seq).expect("ack"));
        }
        drop(s);
        let (mut s, report) = Spill::open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(report.records, 40);
        assert_eq!(s.bytes(), 40 * (HEADER as u64 + 4000));
        s.append(&rec(50, 10), 1, 1).expect("append after reopen");
        let got = drain(&mut s);
        let want: Vec<Vec<u8>> = (10..50)
            .map(|i| rec(i, 4000))
            .chain([rec(50, 10)])
            .collect();
        assert_eq!(got, want);
        assert!(s.is_empty() && s.bytes() == 0);
        // Everything delivered: consumed segments are deleted (at most the writer's remains).
        drop(s);
        let segs = fs::read_dir(dir.path())
            .expect("ls")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".seg"))
            })
            .count();
        assert!(segs <= 1, "{segs} segments left");
        let (s, report) = Spill::open(dir.path(), 1 << 20).expect("reopen empty");
        assert_eq!((report.records, s.len()), (0, 0));
    }

    #[test]
    fn the_cap_drops_oldest_first_and_reports_them() {
        let dir = tempfile::tempdir().expect("tmp");
        let size = 1000usize;
        let cap = 10 * (HEADER + size) as u64;
        let (mut s, _) = Spill::open(dir.path(), cap).expect("open");
        let mut dropped = Dropped::default();
        for i in 0..25 {
            let d = s.append(&rec(i, size), 3, 7).expect("append");
            dropped.records += d.records;
            dropped.envelopes += d.envelopes;
            dropped.items += d.items;
        }
        assert_eq!(
            dropped,
            Dropped {
                records: 15,
                envelopes: 45,
                items: 105
            }
        );
        assert!(s.bytes() <= cap);
        let got = drain(&mut s);
        assert_eq!(got, (15..25).map(|i| rec(i, size)).collect::<Vec<_>>());
        assert!(matches!(
            s.append(&vec![0; cap as usize], 1, 1),
            Err(SpillError::TooLarge(_))
        ));
    }

    #[test]
    fn an_ack_of_a_record_dropped_meanwhile_is_ignored() {
        let dir = tempfile::tempdir().expect("tmp");
        let cap = 2 * (HEADER + 100) as u64;
        let (mut s, _) = Spill::open(dir.path(), cap).expect("open");
        s.append(&rec(0, 100), 1, 1).expect("append");
        let head = s.peek().expect("read").expect("record");
        s.append(&rec(1, 100), 1, 1).expect("append");
        let d = s.append(&rec(2, 100), 1, 1).expect("append");
        assert_eq!(d.records, 1, "the head was dropped while in flight");
        assert!(!s.ack(head.meta.seq).expect("ack"));
        assert_eq!(drain(&mut s), vec![rec(1, 100), rec(2, 100)]);
    }

    #[test]
    fn a_torn_or_corrupt_tail_is_cut_and_reported() {
        let dir = tempfile::tempdir().expect("tmp");
        let (mut s, _) = Spill::open(dir.path(), 1 << 20).expect("open");
        for i in 0..5 {
            s.append(&rec(i, 200), 1, 1).expect("append");
        }
        drop(s);
        let seg = fs::read_dir(dir.path())
            .expect("ls")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "seg"))
            .expect("a segment");
        // A torn write: half a record at the end.
        let mut f = OpenOptions::new().append(true).open(&seg).expect("open");
        f.write_all(&[7u8; 30]).expect("write");
        drop(f);
        let (s, report) = Spill::open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(report.records, 5);
        assert_eq!((report.corrupt_segments, report.corrupt_bytes), (1, 30));
        drop(s);
        // A flipped bit inside the fourth record: it and everything after it are cut.
        let mut data = fs::read(&seg).expect("read");
        let fourth = MAGIC.len() + 3 * (HEADER + 200) + HEADER + 5;
        data[fourth] ^= 0x40;
        fs::write(&seg, &data).expect("write");
        let (mut s, report) = Spill::open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(report.records, 3);
        assert_eq!(report.corrupt_segments, 1);
        assert_eq!(report.corrupt_bytes, 2 * (HEADER as u64 + 200));
        assert_eq!(
            drain(&mut s),
            (0..3).map(|i| rec(i, 200)).collect::<Vec<_>>()
        );
        // A garbage file with a segment's name is dropped whole, not trusted.
        fs::write(dir.path().join("00000000000000000099.seg"), b"garbage").expect("write");
        let (s, report) = Spill::open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!((s.len(), report.corrupt_segments), (0, 1));
    }
}
