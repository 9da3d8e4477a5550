//! A SQLite VFS that writes each commit's WAL frames to the file in one
//! `pwrite` instead of two per frame.
//!
//! SQLite appends a frame as two writes, its 24-byte header and then its
//! page, and a commit of ten pages is twenty system calls. Each costs about
//! as much as the copy it makes (about 0.9 µs on our machines, a 24-byte
//! write as much as a 4 KiB one: the call, the inode lock, the timestamp,
//! the dirty-page accounting), so the `store` thread spent a third of its
//! time in `pwrite`. This VFS is SQLite's own `unix` VFS for every file but
//! the WAL; on the WAL it keeps the frames of a transaction in memory and
//! writes them with one call when the commit frame is complete.
//!
//! # Why nothing can see a frame that is not in the file
//!
//! - **The commit.** A transaction's last frame is its commit frame: a
//!   24-byte header whose second word (the database size) is not zero,
//!   then its page. The write of that page flushes the buffer, and its
//!   result is the result of that `xWrite`: a full disk fails the commit
//!   exactly as an unbuffered write would. SQLite publishes the frames to
//!   readers (the wal-index header) only after that call has returned, and
//!   the commit returns to the writer after that, so `store-sync`'s
//!   `fdatasync` covers every frame of every commit it is handed.
//! - **Anything else.** A read, a sync, a truncation, a size, a file
//!   control and the close flush first (locks and the device's properties
//!   do not touch the bytes and pass straight through), and so does a write
//!   that does not continue the buffer (SQLite rewriting a frame in place,
//!   or starting the log over at offset 0). The bytes reach the file in the
//!   order SQLite wrote them.
//! - **What stays in memory** between calls is only frames of a
//!   transaction that has not committed (a cache spill), which no reader
//!   may use and a crash must lose anyway.
//!
//! Readers open the database with the plain `unix` VFS: they never write
//! the WAL, and they read frames only once the writer has published them.

use std::ffi::{CStr, c_int, c_void};
use std::sync::OnceLock;

use rusqlite::ffi;

/// The name connections open the database with.
pub(super) const NAME: &CStr = c"quiesce-walbuf";

/// A buffer past this is written out even before its commit frame (a
/// large transaction's spill): memory stays bounded.
const LIMIT: usize = 1 << 20;

/// The most written in one call. The `unix` VFS keeps only the low 17 bits
/// of a length (`seekAndWriteFd`: SQLite itself never writes more than a
/// page at once), so a longer buffer goes in several calls, each a whole
/// number of 4 KiB blocks but the last.
const MAX_WRITE: usize = 0x1f000;

/// The VFS wrapped (the process's default, `unix`), once registered.
static REAL: OnceLock<Result<Vfs, String>> = OnceLock::new();

/// The `unix` VFS, behind a pointer SQLite owns for the life of the
/// process.
#[derive(Clone, Copy)]
struct Vfs(*mut ffi::sqlite3_vfs);

// SAFETY: SQLite's VFS objects are immutable once registered and may be
// used from any thread (the library is built threadsafe).
unsafe impl Send for Vfs {}
// SAFETY: as above.
unsafe impl Sync for Vfs {}

/// Registers the VFS (once per process) and returns its name.
///
/// # Errors
///
/// When SQLite has no default VFS or refuses the registration.
pub(super) fn register() -> Result<&'static CStr, String> {
    REAL.get_or_init(|| {
        // SAFETY: `sqlite3_vfs_find` initialises SQLite if needed and
        // returns the default VFS, or null.
        let real = unsafe { ffi::sqlite3_vfs_find(std::ptr::null()) };
        if real.is_null() {
            return Err("SQLite has no default VFS".into());
        }
        // SAFETY: `real` is a registered VFS, valid for the process; the
        // copy keeps its methods and its `pAppData`, which `unix`'s own
        // methods read from the VFS they are given (ours).
        let mut ours = unsafe { std::ptr::read(real) };
        ours.zName = NAME.as_ptr();
        ours.pNext = std::ptr::null_mut();
        // SAFETY: as above.
        let real_size = unsafe { (*real).szOsFile };
        ours.szOsFile = c_int::try_from(HEADER).map_err(|e| e.to_string())? + real_size;
        ours.xOpen = Some(x_open);
        let ours = Box::leak(Box::new(ours));
        // SAFETY: `ours` is leaked, so it outlives every connection; SQLite
        // links it into its list under its own mutex.
        let rc = unsafe { ffi::sqlite3_vfs_register(ours, 0) };
        if rc != ffi::SQLITE_OK {
            return Err(format!("SQLite refused the {NAME:?} VFS (code {rc})"));
        }
        Ok(Vfs(real))
    })
    .as_ref()
    .map(|_| NAME)
    .map_err(Clone::clone)
}

