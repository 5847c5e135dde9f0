//! The one-time import of the JSON-lines log earlier servers kept (`builds.jsonl`, one record
//! per line, oldest first): its records go into the database in one transaction, in order,
//! then the file is renamed `builds.jsonl.imported` (kept, never read again). Lines that do not
//! parse (a torn last line from a crash mid-append, bytes that are not UTF-8) are skipped with
//! a warning and copied to `builds.bad.jsonl`; an id seen twice keeps its first record, as the
//! old log did, and only the newest `keep` are imported, as the old log would have shown.
//! A crash between the commit and the rename imports again at the next start, which changes
//! nothing: ids already held are skipped.

use std::collections::{HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::Path;

use super::BuildStore;
use crate::server::builds::BuildRecord;

/// The old log's name in the build directory.
pub const JSONL: &str = "builds.jsonl";
/// What it is renamed to once imported.
pub const IMPORTED: &str = "builds.jsonl.imported";

/// Imports `dir/builds.jsonl` into `store` if it is there; how many records were new.
pub fn import_jsonl(dir: &Path, store: &dyn BuildStore, keep: usize) -> io::Result<usize> {
    let path = dir.join(JSONL);
    let f = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let keep = keep.max(1);
    let mut records: VecDeque<BuildRecord> = VecDeque::new();
    let mut ids = HashSet::new();
    let mut bad: Vec<Vec<u8>> = Vec::new();
    let mut reader = BufReader::new(f);
    let mut buf = Vec::new();
    let mut n = 0;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        n += 1;
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<BuildRecord>(&buf) {
            Ok(r) if ids.contains(&r.id) => {}
            Ok(r) => {
                ids.insert(r.id.clone());
                records.push_back(r);
                if records.len() > keep {
                    records.pop_front();
                }
            }
            Err(e) => {
                tracing::warn!(
                    "{}:{n}: skipping a record that does not parse: {e}",
                    path.display()
                );
                bad.push(buf.clone());
            }
        }
    }
    if !bad.is_empty() {
        let aside = dir.join("builds.bad.jsonl");
        let mut f = OpenOptions::new().create(true).append(true).open(&aside)?;
        for line in &bad {
            f.write_all(line)?;
            if !line.ends_with(b"\n") {
                f.write_all(b"\n")?;
            }
        }
        f.sync_data()?;
    }
    let records: Vec<BuildRecord> = records.into();
    let new = store.insert_all(&records)?;
    fs::rename(&path, dir.join(IMPORTED))?;
    File::open(dir)?.sync_all()?;
    tracing::info!(
        from = %path.display(),
        records = records.len(),
        new,
        skipped = bad.len(),
        "build records imported from the JSON-lines log"
    );
    Ok(new)
}
