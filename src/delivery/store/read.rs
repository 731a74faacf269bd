//! Reading a log's records back: in order, and past damage.
//!
//! A record that is not whole (its length out of range, its bytes cut short, its
//! checksum wrong) is either the end of the log (a write the crash interrupted, or the
//! zeros laid down ahead of the records) or damage in the middle. Which one is only
//! known by looking further: reading resynchronises on the next offset where a whole
//! record (a length in range and a matching CRC32) starts, and counts what it skipped.
//! If no whole record follows, the log ends there.

use super::codec::{HEADER, MAGIC, MAX_RECORD};
use std::fs::File;
use std::os::unix::fs::FileExt;

/// How much of a file is read at once.
const WINDOW: usize = 256 << 10;

/// Where a log's bytes come from.
pub(super) trait Source {
    fn size(&self) -> u64;
    /// `len` bytes at `at`, or `None` when the source ends first.
    fn get(&mut self, at: u64, len: usize) -> std::io::Result<Option<&[u8]>>;
}

impl Source for &[u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn get(&mut self, at: u64, len: usize) -> std::io::Result<Option<&[u8]>> {
        let Ok(at) = usize::try_from(at) else {
            return Ok(None);
        };
        Ok(at.checked_add(len).and_then(|end| <[u8]>::get(self, at..end)))
    }
}

/// A file's first `size` bytes, read a window at a time at the offsets asked for.
pub(super) struct FileWindow {
    file: File,
    size: u64,
    buf: Vec<u8>,
    /// Where `buf` starts in the file.
    at: u64,
}

impl FileWindow {
    /// The file's bytes up to `limit`, or all of them.
    pub(super) fn new(file: File, limit: Option<u64>) -> std::io::Result<FileWindow> {
        let len = file.metadata()?.len();
        Ok(FileWindow {
            file,
            size: limit.map_or(len, |l| l.min(len)),
            buf: Vec::new(),
            at: 0,
        })
    }
}

impl Source for FileWindow {
    fn size(&self) -> u64 {
        self.size
    }

    fn get(&mut self, at: u64, len: usize) -> std::io::Result<Option<&[u8]>> {
        let Some(end) = at.checked_add(len as u64).filter(|e| *e <= self.size) else {
            return Ok(None);
        };
        let held = self.at + self.buf.len() as u64;
        if at < self.at || end > held {
            let n = (self.size - at).min(len.max(WINDOW) as u64) as usize;
            self.buf.resize(n, 0);
            self.file.read_exact_at(&mut self.buf, at)?;
            self.at = at;
        }
        let from = (at - self.at) as usize;
        Ok(Some(&self.buf[from..from + len]))
    }
}

/// Why the bytes at an offset are not a whole record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Bad {
    /// A zero length: the zeros laid down ahead of the records.
    Zero,
    Range,
    Short,
    Checksum,
}

impl Bad {
    pub(super) fn what(self) -> &'static str {
        match self {
            Bad::Zero => "zeros",
            Bad::Range => "a record length out of range",
            Bad::Short => "a record cut short",
            Bad::Checksum => "a record whose checksum does not match",
        }
    }
}

/// The length of the whole record at `at`, or why there is none.
fn whole_at(src: &mut impl Source, at: u64) -> std::io::Result<Result<usize, Bad>> {
    let Some(header) = src.get(at, HEADER)? else {
        return Ok(Err(Bad::Short));
    };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len == 0 {
        return Ok(Err(Bad::Zero));
    }
    if len > MAX_RECORD {
        return Ok(Err(Bad::Range));
    }
    let Some(payload) = src.get(at + HEADER as u64, len)? else {
        return Ok(Err(Bad::Short));
    };
    Ok(if crc32fast::hash(payload) == crc {
        Ok(len)
    } else {
        Err(Bad::Checksum)
    })
}

/// Bytes skipped between whole records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Gap {
    pub from: u64,
    pub to: u64,
    /// How many records the gap held, as far as their lengths still tell (at least one).
    pub records: u64,
}

/// What follows the last whole record, when something does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Tail {
    pub at: u64,
    pub bad: Bad,
    pub bytes: u64,
    /// Nothing but zeros: the room laid down ahead of the records.
    pub zeros: bool,
}