/// What SQLite allocates for a WAL file opened through this VFS: this
/// header, then the `unix` file.
#[repr(C)]
struct WalFile {
    base: ffi::sqlite3_file,
    state: *mut Pending,
}

/// Bytes before the wrapped file, kept a multiple of 8 for its alignment.
const HEADER: usize = std::mem::size_of::<WalFile>().next_multiple_of(8);

/// A WAL file's writes not yet made.
struct Pending {
    /// The bytes just before `end` (a write that does not continue them
    /// writes them first).
    buf: Vec<u8>,
    /// Just past the last byte written (into `buf` or the file).
    end: i64,
    /// The last write was a commit frame's header: its page ends the
    /// transaction.
    commit_next: bool,
}

fn real_vfs() -> *mut ffi::sqlite3_vfs {
    match REAL.get() {
        Some(Ok(vfs)) => vfs.0,
        // `x_open` is reachable only through a registered VFS.
        _ => unreachable!("the walbuf VFS is used before it is registered"),
    }
}

/// The wrapped file inside `file`.
///
/// # Safety
///
/// `file` was allocated by SQLite with this VFS's `szOsFile`.
unsafe fn inner(file: *mut ffi::sqlite3_file) -> *mut ffi::sqlite3_file {
    // SAFETY: the allocation is `HEADER` bytes longer than the wrapped
    // file's, and SQLite aligns it for any type.
    unsafe { file.cast::<u8>().add(HEADER).cast() }
}

/// The wrapped file's methods.
///
/// # Safety
///
/// `real` is an open file (its `pMethods` set by the wrapped VFS).
unsafe fn methods(real: *mut ffi::sqlite3_file) -> &'static ffi::sqlite3_io_methods {
    // SAFETY: an open file's methods are a static table of its VFS.
    unsafe { &*(*real).pMethods }
}

unsafe extern "C" fn x_open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let real_vfs = real_vfs();
    // SAFETY: `real_vfs` is the registered `unix` VFS, which has `xOpen`.
    let open = unsafe { (*real_vfs).xOpen }.expect("a VFS opens files");
    if flags & ffi::SQLITE_OPEN_WAL == 0 {
        // Any other file is the `unix` VFS's own, in the (larger) space
        // SQLite gave us: its methods, no wrapper.
        // SAFETY: `file` has room for the wrapped file and more.
        return unsafe { open(real_vfs, name, file, flags, out_flags) };
    }
    // SAFETY: `file` has `HEADER` bytes plus the wrapped file's size.
    let real = unsafe { inner(file) };
    // SAFETY: as above; SQLite's arguments passed through.
    let rc = unsafe { open(real_vfs, name, real, flags, out_flags) };
    let wal = file.cast::<WalFile>();
    if rc != ffi::SQLITE_OK {
        // SAFETY: an open that failed may still have set its methods,
        // which must then close it; ours stay unset, so SQLite will not
        // call `x_close` for it.
        unsafe {
            if !(*real).pMethods.is_null()
                && let Some(close) = methods(real).xClose
            {
                close(real);
            }
            (*wal).base.pMethods = std::ptr::null();
        }
        return rc;
    }
    let pending = Box::new(Pending {
        buf: Vec::new(),
        // No write continues an unknown end.
        end: -1,
        commit_next: false,
    });
    // SAFETY: `wal` is SQLite's allocation for this file, ours to fill.
    unsafe {
        (*wal).state = Box::into_raw(pending);
        (*wal).base.pMethods = &raw const WAL_METHODS;
    }
    ffi::SQLITE_OK
}

