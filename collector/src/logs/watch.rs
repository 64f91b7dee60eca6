//! File-event wake-ups for the tailer: inotify on the directories that hold the watched files,
//! read by the tailer's own thread, plus the wait that thread blocks in.
//!
//! The inotify descriptor is only looked at while the tailer is idle. While it reads, and during
//! the coalescing window after a read, the kernel queues the events and merges repeats (one
//! `IN_MODIFY` per file, however many writes), so a service that logs one `write(2)` per line
//! costs one wake-up per window, not one per line. (A watcher thread reading events as they come,
//! as the `notify` crate does, wakes once per write; BENCHMARKS.md has the cost.)
//!
//! Events only wake the tailer; what changed is found by looking at the files (and, for
//! creations, removals and renames, by a rescan). A full kernel queue (`IN_Q_OVERFLOW`) or a
//! watched directory going away asks for a rescan, and the periodic scan covers anything missed.

use std::collections::{HashMap, HashSet};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec, eventfd, poll};
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use rustix::io::Errno;

/// At most this many directories are watched per source (each inotify watch costs kernel
/// memory and counts against `fs.inotify.max_user_watches`); deeper trees rely on the scan.
pub const MAX_WATCHES: usize = 4096;

/// What reading the queued events found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Events {
    /// Some event was queued (a file was written, created, removed, renamed…).
    pub any: bool,
    /// A file or directory appeared, went away or was renamed, or events were lost: the
    /// watched directories and the file set have to be looked at again.
    pub rescan: bool,
}

#[derive(Debug)]
struct Dir {
    path: PathBuf,
    recursive: bool,
}

/// The inotify watches of one log source.
#[derive(Debug)]
pub struct DirWatch {
    fd: OwnedFd,
    by_wd: HashMap<i32, Dir>,
    by_path: HashMap<PathBuf, i32>,
    buf: Vec<MaybeUninit<u8>>,
    /// Set once when `MAX_WATCHES` was reached (warned about once).
    capped: bool,
    /// Directories that could not be watched (each warned about once).
    failed: HashSet<PathBuf>,
    /// Set once a subdirectory of a recursive watch could not be watched.
    incomplete: bool,
    /// Watches on network or FUSE filesystems, where inotify sees only this host's changes.
    remote: HashSet<i32>,
}

/// Filesystems whose files can change without an inotify event here (the change is made by
/// another host, or by a userspace daemon): NFS, SMB/CIFS, FUSE (sshfs, virtiofs, s3fs…),
/// 9p, Ceph, AFS, Coda, GFS2, OCFS2, Lustre, VirtualBox shared folders.
const REMOTE_FS: [u32; 14] = [
    0x0000_6969, // NFS
    0x0000_517B, // SMB
    0xFF53_4D42, // CIFS
    0xFE53_4D42, // SMB2
    0x6573_5546, // FUSE
    0x0102_1997, // 9p
    0x00C3_6400, // Ceph
    0x5346_414F, // AFS
    0x6B41_4653, // kAFS
    0x7375_7245, // Coda
    0x0116_1970, // GFS2
    0x7461_636F, // OCFS2
    0x0BD0_0BD0, // Lustre
    0x786F_4256, // vboxsf
];

fn is_remote(dir: &Path) -> bool {
    rustix::fs::statfs(dir).is_ok_and(|st| {
        REMOTE_FS
            .iter()
            .any(|&m| rustix::fs::FsWord::from(m) == st.f_type)
    })
}

/// Data written, attributes changed, entries created, removed or renamed, the directory itself
/// removed or moved. Opens, reads and closes (our own included) are not asked for.
fn mask() -> WatchFlags {
    WatchFlags::MODIFY
        | WatchFlags::ATTRIB
        | WatchFlags::CREATE
        | WatchFlags::DELETE
        | WatchFlags::MOVED_FROM
        | WatchFlags::MOVED_TO
        | WatchFlags::DELETE_SELF
        | WatchFlags::MOVE_SELF
        | WatchFlags::ONLYDIR
}

