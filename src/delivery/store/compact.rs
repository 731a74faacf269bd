//! Compaction: a helper thread copies the records of the log's first bytes that still
//! count into a new file while the persister appends; the persister then copies what
//! was appended meanwhile and renames the new file over the log.

use super::StoreError;
use super::codec::{HEADER, MAGIC, Record, Slot, slot};
use super::log::{COMPACTING, LOG, Mark, Store};
use super::read::{FileWindow, Records};
use super::space::{Growing, Space};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;
use tracing::warn;

/// Copies the records of the log's first `end` bytes that still count into
/// [`COMPACTING`], in their order; returns where the new file ends. Runs beside the
/// persister, which only appends. Memory: a 16-byte digest and an offset per live
/// record, not the records. On failure the new file is removed, giving its room back.
pub(super) fn compact_prefix(dir: &Path, end: u64, space: &Space) -> Result<Mark, StoreError> {
    let tmp = dir.join(COMPACTING);
    let result = copy_live(dir, end, space);
    if result.is_err()
        && let Ok(m) = std::fs::metadata(&tmp)
        && std::fs::remove_file(&tmp).is_ok()
    {
        space.shrink(m.len());
    }
    result
}

fn copy_live(dir: &Path, end: u64, space: &Space) -> Result<Mark, StoreError> {
    let path = dir.join(LOG);
    let read = |e| StoreError::io(&path, "reading the log to compact it")(e);
    // Strict: the log was made whole at opening; anything else is a bug to report.
    let open = || {
        Records::open(
            File::open(&path)
                .and_then(|f| FileWindow::new(f, Some(end)))
                .map_err(read)?,
            false,
        )
        .map_err(read)?
        .map_err(|why| StoreError::Foreign {
            path: path.clone(),
            why,
        })
    };
    // Pass 1: the latest record per slot, if it sets the slot.
    let mut live = HashMap::<Slot, u64>::new();
    let mut records = open()?;
    while let Some(at) = records.next().map_err(read)? {
        let frame = records.frame().map_err(read)?;
        // Skipped at replay, so not worth keeping.
        let Some(record) = Record::decode(&frame[HEADER..]) else {
            continue;
        };
        match slot(&record) {
            (slot, true) => live.insert(slot, at),
            (slot, false) => live.remove(&slot),
        };
    }
    if records.end != end {
        return Err(StoreError::ReadsBackShort {
            path,
            read: records.end,
            end,
        });
    }
    let mut keep: Vec<u64> = live.into_values().collect();
    keep.sort_unstable();
    let kept = keep.len() as u64;
    // Pass 2: copy those records.
    let tmp = dir.join(COMPACTING);
    let write = |e| StoreError::io(&tmp, "writing the compacted log")(space.note(e));
    let mut file = File::create(&tmp).map_err(write)?;
    let mut w = BufWriter::with_capacity(
        64 << 10,
        Growing {
            inner: &mut file,
            space: space.clone(),
        },
    );
    w.write_all(MAGIC).map_err(write)?;
    let (mut records, mut keep) = (open()?, keep.into_iter().peekable());
    while let Some(at) = records.next().map_err(read)? {
        if keep.next_if_eq(&at).is_some() {
            // The frame as it was read (and checked): header, then payload.
            w.write_all(records.frame().map_err(read)?).map_err(write)?;
        }
    }
    w.flush().map_err(write)?;
    drop(w);
    file.sync_data().map_err(write)?;
    let len = file.metadata().map(|m| m.len()).map_err(write)?;
    Ok(Mark { len, records: kept })
}

impl Store {
    /// Switches to the compacted file: copies what was appended after `end` into it,
    /// makes it durable and renames it over the log.
    pub(super) fn finish_compaction(&mut self, end: Mark, compacted: Mark) -> Result<(u64, u64), StoreError> {
        let (end, appended) = (end.len, self.records - end.records);
        let tmp = self.dir.join(COMPACTING);
        let space = self.space.clone();
        // The old file's zeros are of no use once it is replaced: their room is what
        // copying the tail may need.
        self.release_zeros();
        let switched = (|| -> std::io::Result<File> {
            self.cut_stray()?;
            // Not in append mode: records are written at their offset from now on.
            let mut out = OpenOptions::new().read(true).write(true).open(&tmp)?;
            out.seek(SeekFrom::End(0))?;
            let mut src = File::open(&self.path)?;
            src.seek(SeekFrom::Start(end))?;
            let tail = self.len - end;
            let mut grown = Growing {
                inner: &mut out,
                space: space.clone(),
            };
            if std::io::copy(&mut src.take(tail), &mut grown)? != tail {
                return Err(std::io::Error::other("the log is shorter than what was appended"));
            }
            out.sync_data()?;
            std::fs::rename(&tmp, &self.path)?;
            Ok(out)
        })();
        let before = self.len;
        match switched {
            Ok(file) => {
                // Renamed: from here on the new file is the log, whatever happens next.
                self.space.shrink(self.allocated);
                self.file = file;
                self.len = compacted.len + (before - end);
                self.records = compacted.records + appended;
                self.allocated = self.len;
                self.rearm_compaction();
                self.short_of_space = false;
                self.dir_synced = false;
                if let Err(e) = self.sync_dir_if_needed() {
                    // The next write tries again, and fails until it can.
                    warn!(error = %e, path = %self.dir.display(),
                        "could not fsync the state directory after compacting the outbox log");
                }
                Ok((before, self.len))
            }
            Err(e) => {
                if let Ok(m) = std::fs::metadata(&tmp)
                    && std::fs::remove_file(&tmp).is_ok()
                {
                    space.shrink(m.len());
                }
                Err(StoreError::io(&tmp, "switching to the compacted log")(
                    space.note(e),
                ))
            }
        }
    }
}