/// A WAL file's state and the wrapped file.
///
/// # Safety
///
/// `file` was opened by `x_open` as a WAL file and is not closed; SQLite
/// calls a file's methods from one thread at a time.
unsafe fn parts<'a>(file: *mut ffi::sqlite3_file) -> (&'a mut Pending, *mut ffi::sqlite3_file) {
    // SAFETY: see the function's contract.
    unsafe { (&mut *(*file.cast::<WalFile>()).state, inner(file)) }
}

/// Writes the buffer to the file.
///
/// # Safety
///
/// `real` is the open wrapped file `pending` belongs to.
unsafe fn flush(pending: &mut Pending, real: *mut ffi::sqlite3_file) -> c_int {
    if pending.buf.is_empty() {
        return ffi::SQLITE_OK;
    }
    // SAFETY: `real` is open.
    let write = unsafe { methods(real) }.xWrite.expect("a file writes");
    let mut rc = ffi::SQLITE_OK;
    let held = i64::try_from(pending.buf.len()).expect("the buffer stays under LIMIT");
    let mut offset = pending.end - held;
    for chunk in pending.buf.chunks(MAX_WRITE) {
        let len = c_int::try_from(chunk.len()).expect("a chunk fits a C int");
        // SAFETY: `real` is open; the chunk lives across the call.
        rc = unsafe { write(real, chunk.as_ptr().cast(), len, offset) };
        if rc != ffi::SQLITE_OK {
            break;
        }
        offset += i64::from(len);
    }
    // Written or failed, the bytes are SQLite's to write again: a failed
    // commit is rolled back and its frames are written anew.
    pending.buf.clear();
    rc
}

unsafe extern "C" fn x_write(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: SQLite calls this on a WAL file `x_open` opened.
    let (pending, real) = unsafe { parts(file) };
    let Ok(len) = usize::try_from(amount) else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    // SAFETY: SQLite passes `amount` readable bytes at `data`.
    let bytes = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) };
    // A frame header whose database size is set: a commit frame's.
    let commit_header = len == 24 && bytes[4..8] != [0; 4];
    let ends_commit = std::mem::replace(&mut pending.commit_next, commit_header);
    let continues = offset == pending.end;
    if !continues && !pending.buf.is_empty() {
        // SAFETY: `real` is `pending`'s file.
        let rc = unsafe { flush(pending, real) };
        if rc != ffi::SQLITE_OK {
            return rc;
        }
    }
    pending.end = offset + i64::from(amount);
    if continues || offset == 0 {
        // An append to the log (offset 0: the header of a new one).
        pending.buf.extend_from_slice(bytes);
        if ends_commit || pending.buf.len() >= LIMIT {
            // SAFETY: as above.
            return unsafe { flush(pending, real) };
        }
        return ffi::SQLITE_OK;
    }
    // A frame rewritten in place: through at once, in order.
    // SAFETY: `real` is open; SQLite's arguments passed through.
    unsafe { methods(real).xWrite.expect("a file writes")(real, data, amount, offset) }
}

/// Generates a method that flushes the buffer, then calls the wrapped
/// file's.
macro_rules! flushing {
    ($name:ident, $method:ident ( $($arg:ident : $ty:ty),* )) => {
        unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file, $($arg: $ty),*) -> c_int {
            // SAFETY: SQLite calls this on a WAL file `x_open` opened.
            let (pending, real) = unsafe { parts(file) };
            // SAFETY: `real` is `pending`'s file.
            let rc = unsafe { flush(pending, real) };
            if rc != ffi::SQLITE_OK {
                return rc;
            }
            // SAFETY: `real` is open; SQLite's arguments passed through.
            unsafe { methods(real).$method.expect("a file method")(real, $($arg),*) }
        }
    };
}