impl DirWatch {
    /// A new inotify instance with no watches.
    pub fn new() -> std::io::Result<Self> {
        let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
        Ok(Self {
            fd,
            by_wd: HashMap::new(),
            by_path: HashMap::new(),
            buf: vec![MaybeUninit::uninit(); 16 * 1024],
            capped: false,
            failed: HashSet::new(),
            incomplete: false,
            remote: HashSet::new(),
        })
    }

    /// Whether `dir` is watched.
    pub fn is_watched(&self, dir: &Path) -> bool {
        self.by_path.contains_key(dir)
    }

    /// Number of directories watched.
    pub fn len(&self) -> usize {
        self.by_wd.len()
    }

    /// Whether no directory is watched.
    pub fn is_empty(&self) -> bool {
        self.by_wd.is_empty()
    }

    /// Watches `dir`, and with `recursive` every directory below it (up to [`MAX_WATCHES`] in
    /// all; directories created later are added as their creation is read). Watching a
    /// directory already watched is a no-op. The error is the one for `dir` itself;
    /// subdirectories that cannot be watched are left to the scan.
    pub fn watch(&mut self, dir: &Path, recursive: bool) -> std::io::Result<()> {
        self.add(dir, recursive)?;
        if recursive {
            let mut stack = vec![dir.to_path_buf()];
            while let Some(d) = stack.pop() {
                let Ok(entries) = std::fs::read_dir(&d) else {
                    continue;
                };
                for entry in entries.flatten() {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        let sub = entry.path();
                        match self.add(&sub, true) {
                            Ok(()) => stack.push(sub),
                            // Gone already: nothing left to miss.
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                            Err(_) => self.incomplete = true,
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether this is the first time `dir` could not be watched (for warning once).
    pub fn first_failure(&mut self, dir: &Path) -> bool {
        self.failed.insert(dir.to_path_buf())
    }

    /// Whether the watch count reached [`MAX_WATCHES`] (once set, stays set).
    pub fn capped(&self) -> bool {
        self.capped
    }

    /// Whether the events can be relied on for what is watched: no directory failed to be
    /// watched or was left out (the cap), and none is on a network or FUSE filesystem. The
    /// caller still has to check that every directory it cares about is watched.
    pub fn reliable(&self) -> bool {
        !self.capped && !self.incomplete && self.failed.is_empty() && self.remote.is_empty()
    }

    fn add(&mut self, dir: &Path, recursive: bool) -> std::io::Result<()> {
        if self.by_path.contains_key(dir) {
            return Ok(());
        }
        if self.by_wd.len() >= MAX_WATCHES {
            self.capped = true;
            return Err(std::io::Error::other("too many watched directories"));
        }
        let wd = inotify::add_watch(&self.fd, dir, mask())?;
        // The kernel hands back the same descriptor for the same inode under another path.
        if let Some(old) = self.by_wd.insert(
            wd,
            Dir {
                path: dir.to_path_buf(),
                recursive,
            },
        ) {
            self.by_path.remove(&old.path);
        }
        self.by_path.insert(dir.to_path_buf(), wd);
        if is_remote(dir) {
            self.remote.insert(wd);
        }
        Ok(())
    }

    fn forget(&mut self, wd: i32) {
        if let Some(d) = self.by_wd.remove(&wd) {
            self.by_path.remove(&d.path);
        }
        self.remote.remove(&wd);
    }

    /// Reads every queued event without blocking. New subdirectories of recursive watches are
    /// watched here; watches the kernel dropped (directory removed) are forgotten, so the next
    /// rescan can watch the path again when it comes back.
    pub fn drain(&mut self) -> Events {
        let mut out = Events::default();
        let mut created: Vec<PathBuf> = Vec::new();
        let mut gone: Vec<i32> = Vec::new();
        {
            let mut reader = inotify::Reader::new(&self.fd, &mut self.buf);
            loop {
                let event = match reader.next() {
                    Ok(e) => e,
                    Err(Errno::INTR) => continue,
                    Err(Errno::AGAIN) => break,
                    Err(_) => {
                        // Unreadable queue: look at everything again.
                        out.any = true;
                        out.rescan = true;
                        break;
                    }
                };
                out.any = true;
                let flags = event.events();
                if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
                    out.rescan = true;
                    continue;
                }
                if flags.intersects(ReadFlags::IGNORED | ReadFlags::DELETE_SELF) {
                    gone.push(event.wd());
                    out.rescan = true;
                    continue;
                }
                if flags.intersects(
                    ReadFlags::CREATE
                        | ReadFlags::DELETE
                        | ReadFlags::MOVED_FROM
                        | ReadFlags::MOVED_TO
                        | ReadFlags::MOVE_SELF,
                ) {
                    out.rescan = true;
                }
                if flags.contains(ReadFlags::ISDIR)
                    && flags.intersects(ReadFlags::CREATE | ReadFlags::MOVED_TO)
                    && let (Some(parent), Some(name)) =
                        (self.by_wd.get(&event.wd()), event.file_name())
                    && parent.recursive
                {
                    use std::os::unix::ffi::OsStrExt;
                    let name = std::ffi::OsStr::from_bytes(name.to_bytes());
                    created.push(parent.path.join(name));
                }
            }
        }
        for wd in gone {
            self.forget(wd);
        }
        for dir in created {
            if let Err(e) = self.watch(&dir, true)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                self.incomplete = true;
            }
        }
        out
    }
}

impl AsFd for DirWatch {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Wakes a thread blocked in [`wait`] for good (an eventfd that, once written, stays readable):
/// the tailer's cancellation.
#[derive(Debug, Clone)]
pub struct Waker {
    fd: Arc<OwnedFd>,
}

impl Waker {
    /// A new, unset waker.
    pub fn new() -> std::io::Result<Self> {
        let fd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        Ok(Self { fd: Arc::new(fd) })
    }

    /// Sets the waker: every [`wait`] on it returns [`Woken::Waker`] from now on.
    pub fn wake(&self) {
        // Only fails when the counter would overflow, which leaves it readable anyway.
        let _ = rustix::io::write(&*self.fd, &1u64.to_ne_bytes());
    }
}

/// Why [`wait`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woken {
    /// The waker is set.
    Waker,
    /// Events are queued on the watch.
    Events,
    /// `until` passed.
    Timeout,
}

/// Blocks until the waker is set, events are queued on `events` (when given) or `until`.
pub fn wait(waker: &Waker, events: Option<&DirWatch>, until: Instant) -> Woken {
    loop {
        let now = Instant::now();
        if now >= until {
            return Woken::Timeout;
        }
        // Whole milliseconds, rounded up: poll(2) would otherwise wake just before the
        // deadline and spin through a few short waits.
        let left = (until - now).as_micros().div_ceil(1000);
        let left = Duration::from_millis(u64::try_from(left).unwrap_or(u64::MAX));
        let timeout = Timespec::try_from(left).unwrap_or(Timespec {
            tv_sec: i64::MAX,
            tv_nsec: 0,
        });
        // No allocation per wait: the second slot is only polled with a watch.
        let second = PollFd::new(&*waker.fd, PollFlags::IN);
        let mut fds = [
            PollFd::new(&*waker.fd, PollFlags::IN),
            events.map_or(second, |w| PollFd::new(w, PollFlags::IN)),
        ];
        let n = if events.is_some() { 2 } else { 1 };
        match poll(&mut fds[..n], Some(&timeout)) {
            Ok(0) => return Woken::Timeout,
            Ok(_) => {
                if !fds[0].revents().is_empty() {
                    return Woken::Waker;
                }
                if n == 2 && !fds[1].revents().is_empty() {
                    return Woken::Events;
                }
            }
            Err(Errno::INTR) => {}
            Err(_) => {
                // Cannot wait on the descriptors: sleep instead, so the loop stays bounded.
                std::thread::sleep(left.min(Duration::from_millis(100)));
                return Woken::Timeout;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(2)
    }

    #[test]
    fn writes_are_merged_and_wake_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("app.log");
        let mut f = std::fs::File::create(&path).expect("create");
        let mut w = DirWatch::new().expect("inotify");
        w.watch(dir.path(), false).expect("watch");
        let waker = Waker::new().expect("eventfd");
        assert_eq!(
            wait(&waker, Some(&w), Instant::now() + Duration::from_millis(20)),
            Woken::Timeout
        );
        for i in 0..1000 {
            writeln!(f, "line {i}").expect("write");
        }
        assert_eq!(wait(&waker, Some(&w), soon()), Woken::Events);
        let e = w.drain();
        assert!(e.any);
        assert!(!e.rescan, "writes alone do not ask for a rescan");
        // Everything was read: nothing left to wake on.
        assert_eq!(
            wait(&waker, Some(&w), Instant::now() + Duration::from_millis(20)),
            Woken::Timeout
        );
    }

    #[test]
    fn creation_rename_and_removal_ask_for_a_rescan() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = DirWatch::new().expect("inotify");
        w.watch(dir.path(), false).expect("watch");
        let waker = Waker::new().expect("eventfd");
        let a = dir.path().join("a.log");
        std::fs::write(&a, b"x\n").expect("write");
        assert_eq!(wait(&waker, Some(&w), soon()), Woken::Events);
        assert!(w.drain().rescan);
        std::fs::rename(&a, dir.path().join("a.log.1")).expect("rename");
        assert_eq!(wait(&waker, Some(&w), soon()), Woken::Events);
        assert!(w.drain().rescan);
        std::fs::remove_file(dir.path().join("a.log.1")).expect("remove");
        assert_eq!(wait(&waker, Some(&w), soon()), Woken::Events);
        assert!(w.drain().rescan);
    }

    #[test]
    fn recursive_watches_follow_new_directories_and_forget_removed_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("a/b")).expect("mkdir");
        let mut w = DirWatch::new().expect("inotify");
        w.watch(dir.path(), true).expect("watch");
        assert_eq!(w.len(), 3);
        let waker = Waker::new().expect("eventfd");
        std::fs::create_dir(dir.path().join("a/c")).expect("mkdir");
        assert_eq!(wait(&waker, Some(&w), soon()), Woken::Events);
        assert!(w.drain().rescan);
        assert!(w.is_watched(&dir.path().join("a/c")));
        // A file in the new directory wakes the tailer.
        std::fs::write(dir.path().join("a/c/x.log"), b"x\n").expect("write");
        assert_eq!(wait(&waker, Some(&w), soon()), Woken::Events);
        assert!(w.drain().any);
        std::fs::remove_dir_all(dir.path().join("a/c")).expect("rmdir");
        assert_eq!(wait(&waker, Some(&w), soon()), Woken::Events);
        assert!(w.drain().rescan);
        assert!(!w.is_watched(&dir.path().join("a/c")));
        assert_eq!(w.len(), 3);
    }

    #[test]
    fn the_waker_stays_set_and_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = DirWatch::new().expect("inotify");
        w.watch(dir.path(), false).expect("watch");
        let waker = Waker::new().expect("eventfd");
        std::fs::write(dir.path().join("a.log"), b"x\n").expect("write");
        waker.clone().wake();
        assert_eq!(wait(&waker, Some(&w), soon()), Woken::Waker);
        assert_eq!(wait(&waker, None, soon()), Woken::Waker);
    }

    #[test]
    fn a_timeout_without_a_watch_waits_until_the_deadline() {
        let waker = Waker::new().expect("eventfd");
        let start = Instant::now();
        let until = start + Duration::from_millis(30);
        assert_eq!(wait(&waker, None, until), Woken::Timeout);
        assert!(Instant::now() >= until);
    }

    #[test]
    fn watching_a_missing_directory_is_an_error_and_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = DirWatch::new().expect("inotify");
        assert!(w.watch(&dir.path().join("missing"), false).is_err());
        assert!(w.is_empty());
    }
}