/// A log's whole records, in order.
pub(super) struct Records<S> {
    src: S,
    /// Where the next record starts: after the last whole record read.
    pub end: u64,
    /// Skip damage and go on at the next whole record, instead of stopping there.
    resync: bool,
    /// Where the last record returned starts, and its payload's length.
    last: (u64, usize),
    pub gaps: Vec<Gap>,
    pub tail: Option<Tail>,
}

impl<S: Source> Records<S> {
    /// Checks the magic; `Ok(Err(why))` for a source that is not an outbox log.
    pub(super) fn open(mut src: S, resync: bool) -> std::io::Result<Result<Records<S>, &'static str>> {
        if src.get(0, MAGIC.len())? != Some(&MAGIC[..]) {
            return Ok(Err("not a flux-status outbox log (or one from a newer version)"));
        }
        Ok(Ok(Records {
            src,
            end: MAGIC.len() as u64,
            resync,
            last: (0, 0),
            gaps: Vec::new(),
            tail: None,
        }))
    }

    /// Moves to the next whole record and returns where it starts (see [`Self::frame`]).
    pub(super) fn next(&mut self) -> std::io::Result<Option<u64>> {
        if self.tail.is_some() || self.end >= self.src.size() {
            return Ok(None);
        }
        let bad = match whole_at(&mut self.src, self.end)? {
            Ok(len) => return Ok(Some(self.take(self.end, len))),
            Err(bad) => bad,
        };
        if self.resync
            && let Some((at, len)) = self.find_whole(self.end + 1)?
        {
            let records = self.records_within(self.end, at)?;
            self.gaps.push(Gap {
                from: self.end,
                to: at,
                records,
            });
            return Ok(Some(self.take(at, len)));
        }
        let (at, size) = (self.end, self.src.size());
        self.tail = Some(Tail {
            at,
            bad,
            bytes: size - at,
            zeros: self.next_nonzero(at)?.is_none(),
        });
        Ok(None)
    }

    fn take(&mut self, at: u64, len: usize) -> u64 {
        self.last = (at, len);
        self.end = at + (HEADER + len) as u64;
        at
    }

    /// The last record returned, header and payload, as read (and checked).
    pub(super) fn frame(&mut self) -> std::io::Result<&[u8]> {
        let (at, len) = self.last;
        self.src
            .get(at, HEADER + len)?
            .ok_or_else(|| std::io::Error::other("the log changed while being read"))
    }

    /// The first offset from `from` on where a whole record starts.
    fn find_whole(&mut self, from: u64) -> std::io::Result<Option<(u64, usize)>> {
        let size = self.src.size();
        let mut at = from;
        while at + (HEADER as u64) < size {
            match whole_at(&mut self.src, at)? {
                Ok(len) => return Ok(Some((at, len))),
                // Runs of zeros (the room ahead of the records, a zeroed block) are
                // passed at once: a record's length, non-zero, has a non-zero byte
                // within its first four.
                Err(Bad::Zero) => match self.next_nonzero(at)? {
                    Some(nz) => at = (at + 1).max(nz.saturating_sub(3)),
                    None => return Ok(None),
                },
                Err(_) => at += 1,
            }
        }
        Ok(None)
    }

    /// The first non-zero byte from `from` on.
    fn next_nonzero(&mut self, from: u64) -> std::io::Result<Option<u64>> {
        let size = self.src.size();
        let mut at = from;
        while at < size {
            let n = (size - at).min(WINDOW as u64) as usize;
            let Some(chunk) = self.src.get(at, n)? else { break };
            if let Some(i) = chunk.iter().position(|b| *b != 0) {
                return Ok(Some(at + i as u64));
            }
            at += n as u64;
        }
        Ok(None)
    }

    /// How many records lay in `from..to`, by following their lengths: exact when only
    /// their contents were damaged; one when the lengths do not lead to `to`.
    fn records_within(&mut self, from: u64, to: u64) -> std::io::Result<u64> {
        let (mut at, mut n) = (from, 0u64);
        while at + (HEADER as u64) < to {
            let Some(header) = self.src.get(at, HEADER)? else {
                break;
            };
            let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as u64;
            if len == 0 || len > MAX_RECORD as u64 {
                break;
            }
            at += HEADER as u64 + len;
            n += 1;
        }
        Ok(if at == to { n.max(1) } else { 1 })
    }
}