flushing!(x_read, xRead(data: *mut c_void, amount: c_int, offset: ffi::sqlite3_int64));
flushing!(x_truncate, xTruncate(size: ffi::sqlite3_int64));
flushing!(x_sync, xSync(flags: c_int));
flushing!(x_file_size, xFileSize(size: *mut ffi::sqlite3_int64));
flushing!(x_file_control, xFileControl(op: c_int, arg: *mut c_void));

/// Generates a method that calls the wrapped file's: the buffer does not
/// matter to it.
macro_rules! through {
    ($name:ident, $method:ident ( $($arg:ident : $ty:ty),* )) => {
        unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file, $($arg: $ty),*) -> c_int {
            // SAFETY: SQLite calls this on a WAL file `x_open` opened.
            let real = unsafe { inner(file) };
            // SAFETY: `real` is open; SQLite's arguments passed through.
            unsafe { methods(real).$method.expect("a file method")(real, $($arg),*) }
        }
    };
}

through!(x_lock, xLock(level: c_int));
through!(x_unlock, xUnlock(level: c_int));
through!(x_check_reserved_lock, xCheckReservedLock(out: *mut c_int));
through!(x_sector_size, xSectorSize());
through!(x_device_characteristics, xDeviceCharacteristics());

unsafe extern "C" fn x_close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite calls this once, on a WAL file `x_open` opened.
    let (pending, real) = unsafe { parts(file) };
    // SAFETY: `real` is `pending`'s file.
    let flushed = unsafe { flush(pending, real) };
    // SAFETY: `state` came from `Box::into_raw` in `x_open`, and this is
    // the file's last call.
    drop(unsafe { Box::from_raw((*file.cast::<WalFile>()).state) });
    // SAFETY: `real` is open; closed once, here.
    let closed = unsafe { methods(real).xClose.expect("a file closes")(real) };
    if flushed == ffi::SQLITE_OK {
        closed
    } else {
        flushed
    }
}

/// Version 1: a WAL file has no shared memory and is never mapped.
static WAL_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 1,
    xClose: Some(x_close),
    xRead: Some(x_read),
    xWrite: Some(x_write),
    xTruncate: Some(x_truncate),
    xSync: Some(x_sync),
    xFileSize: Some(x_file_size),
    xLock: Some(x_lock),
    xUnlock: Some(x_unlock),
    xCheckReservedLock: Some(x_check_reserved_lock),
    xFileControl: Some(x_file_control),
    xSectorSize: Some(x_sector_size),
    xDeviceCharacteristics: Some(x_device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use rusqlite::{Connection, OpenFlags, params};

    use super::*;

    /// A fresh directory for one test's database, removed when dropped.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let dir =
                std::env::temp_dir().join(format!("quiesce-walbuf-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create the test directory");
            Dir(dir)
        }

        fn db(&self) -> PathBuf {
            self.0.join("t.db")
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The writer as the store opens it: this VFS, WAL, `synchronous =
    /// NORMAL`.
    fn writer(db: &Path, autocheckpoint: u32) -> Connection {
        let vfs = register().expect("register the VFS");
        let conn = Connection::open_with_flags_and_vfs(db, OpenFlags::default(), vfs)
            .expect("open the writer");
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
             PRAGMA wal_autocheckpoint = {autocheckpoint};
             CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, k TEXT UNIQUE, v TEXT);"
        ))
        .expect("set the writer up");
        conn
    }

    /// Commits `rows` rows of `size` bytes in one transaction.
    fn commit(conn: &Connection, txn: usize, rows: usize, size: usize) {
        conn.execute_batch("BEGIN").expect("begin");
        for i in 0..rows {
            conn.execute(
                "INSERT INTO t (k, v) VALUES (?1, ?2)",
                params![format!("k{txn}-{i}"), "x".repeat(size)],
            )
            .expect("insert");
        }
        conn.execute_batch("COMMIT").expect("commit");
    }

    /// The database as a fresh process would find it: its files copied as
    /// they are (the writer still open, its WAL not folded in) and opened
    /// anew, so the WAL is replayed from the file alone; checked whole.
    fn replayed(dir: &Dir) -> Connection {
        let copy = dir.0.join("copy.db");
        std::fs::copy(dir.db(), &copy).expect("copy the database");
        std::fs::copy(dir.0.join("t.db-wal"), dir.0.join("copy.db-wal")).expect("copy the WAL");
        let replayed = Connection::open(&copy).expect("open the copy");
        let check: String = replayed
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .expect("integrity check");
        assert_eq!(check, "ok");
        replayed
    }

    /// Write system calls this thread has made so far.
    fn writes_by_this_thread() -> u64 {
        let io =
            std::fs::read_to_string("/proc/thread-self/io").expect("read /proc/thread-self/io");
        io.lines()
            .find_map(|l| l.strip_prefix("syscw: "))
            .and_then(|n| n.trim().parse().ok())
            .expect("a syscw line")
    }

    #[test]
    fn every_commit_is_in_the_file_when_it_returns_small_large_and_across_checkpoints() {
        let dir = Dir::new("visible");
        // A checkpoint every 50 frames: the log starts over at offset 0
        // many times in the run.
        let w = writer(&dir.db(), 50);
        // A reader as the store's: the plain VFS, its own file handles.
        let r = Connection::open_with_flags(dir.db(), OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open a reader");
        let mut expected = 0_i64;
        for txn in 0..200 {
            // Every 20th transaction is over 1 MiB of frames: more than
            // one write, and more than the buffer holds.
            let (rows, size) = if txn % 20 == 7 {
                (400, 3000)
            } else {
                (10, 300)
            };
            commit(&w, txn, rows, size);
            expected += i64::try_from(rows).unwrap();
            let seen: i64 = r
                .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
                .expect("count");
            assert_eq!(seen, expected, "rows a reader sees after transaction {txn}");
        }
        let replayed = replayed(&dir);
        drop((r, w));
        let seen: i64 = replayed
            .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
            .expect("count the copy");
        assert_eq!(seen, expected);
    }

    #[test]
    fn a_transaction_that_spills_and_rewrites_its_frames_commits_whole() {
        let dir = Dir::new("spill");
        let w = writer(&dir.db(), 100_000);
        // A page cache of 10 pages: the transaction below spills frames
        // before its commit, then changes spilled pages again, which
        // SQLite rewrites in place in the WAL.
        w.execute_batch("PRAGMA cache_size = 10; PRAGMA cache_spill = 1")
            .expect("a small cache");
        commit(&w, 0, 1, 10);
        let before = writes_by_this_thread();
        w.execute_batch("BEGIN").expect("begin");
        for i in 0..300 {
            w.execute(
                "INSERT INTO t (k, v) VALUES (?1, ?2)",
                params![format!("s{i}"), "y".repeat(1000)],
            )
            .expect("insert");
        }
        w.execute(
            "UPDATE t SET v = 'changed' WHERE k LIKE 's%' AND id % 3 = 0",
            [],
        )
        .expect("update spilled rows");
        w.execute_batch("COMMIT").expect("commit");
        let writes = writes_by_this_thread() - before;
        assert!(writes > 2, "the transaction spilled: {writes} write calls");
        let count = |conn: &Connection| -> (i64, i64) {
            conn.query_row(
                "SELECT count(*), sum(v = 'changed') FROM t WHERE k LIKE 's%'",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .expect("count")
        };
        let r = Connection::open_with_flags(dir.db(), OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open a reader");
        assert_eq!(count(&r), (300, 100));
        let replayed = replayed(&dir);
        drop((r, w));
        assert_eq!(count(&replayed), (300, 100));
    }

    #[test]
    fn a_commit_of_many_frames_is_one_write() {
        let dir = Dir::new("one-write");
        let w = writer(&dir.db(), 100_000);
        commit(&w, 0, 1, 10);
        // 40 rows of 2,000 bytes: about 20 pages, 40 writes frame by frame.
        let before = writes_by_this_thread();
        commit(&w, 1, 40, 2000);
        let writes = writes_by_this_thread() - before;
        let frames: i64 = w
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get(1))
            .expect("frames in the WAL");
        assert!(
            frames > 20,
            "the test's transaction wrote {frames} frames in all"
        );
        assert_eq!(writes, 1, "write calls for one commit");
    }
}
