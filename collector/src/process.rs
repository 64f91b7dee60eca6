//! Process metrics per watched target: every process matching a target (by name, cmdline regex,
//! pidfile or cgroup, plus their descendants) is aggregated into one set of series labelled
//! `target`, so a gunicorn master and its workers are one target.
//!
//! Cost is what matters here: a cycle lists `/proc`, reads one `stat` file per process, and
//! caches each process's match result by identity (pid + start time), so a process's `cmdline`
//! and `cgroup` are read once in its lifetime. Only matched processes have their fds and limits
//! read. A pid that vanishes mid-cycle is skipped silently: that is normal, not an error.
//!
//! Restarts are told apart by what kept running. A *root* is a member whose parent is not a
//! member (a gunicorn master, a lone `python app.py`). When every root of a target is replaced
//! (a deploy, `systemctl restart`, the whole service crashing), that is one `kind="group"`
//! restart however many workers came with it; a member replaced while a root kept running (a
//! worker crashing and being respawned, a graceful reload, worker recycling) is one
//! `kind="worker"` restart per process. A replacement pairs a process that left with one that
//! came, in either order: a new worker that appears before the old one leaves (a graceful
//! reload) is paired for [`PAIR_CYCLES`] cycles, after which it counts as growth. Helpers that
//! are not workers — Python's multiprocessing resource tracker, semaphore tracker and fork
//! server — are counted in `sidelight_target_helper_processes`, not as processes or restarts
//! (their CPU and memory still count towards the target).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use regex::Regex;

use crate::metrics::{FamilySnapshot, Kind, Snapshot};
use crate::procfs::{ProcError, ProcFs};

/// The most targets one agent watches (match results are kept as a 64-bit set per process).
pub const MAX_TARGETS: usize = 64;

/// How to recognise the processes of one target. Every criterion given must match.
#[derive(Debug, Clone)]
pub struct TargetSpec {
    /// The `target` label.
    pub name: String,
    /// Kernel process name (comm), ignoring a version suffix (`python` matches `python3.11`).
    pub process_name: Option<String>,
    /// Regex searched in the command line (arguments joined by spaces).
    pub cmdline: Option<Regex>,
    /// File holding the pid of the target's main process.
    pub pidfile: Option<PathBuf>,
    /// Regex searched in `/proc/<pid>/cgroup` (e.g. a systemd unit `app\.service`).
    pub cgroup: Option<Regex>,
    /// A fixed pid (used for the agent's own process).
    pub pid: Option<u32>,
    /// Whether descendants of matched processes belong to the target (worker pools).
    pub include_children: bool,
}

impl TargetSpec {
    /// The agent's own process, as target `name`.
    pub fn own_process(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            process_name: None,
            cmdline: None,
            pidfile: None,
            cgroup: None,
            pid: Some(std::process::id()),
            include_children: false,
        }
    }

    fn has_static_criteria(&self) -> bool {
        self.process_name.is_some() || self.cmdline.is_some() || self.cgroup.is_some()
    }
}

/// A process's identity: pids are reused, (pid, start time) is not.
type Ident = (u32, u64);

#[derive(Debug)]
struct ProcInfo {
    ident: Ident,
    comm: String,
    ppid: u32,
    /// Whether the counters below were read in this cycle (false: a cached non-member).
    fresh: bool,
    cpu_ticks: u64,
    rss_pages: u64,
    vsize: u64,
    threads: i64,
}

#[derive(Debug, Default)]
struct TargetState {
    cpu_ticks_total: u64,
    /// Processes replaced while a root kept running.
    worker_restarts: u64,
    /// Times every root was replaced.
    group_restarts: u64,
    /// Processes that left, not yet paired with a newcomer.
    pending_vanished: u64,
    /// Newcomers not yet paired with a process that left: (cycle, count), oldest first.
    pending_appeared: std::collections::VecDeque<(u64, u64)>,
    /// Every root left; the next root to appear is a group restart.
    group_gone: bool,
    /// Non-helper members of the last cycle.
    members: HashSet<Ident>,
    /// Their roots.
    roots: HashSet<Ident>,
    cycles: u64,
}

/// Cycles a newcomer waits to be paired with a process that leaves after it.
pub const PAIR_CYCLES: u64 = 4;

/// Command-line markers of helper processes that are not workers.
const HELPER_MARKERS: [&str; 3] = [
    "multiprocessing.resource_tracker",
    "multiprocessing.semaphore_tracker",
    "multiprocessing.forkserver",
];

impl TargetState {
    /// Updates the restart counters from this cycle's members and roots (helpers excluded).
    fn observe(&mut self, cycle: u64, members: HashSet<Ident>, roots: HashSet<Ident>) {
        if self.cycles > 0 {
            let root_kept = self.roots.intersection(&roots).next().is_some();
            if !self.roots.is_empty() && !root_kept {
                self.group_gone = true;
            }
            if self.group_gone {
                if !roots.is_empty() {
                    // The group came back: one restart; its workers are part of it.
                    self.group_restarts += 1;
                    self.group_gone = false;
                }
                self.pending_vanished = 0;
                self.pending_appeared.clear();
            } else {
                let vanished = self.members.difference(&members).count() as u64;
                let appeared = members.difference(&self.members).count() as u64;
                self.pending_vanished += vanished;
                if appeared > 0 {
                    self.pending_appeared.push_back((cycle, appeared));
                }
                while self
                    .pending_appeared
                    .front()
                    .is_some_and(|(at, _)| cycle - at > PAIR_CYCLES)
                {
                    self.pending_appeared.pop_front();
                }
                let waiting: u64 = self.pending_appeared.iter().map(|(_, n)| n).sum();
                let mut pairs = self.pending_vanished.min(waiting);
                self.worker_restarts += pairs;
                self.pending_vanished -= pairs;
                while pairs > 0 {
                    let Some(front) = self.pending_appeared.front_mut() else {
                        break;
                    };
                    let take = front.1.min(pairs);
                    front.1 -= take;
                    pairs -= take;
                    if front.1 == 0 {
                        self.pending_appeared.pop_front();
                    }
                }
            }
        }
        self.members = members;
        self.roots = roots;
        self.cycles += 1;
    }
}

/// The result of one process collection.
#[derive(Debug, Default)]
pub struct ProcessSample {
    /// The metrics.
    pub snapshot: Snapshot,
    /// Processes listed in this cycle.
    pub scanned: usize,
    /// Reads that failed for a reason other than the process exiting.
    pub errors: Vec<ProcError>,
}

/// A process that belongs to no target is re-read only every this many cycles (its pid is still
/// checked every cycle); pids are allocated sequentially, so reuse within that time is rare and
/// is caught at the next verification.
const VERIFY_EVERY: u64 = 8;
/// Members keep their `stat` file open and re-read it with `pread` (one syscall instead of three);
/// at most a quarter of the open-files limit, and at most this many, are held.
const MAX_HELD_FDS: usize = 4096;

fn held_fd_budget() -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    usize::try_from(soft / 4)
        .unwrap_or(MAX_HELD_FDS)
        .min(MAX_HELD_FDS)
}
/// The open-files limit of a member is re-read every this many cycles.
const LIMITS_EVERY: u64 = 20;

/// Samples the watched targets. Keeps state between cycles (CPU deltas, restarts, match cache).
#[derive(Debug)]
pub struct ProcessCollector {
    proc: ProcFs,
    targets: Vec<TargetSpec>,
    states: Vec<TargetState>,
    /// Per live pid: identity, static match results, last CPU ticks, held `stat` descriptor.
    known: HashMap<u32, Known>,
    boot_time: Option<u64>,
    cycle: u64,
    held_fds: usize,
    fd_budget: usize,
    buf: Vec<u8>,
    /// Whether a member is a helper (read once from its command line), for live members.
    helpers: HashMap<Ident, bool>,
}

#[derive(Debug)]
struct Known {
    start: u64,
    comm: String,
    ppid: u32,
    /// `None` after a reload: recompute against the new criteria.
    matched: Option<u64>,
    cpu_ticks: u64,
    member: bool,
    verified: u64,
    stat: Option<File>,
    max_fds: Option<(u64, u64)>,
}

impl ProcessCollector {
    /// A collector for these targets (at most [`MAX_TARGETS`]; extra ones are ignored).
    pub fn new(procfs: impl Into<PathBuf>, mut targets: Vec<TargetSpec>) -> Self {
        targets.truncate(MAX_TARGETS);
        let states = targets.iter().map(|_| TargetState::default()).collect();
        Self {
            proc: ProcFs::new(procfs),
            targets,
            states,
            known: HashMap::new(),
            boot_time: None,
            cycle: 0,
            held_fds: 0,
            fd_budget: held_fd_budget(),
            buf: Vec::with_capacity(1024),
            helpers: HashMap::new(),
        }
    }

    /// Replaces the targets, keeping the counters of targets whose name stays (on reload).
    pub fn reconfigure(&mut self, procfs: impl Into<PathBuf>, mut targets: Vec<TargetSpec>) {
        targets.truncate(MAX_TARGETS);
        let mut old: HashMap<String, TargetState> = self
            .targets
            .iter()
            .map(|t| t.name.clone())
            .zip(std::mem::take(&mut self.states))
            .collect();
        self.states = targets
            .iter()
            .map(|t| old.remove(&t.name).unwrap_or_default())
            .collect();
        self.targets = targets;
        let procfs = procfs.into();
        if procfs != self.proc.root() {
            self.known.clear();
            self.held_fds = 0;
        }
        self.proc = ProcFs::new(procfs);
        // Match results depend on the criteria: recompute them, keeping the CPU baselines, and
        // re-read everything once.
        for k in self.known.values_mut() {
            k.matched = None;
            k.verified = 0;
        }
    }

    /// The targets watched.
    pub fn targets(&self) -> &[TargetSpec] {
        &self.targets
    }

    /// Runs one cycle. Blocking: run it off the async runtime.
    pub fn collect(&mut self) -> ProcessSample {
        self.cycle += 1;
        let mut sample = ProcessSample::default();
        if self.boot_time.is_none() {
            match self.proc.parse_si::<procfs_core::KernelStats>("stat") {
                Ok(s) => self.boot_time = Some(s.btime),
                Err(e) => sample.errors.push(e),
            }
        }
        let pidfile_pids: Vec<Option<u32>> = self
            .targets
            .iter()
            .map(|t| {
                t.pidfile
                    .as_deref()
                    .and_then(|p| read_pidfile(p, &mut sample.errors))
            })
            .collect();

        let mut procs = self.list(&mut sample);
        sample.scanned = procs.len();

        // Direct matches: static criteria from the cache (or computed once), dynamic ones now.
        let mut direct = Vec::with_capacity(procs.len());
        let mut static_bits_of = Vec::with_capacity(procs.len());
        for p in &procs {
            let cached = self
                .known
                .get(&p.ident.0)
                .filter(|k| k.start == p.ident.1)
                .and_then(|k| k.matched);
            let static_bits = match cached {
                Some(bits) => bits,
                None => static_matches(
                    &self.targets,
                    &self.proc,
                    &mut self.buf,
                    p,
                    &mut sample.errors,
                ),
            };
            let mut bits = 0u64;
            for (i, t) in self.targets.iter().enumerate() {
                let static_ok = !t.has_static_criteria() || static_bits & (1 << i) != 0;
                let pid_ok = t.pid.is_none_or(|pid| pid == p.ident.0);
                let pidfile_ok = t.pidfile.is_none() || pidfile_pids[i] == Some(p.ident.0);
                let any = t.has_static_criteria() || t.pid.is_some() || t.pidfile.is_some();
                if any && static_ok && pid_ok && pidfile_ok {
                    bits |= 1 << i;
                }
            }
            direct.push(bits);
            static_bits_of.push(static_bits);
        }

        // Descendants of matched processes join targets that include children.
        let children_mask: u64 = self
            .targets
            .iter()
            .enumerate()
            .filter(|(_, t)| t.include_children)
            .fold(0, |m, (i, _)| m | (1 << i));
        let mut membership = direct.clone();
        if children_mask != 0 && direct.iter().any(|d| d & children_mask != 0) {
            let by_pid: HashMap<u32, usize> = procs
                .iter()
                .enumerate()
                .map(|(i, p)| (p.ident.0, i))
                .collect();
            for (i, p) in procs.iter().enumerate() {
                let mut parent = p.ppid;
                for _ in 0..64 {
                    let Some(&j) = by_pid.get(&parent) else { break };
                    membership[i] |= direct[j] & children_mask;
                    if parent == procs[j].ppid {
                        break;
                    }
                    parent = procs[j].ppid;
                }
            }
        }

        // Members known only from the cache are read now; those that vanished meanwhile leave.
        for (i, p) in procs.iter_mut().enumerate() {
            if membership[i] != 0 && !p.fresh {
                match self.read_stat_path(p.ident.0) {
                    Ok(Some(f)) if f.start == p.ident.1 => {
                        p.fresh = true;
                        p.cpu_ticks = f.cpu_ticks;
                        p.rss_pages = f.rss;
                        p.vsize = f.vsize;
                        p.threads = f.threads;
                    }
                    Ok(_) => membership[i] = 0,
                    Err(e) => {
                        if !e.is_vanished() {
                            sample.errors.push(e);
                        }
                        membership[i] = 0;
                    }
                }
            }
        }

        // Helpers among the members (a command line read once per process).
        let mut helpers = HashMap::with_capacity(self.helpers.len());
        for (i, p) in procs.iter().enumerate() {
            if membership[i] == 0 {
                continue;
            }
            let h = match self.helpers.get(&p.ident) {
                Some(h) => *h,
                None => {
                    let cl = read_cmdline(&self.proc, p.ident.0, &mut self.buf, &mut sample.errors);
                    HELPER_MARKERS.iter().any(|m| cl.contains(m))
                }
            };
            helpers.insert(p.ident, h);
        }
        self.helpers = helpers;

        let page = self.proc.page_size() as f64;
        let tps = self.proc.ticks_per_second().max(1);
        let mut fams = Families::new();
        for (ti, target) in self.targets.iter().enumerate() {
            let state = &mut self.states[ti];
            let members: Vec<&ProcInfo> = procs
                .iter()
                .zip(&membership)
                .filter(|(_, m)| *m & (1 << ti) != 0)
                .map(|(p, _)| p)
                .collect();
            let idents: HashSet<Ident> = members.iter().map(|p| p.ident).collect();
            let is_helper = |p: &ProcInfo| self.helpers.get(&p.ident).copied().unwrap_or(false);
            let workers: HashSet<Ident> = members
                .iter()
                .filter(|p| !is_helper(p))
                .map(|p| p.ident)
                .collect();
            let member_pids: HashSet<u32> = idents.iter().map(|i| i.0).collect();
            let roots: HashSet<Ident> = members
                .iter()
                .filter(|p| !is_helper(p) && !member_pids.contains(&p.ppid))
                .map(|p| p.ident)
                .collect();
            let helper_count = idents.len() - workers.len();
            for p in &members {
                let before = self
                    .known
                    .get(&p.ident.0)
                    .filter(|k| k.start == p.ident.1)
                    .map(|k| k.cpu_ticks);
                let delta = match before {
                    Some(prev) if state.members.contains(&p.ident) => {
                        p.cpu_ticks.saturating_sub(prev)
                    }
                    _ => p.cpu_ticks,
                };
                state.cpu_ticks_total += delta;
            }
            state.observe(self.cycle, workers, roots);

            let label = || [("target", target.name.clone())];
            fams.processes
                .push(label(), (members.len() - helper_count) as f64);
            fams.helpers.push(label(), helper_count as f64);
            fams.cpu
                .push(label(), state.cpu_ticks_total as f64 / tps as f64);
            fams.restarts.push(
                [("target", target.name.clone()), ("kind", "worker".into())],
                state.worker_restarts as f64,
            );
            fams.restarts.push(
                [("target", target.name.clone()), ("kind", "group".into())],
                state.group_restarts as f64,
            );
            if members.is_empty() {
                continue;
            }
            fams.rss.push(
                label(),
                members.iter().map(|p| p.rss_pages as f64 * page).sum(),
            );
            fams.vsize
                .push(label(), members.iter().map(|p| p.vsize as f64).sum());
            fams.threads
                .push(label(), members.iter().map(|p| p.threads as f64).sum());
            if let Some(boot) = self.boot_time {
                let first = members.iter().map(|p| p.ident.1).min().unwrap_or(0);
                fams.start
                    .push(label(), boot as f64 + first as f64 / tps as f64);
            }
            let (mut open, mut max, mut readable) = (0.0, 0.0, false);
            for p in &members {
                let cached = self
                    .known
                    .get(&p.ident.0)
                    .filter(|k| k.start == p.ident.1)
                    .and_then(|k| k.max_fds)
                    .filter(|(_, at)| self.cycle - at < LIMITS_EVERY)
                    .map(|(v, _)| v);
                let limit = cached.or_else(|| max_fds(&self.proc, &mut self.buf, p.ident.0));
                if let (Some(o), Some(m)) = (open_fds(&self.proc, p.ident.0), limit) {
                    open += o as f64;
                    max += m as f64;
                    readable = true;
                    if cached.is_none()
                        && let Some(k) = self
                            .known
                            .get_mut(&p.ident.0)
                            .filter(|k| k.start == p.ident.1)
                    {
                        k.max_fds = Some((m, self.cycle));
                    }
                }
            }
            if readable {
                fams.open_fds.push(label(), open);
                fams.max_fds.push(label(), max);
            }
        }

        self.remember(procs, &membership, &static_bits_of);
        sample.snapshot = fams.into_snapshot();
        sample
    }

    /// Replaces the per-pid cache with this cycle's processes; members keep a `stat` descriptor.
    fn remember(&mut self, procs: Vec<ProcInfo>, membership: &[u64], static_bits: &[u64]) {
        let mut old = std::mem::take(&mut self.known);
        self.held_fds = 0;
        for ((p, &member), &bits) in procs.into_iter().zip(membership).zip(static_bits) {
            let prev = old.remove(&p.ident.0).filter(|k| k.start == p.ident.1);
            let (mut stat, verified, max_fds, cpu) = match prev {
                Some(k) => (
                    k.stat,
                    if p.fresh { self.cycle } else { k.verified },
                    k.max_fds,
                    if p.fresh { p.cpu_ticks } else { k.cpu_ticks },
                ),
                None => (None, self.cycle, None, p.cpu_ticks),
            };
            let member = member != 0;
            if member && stat.is_none() && self.held_fds < self.fd_budget {
                stat = File::open(self.proc.path(format!("{}/stat", p.ident.0))).ok();
            }
            if !member || self.held_fds >= self.fd_budget {
                stat = None;
            }
            if stat.is_some() {
                self.held_fds += 1;
            }
            self.known.insert(
                p.ident.0,
                Known {
                    start: p.ident.1,
                    comm: p.comm,
                    ppid: p.ppid,
                    matched: Some(bits),
                    cpu_ticks: cpu,
                    member,
                    verified,
                    stat,
                    max_fds,
                },
            );
        }
    }

    fn list(&mut self, sample: &mut ProcessSample) -> Vec<ProcInfo> {
        let entries = match std::fs::read_dir(self.proc.root()) {
            Ok(e) => e,
            Err(e) => {
                sample.errors.push(ProcError::Io {
                    path: self.proc.root().to_owned(),
                    source: e,
                });
                return Vec::new();
            }
        };
        let mut procs = Vec::with_capacity(self.known.len() + 16);
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            // A member: re-read through the held descriptor. A read error there means the
            // process is gone, even if its pid was reused since.
            if let Some(k) = self.known.get_mut(&pid)
                && let Some(file) = k.stat.as_ref()
            {
                match pread_all(file, &mut self.buf)
                    .ok()
                    .and_then(|()| parse_stat(&self.buf))
                {
                    Some(f) if f.start == k.start => {
                        procs.push(f.into_info(pid, k.comm.clone(), true));
                        continue;
                    }
                    _ => {
                        self.known.remove(&pid);
                    }
                }
            } else if let Some(k) = self.known.get(&pid)
                && !k.member
                && self.cycle - k.verified < VERIFY_EVERY
            {
                procs.push(ProcInfo {
                    ident: (pid, k.start),
                    comm: k.comm.clone(),
                    ppid: k.ppid,
                    fresh: false,
                    cpu_ticks: 0,
                    rss_pages: 0,
                    vsize: 0,
                    threads: 0,
                });
                continue;
            }
            match self.read_stat_path(pid) {
                Ok(Some(f)) => {
                    let comm = f.comm.clone();
                    procs.push(f.into_info(pid, comm, true));
                }
                Ok(None) => sample.errors.push(ProcError::Parse {
                    path: self.proc.path(format!("{pid}/stat")),
                    message: "malformed".into(),
                }),
                Err(e) if e.is_vanished() => {}
                Err(e) => sample.errors.push(e),
            }
        }
        procs
    }

    fn read_stat_path(&mut self, pid: u32) -> Result<Option<StatFields>, ProcError> {
        let path = self.proc.path(format!("{pid}/stat"));
        self.proc.read_into(&path, &mut self.buf)?;
        Ok(parse_stat(&self.buf))
    }
}

/// The fields of `/proc/<pid>/stat` the process metrics need.
#[derive(Debug, Clone, PartialEq)]
struct StatFields {
    comm: String,
    ppid: u32,
    cpu_ticks: u64,
    threads: i64,
    start: u64,
    vsize: u64,
    rss: u64,
}

impl StatFields {
    fn into_info(self, pid: u32, comm: String, fresh: bool) -> ProcInfo {
        ProcInfo {
            ident: (pid, self.start),
            comm,
            ppid: self.ppid,
            fresh,
            cpu_ticks: self.cpu_ticks,
            rss_pages: self.rss,
            vsize: self.vsize,
            threads: self.threads,
        }
    }
}

/// Parses `/proc/<pid>/stat` (proc(5)): `pid (comm) state ppid ...`. The comm may hold spaces
/// and parentheses, so fields are counted from the last `)`. This runs for every process every
/// cycle, so it borrows and allocates only the comm.
fn parse_stat(buf: &[u8]) -> Option<StatFields> {
    let open = buf.iter().position(|&b| b == b'(')?;
    let close = buf.iter().rposition(|&b| b == b')')?;
    if close < open {
        return None;
    }
    let rest = std::str::from_utf8(buf.get(close + 1..)?).ok()?;
    let mut fields = [""; 22];
    let mut n = 0;
    for (slot, f) in fields.iter_mut().zip(rest.split_ascii_whitespace()) {
        *slot = f;
        n += 1;
    }
    if n < 22 {
        return None;
    }
    // After the comm: 0 state, 1 ppid, 11 utime, 12 stime, 17 num_threads, 19 starttime,
    // 20 vsize, 21 rss.
    let num = |i: usize| fields[i].parse::<u64>().ok();
    Some(StatFields {
        comm: String::from_utf8_lossy(&buf[open + 1..close]).into_owned(),
        ppid: fields[1].parse().ok()?,
        cpu_ticks: num(11)? + num(12)?,
        threads: fields[17].parse().ok()?,
        start: num(19)?,
        vsize: num(20)?,
        rss: fields[21].parse::<i64>().ok()?.max(0) as u64,
    })
}

/// Reads a whole file from offset 0 without moving a file position (proc files support pread).
fn pread_all(file: &File, buf: &mut Vec<u8>) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    buf.clear();
    buf.resize(buf.capacity().max(1024), 0);
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let n = file.read_at(&mut buf[len..], len as u64)?;
        if n == 0 {
            break;
        }
        len += n;
    }
    buf.truncate(len);
    Ok(())
}

/// Which targets' name / cmdline / cgroup criteria a process meets (read once per process).
fn static_matches(
    targets: &[TargetSpec],
    proc: &ProcFs,
    buf: &mut Vec<u8>,
    p: &ProcInfo,
    errors: &mut Vec<ProcError>,
) -> u64 {
    let pid = p.ident.0;
    let mut cmdline: Option<String> = None;
    let mut cgroup: Option<String> = None;
    let mut bits = 0;
    for (i, t) in targets.iter().enumerate() {
        if !t.has_static_criteria() {
            continue;
        }
        if let Some(want) = &t.process_name {
            // comm is cut at 15 bytes: fall back to argv[0]'s basename for longer names.
            let matches = name_matches(want, &p.comm)
                || (p.comm.len() >= 15 && {
                    let cl = cmdline.get_or_insert_with(|| read_cmdline(proc, pid, buf, errors));
                    let argv0 = cl.split(' ').next().and_then(|a| Path::new(a).file_name());
                    argv0.is_some_and(|b| name_matches(want, &b.to_string_lossy()))
                });
            if !matches {
                continue;
            }
        }
        if let Some(re) = &t.cmdline {
            let cl = cmdline.get_or_insert_with(|| read_cmdline(proc, pid, buf, errors));
            if !re.is_match(cl) {
                continue;
            }
        }
        if let Some(re) = &t.cgroup {
            let cg = cgroup.get_or_insert_with(|| read_text(proc, pid, "cgroup", buf, errors));
            if !re.is_match(cg) {
                continue;
            }
        }
        bits |= 1 << i;
    }
    bits
}

fn read_text(
    proc: &ProcFs,
    pid: u32,
    file: &str,
    buf: &mut Vec<u8>,
    errors: &mut Vec<ProcError>,
) -> String {
    match proc.read_into(&proc.path(format!("{pid}/{file}")), buf) {
        Ok(()) => String::from_utf8_lossy(buf).into_owned(),
        Err(e) => {
            if !e.is_vanished() {
                errors.push(e);
            }
            String::new()
        }
    }
}

fn read_cmdline(proc: &ProcFs, pid: u32, buf: &mut Vec<u8>, errors: &mut Vec<ProcError>) -> String {
    match proc.read_into(&proc.path(format!("{pid}/cmdline")), buf) {
        Ok(()) => {
            let s = String::from_utf8_lossy(buf);
            s.trim_end_matches('\0').replace('\0', " ")
        }
        Err(e) => {
            if !e.is_vanished() {
                errors.push(e);
            }
            String::new()
        }
    }
}

fn open_fds(proc: &ProcFs, pid: u32) -> Option<usize> {
    std::fs::read_dir(proc.path(format!("{pid}/fd")))
        .ok()
        .map(|d| d.count())
}

fn max_fds(proc: &ProcFs, buf: &mut Vec<u8>, pid: u32) -> Option<u64> {
    proc.read_into(&proc.path(format!("{pid}/limits")), buf)
        .ok()?;
    max_open_files(&String::from_utf8_lossy(buf))
}

/// The soft "Max open files" limit from `/proc/<pid>/limits` (`unlimited` as `u64::MAX`).
fn max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    if soft == "unlimited" {
        Some(u64::MAX)
    } else {
        soft.parse().ok()
    }
}

fn read_pidfile(path: &Path, errors: &mut Vec<ProcError>) -> Option<u32> {
    match std::fs::read_to_string(path) {
        Ok(s) => match s.trim().parse() {
            Ok(pid) => Some(pid),
            Err(_) => {
                errors.push(ProcError::Parse {
                    path: path.to_owned(),
                    message: format!("not a pid: {:?}", s.trim()),
                });
                None
            }
        },
        // A missing pidfile means the service is down: the target simply has no processes.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            errors.push(ProcError::Io {
                path: path.to_owned(),
                source: e,
            });
            None
        }
    }
}

/// `python` matches `python`, `python3` and `python3.11`; other names match exactly.
fn name_matches(want: &str, comm: &str) -> bool {
    comm == want
        || comm.strip_prefix(want).is_some_and(|rest| {
            !rest.is_empty() && rest.chars().all(|c| c.is_ascii_digit() || c == '.')
        })
}

struct Families {
    processes: FamilySnapshot,
    helpers: FamilySnapshot,
    cpu: FamilySnapshot,
    restarts: FamilySnapshot,
    rss: FamilySnapshot,
    vsize: FamilySnapshot,
    threads: FamilySnapshot,
    start: FamilySnapshot,
    open_fds: FamilySnapshot,
    max_fds: FamilySnapshot,
}

impl Families {
    fn new() -> Self {
        Self {
            processes: FamilySnapshot::new(
                "sidelight_target_processes",
                "Processes of the target now (master and workers; helpers not counted).",
                Kind::Gauge,
            ),
            helpers: FamilySnapshot::new(
                "sidelight_target_helper_processes",
                "Helper processes of the target that are not workers (Python multiprocessing's resource tracker, semaphore tracker, fork server).",
                Kind::Gauge,
            ),
            cpu: FamilySnapshot::new(
                "process_cpu_seconds",
                "Total user and system CPU time spent by the target's processes, in seconds.",
                Kind::Counter,
            ),
            restarts: FamilySnapshot::new(
                "sidelight_target_restarts",
                "Restarts of the target: kind=\"worker\" counts processes replaced while a root process kept running, kind=\"group\" counts times every root was replaced (a deploy or a restart of the whole service).",
                Kind::Counter,
            ),
            rss: FamilySnapshot::new(
                "process_resident_memory_bytes",
                "Resident memory size of the target's processes, in bytes.",
                Kind::Gauge,
            ),
            vsize: FamilySnapshot::new(
                "process_virtual_memory_bytes",
                "Virtual memory size of the target's processes, in bytes.",
                Kind::Gauge,
            ),
            threads: FamilySnapshot::new(
                "process_threads",
                "Threads of the target's processes.",
                Kind::Gauge,
            ),
            start: FamilySnapshot::new(
                "process_start_time_seconds",
                "Start time of the target's oldest process since the epoch, in seconds.",
                Kind::Gauge,
            ),
            open_fds: FamilySnapshot::new(
                "process_open_fds",
                "Open file descriptors of the target's processes.",
                Kind::Gauge,
            ),
            max_fds: FamilySnapshot::new(
                "process_max_fds",
                "Sum of the open file descriptor limits of the target's processes.",
                Kind::Gauge,
            ),
        }
    }

    fn into_snapshot(self) -> Snapshot {
        Snapshot {
            families: vec![
                self.processes,
                self.helpers,
                self.cpu,
                self.restarts,
                self.rss,
                self.vsize,
                self.threads,
                self.start,
                self.open_fds,
                self.max_fds,
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn value(s: &Snapshot, family: &str, target: &str) -> Option<f64> {
        s.family(family)?
            .samples
            .iter()
            .find(|x| x.labels[0].1 == target)
            .map(|x| x.value)
    }

    /// `sidelight_target_restarts{target, kind}`.
    fn restarts(s: &Snapshot, target: &str, kind: &str) -> f64 {
        s.family("sidelight_target_restarts")
            .and_then(|f| {
                f.samples
                    .iter()
                    .find(|x| x.labels[0].1 == target && x.labels[1].1 == kind)
            })
            .map_or(f64::NAN, |x| x.value)
    }

    /// A fake procfs with processes given as (pid, ppid, comm, cmdline, starttime, utime).
    struct Fake {
        dir: tempfile::TempDir,
    }

    impl Fake {
        fn new() -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            fs::write(
                dir.path().join("stat"),
                "cpu  1 1 1 1\ncpu0 1 1 1 1\nctxt 1\nbtime 1000\nprocesses 1\n",
            )
            .expect("write");
            Self { dir }
        }

        fn add(&self, pid: u32, ppid: u32, comm: &str, cmdline: &str, start: u64, utime: u64) {
            let d = self.dir.path().join(pid.to_string());
            fs::create_dir_all(d.join("fd")).expect("mkdir");
            fs::write(
                d.join("stat"),
                format!("{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 4194304 0 0 0 0 {utime} 0 0 0 20 0 3 0 {start} 1000000 25 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0"),
            )
            .expect("write");
            fs::write(d.join("comm"), format!("{comm}\n")).expect("write");
            fs::write(d.join("cmdline"), cmdline.replace(' ', "\0") + "\0").expect("write");
            fs::write(d.join("cgroup"), "0::/system.slice/app.service\n").expect("write");
            fs::write(d.join("fd/0"), "").expect("write");
            fs::write(
                d.join("limits"),
                "Limit                     Soft Limit           Hard Limit           Units     \nMax open files            1024                 4096                 files     \n",
            )
            .expect("write");
        }

        fn remove(&self, pid: u32) {
            fs::remove_dir_all(self.dir.path().join(pid.to_string())).expect("rm");
        }

        fn collector(&self, targets: Vec<TargetSpec>) -> ProcessCollector {
            ProcessCollector::new(self.dir.path(), targets)
        }
    }

    fn spec(name: &str) -> TargetSpec {
        TargetSpec {
            name: name.to_owned(),
            process_name: None,
            cmdline: None,
            pidfile: None,
            cgroup: None,
            pid: None,
            include_children: true,
        }
    }

    #[test]
    fn gunicorn_master_and_workers_are_one_target() {
        let fake = Fake::new();
        fake.add(1, 0, "init", "/sbin/init", 1, 0);
        fake.add(
            100,
            1,
            "gunicorn",
            "/venv/bin/python /venv/bin/gunicorn app:app -w 2",
            500,
            100,
        );
        fake.add(
            101,
            100,
            "gunicorn",
            "/venv/bin/python /venv/bin/gunicorn app:app -w 2",
            510,
            50,
        );
        fake.add(
            102,
            100,
            "python3",
            "python -c from multiprocessing.spawn import spawn_main",
            520,
            50,
        );
        fake.add(200, 1, "bash", "bash", 600, 7);
        let mut c = fake.collector(vec![TargetSpec {
            cmdline: Some(Regex::new("gunicorn").expect("re")),
            ..spec("web")
        }]);
        let s = c.collect().snapshot;
        assert_eq!(value(&s, "sidelight_target_processes", "web"), Some(3.0));
        let tps = rustix::param::clock_ticks_per_second() as f64;
        assert_eq!(value(&s, "process_cpu_seconds", "web"), Some(200.0 / tps));
        assert_eq!(
            value(&s, "process_resident_memory_bytes", "web"),
            Some(75.0 * rustix::param::page_size() as f64)
        );
        assert_eq!(value(&s, "process_threads", "web"), Some(9.0));
        assert_eq!(
            value(&s, "process_start_time_seconds", "web"),
            Some(1000.0 + 500.0 / tps)
        );
        assert_eq!(value(&s, "process_open_fds", "web"), Some(3.0));
        assert_eq!(value(&s, "process_max_fds", "web"), Some(3072.0));
    }

    #[test]
    fn restarts_come_from_identity_changes_and_cpu_stays_monotonic() {
        let fake = Fake::new();
        fake.add(100, 1, "python3", "python app.py", 500, 100);
        let mut c = fake.collector(vec![TargetSpec {
            process_name: Some("python".into()),
            ..spec("app")
        }]);
        let s = c.collect().snapshot;
        assert_eq!(restarts(&s, "app", "group"), 0.0);
        let cpu1 = value(&s, "process_cpu_seconds", "app").expect("cpu");

        // The process dies: no processes, the CPU counter keeps its value.
        fake.remove(100);
        let s = c.collect().snapshot;
        assert_eq!(value(&s, "sidelight_target_processes", "app"), Some(0.0));
        assert_eq!(value(&s, "process_cpu_seconds", "app"), Some(cpu1));
        assert_eq!(value(&s, "process_resident_memory_bytes", "app"), None);

        // It comes back with the same pid but a new start time: one restart of the whole group
        // (its only process is its root).
        fake.add(100, 1, "python3", "python app.py", 900, 10);
        let s = c.collect().snapshot;
        assert_eq!(restarts(&s, "app", "group"), 1.0);
        assert_eq!(restarts(&s, "app", "worker"), 0.0);
        assert!(value(&s, "process_cpu_seconds", "app").expect("cpu") > cpu1);

        // A steady process adds only its delta.
        fake.add(100, 1, "python3", "python app.py", 900, 30);
        let s = c.collect().snapshot;
        let tps = rustix::param::clock_ticks_per_second() as f64;
        assert_eq!(
            value(&s, "process_cpu_seconds", "app"),
            Some(cpu1 + 30.0 / tps)
        );
        assert_eq!(restarts(&s, "app", "group"), 1.0);
    }

    const GUNICORN: &str = "/venv/bin/python /venv/bin/gunicorn app:app -w 2";

    fn gunicorn(fake: &Fake, master: u32, workers: &[u32], start: u64) {
        fake.add(master, 1, "gunicorn", GUNICORN, start, 1);
        for (i, w) in workers.iter().enumerate() {
            fake.add(*w, master, "gunicorn", GUNICORN, start + 1 + i as u64, 1);
        }
    }

    fn web(fake: &Fake) -> ProcessCollector {
        fake.collector(vec![TargetSpec {
            cmdline: Some(Regex::new("gunicorn").expect("re")),
            ..spec("web")
        }])
    }

    #[test]
    fn a_graceful_reload_is_worker_restarts_and_a_deploy_one_group_restart() {
        let fake = Fake::new();
        gunicorn(&fake, 100, &[101, 102], 500);
        let mut c = web(&fake);
        c.collect();
        // SIGHUP: the master spawns new workers first, the old ones leave a cycle later.
        fake.add(103, 100, "gunicorn", GUNICORN, 600, 1);
        fake.add(104, 100, "gunicorn", GUNICORN, 601, 1);
        let s = c.collect().snapshot;
        assert_eq!(value(&s, "sidelight_target_processes", "web"), Some(5.0));
        assert_eq!(restarts(&s, "web", "worker"), 0.0);
        fake.remove(101);
        fake.remove(102);
        let s = c.collect().snapshot;
        assert_eq!(restarts(&s, "web", "worker"), 2.0);
        assert_eq!(restarts(&s, "web", "group"), 0.0);

        // A deploy: master and workers replaced, with a cycle in between where none runs.
        for pid in [100, 103, 104] {
            fake.remove(pid);
        }
        let s = c.collect().snapshot;
        assert_eq!(value(&s, "sidelight_target_processes", "web"), Some(0.0));
        gunicorn(&fake, 200, &[201, 202], 900);
        let s = c.collect().snapshot;
        assert_eq!(restarts(&s, "web", "group"), 1.0);
        assert_eq!(
            restarts(&s, "web", "worker"),
            2.0,
            "workers come with the group"
        );

        // The same deploy within one cycle: still one group restart.
        for pid in [200, 201, 202] {
            fake.remove(pid);
        }
        gunicorn(&fake, 300, &[301, 302, 303], 1200);
        let s = c.collect().snapshot;
        assert_eq!(restarts(&s, "web", "group"), 2.0);
        assert_eq!(restarts(&s, "web", "worker"), 2.0);
    }

    #[test]
    fn a_crash_looping_worker_counts_every_respawn_and_growth_is_no_restart() {
        let fake = Fake::new();
        gunicorn(&fake, 100, &[101, 102], 500);
        let mut c = web(&fake);
        c.collect();
        // Worker 102 dies and the master respawns it, again and again.
        let mut dead = 102;
        for i in 0..5u32 {
            fake.remove(dead);
            c.collect();
            dead = 110 + i;
            fake.add(dead, 100, "gunicorn", GUNICORN, 600 + u64::from(i), 1);
            let s = c.collect().snapshot;
            assert_eq!(restarts(&s, "web", "worker"), f64::from(i + 1));
        }
        // One more worker (TTIN) is growth; a worker leaving much later (TTOU) is shrinkage:
        // neither pairs into a restart.
        fake.add(150, 100, "gunicorn", GUNICORN, 700, 1);
        c.collect();
        for _ in 0..=PAIR_CYCLES {
            c.collect();
        }
        fake.remove(150);
        let s = c.collect().snapshot;
        assert_eq!(restarts(&s, "web", "worker"), 5.0);
        assert_eq!(restarts(&s, "web", "group"), 0.0);
    }

    #[test]
    fn multiprocessing_helpers_are_not_workers() {
        let fake = Fake::new();
        let uvicorn = "/venv/bin/python /venv/bin/uvicorn app:app --workers 2";
        fake.add(100, 1, "uvicorn", uvicorn, 500, 1);
        fake.add(
            101,
            100,
            "python3",
            "/venv/bin/python -c from multiprocessing.resource_tracker import main;main(5)",
            501,
            1,
        );
        for w in [102, 103] {
            fake.add(
                w,
                100,
                "python3",
                "/venv/bin/python -c from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=6, pipe_handle=8) --multiprocessing-fork",
                502,
                1,
            );
        }
        let mut c = fake.collector(vec![TargetSpec {
            cmdline: Some(Regex::new("uvicorn").expect("re")),
            ..spec("api")
        }]);
        let s = c.collect().snapshot;
        assert_eq!(value(&s, "sidelight_target_processes", "api"), Some(3.0));
        assert_eq!(
            value(&s, "sidelight_target_helper_processes", "api"),
            Some(1.0)
        );
        // Its resources still count towards the target.
        assert_eq!(value(&s, "process_threads", "api"), Some(12.0));
        // A new tracker replacing the old one is no restart.
        fake.remove(101);
        fake.add(
            104,
            100,
            "python3",
            "/venv/bin/python -c from multiprocessing.resource_tracker import main;main(7)",
            600,
            1,
        );
        c.collect();
        let s = c.collect().snapshot;
        assert_eq!(restarts(&s, "api", "worker"), 0.0);
        assert_eq!(restarts(&s, "api", "group"), 0.0);
    }

    #[test]
    fn pidfile_cgroup_and_all_criteria_must_match() {
        let fake = Fake::new();
        fake.add(100, 1, "python3", "python worker.py", 500, 1);
        fake.add(101, 1, "python3", "python other.py", 500, 1);
        let pidfile = fake.dir.path().join("app.pid");
        fs::write(&pidfile, "101\n").expect("write");
        let mut c = fake.collector(vec![
            TargetSpec {
                pidfile: Some(pidfile.clone()),
                ..spec("by-pidfile")
            },
            TargetSpec {
                process_name: Some("python".into()),
                cmdline: Some(Regex::new("worker").expect("re")),
                ..spec("both")
            },
            TargetSpec {
                cgroup: Some(Regex::new(r"app\.service").expect("re")),
                ..spec("unit")
            },
            TargetSpec {
                process_name: Some("node".into()),
                ..spec("none")
            },
            TargetSpec {
                pidfile: Some(fake.dir.path().join("missing.pid")),
                ..spec("down")
            },
        ]);
        let sample = c.collect();
        let s = &sample.snapshot;
        assert!(sample.errors.is_empty(), "{:?}", sample.errors);
        assert_eq!(
            value(s, "sidelight_target_processes", "by-pidfile"),
            Some(1.0)
        );
        assert_eq!(value(s, "sidelight_target_processes", "both"), Some(1.0));
        assert_eq!(value(s, "sidelight_target_processes", "unit"), Some(2.0));
        assert_eq!(value(s, "sidelight_target_processes", "none"), Some(0.0));
        assert_eq!(value(s, "sidelight_target_processes", "down"), Some(0.0));
    }

    #[test]
    fn reload_keeps_counters_of_kept_targets() {
        let fake = Fake::new();
        fake.add(100, 1, "python3", "python app.py", 500, 100);
        let mut c = fake.collector(vec![TargetSpec {
            process_name: Some("python".into()),
            ..spec("app")
        }]);
        let before = value(&c.collect().snapshot, "process_cpu_seconds", "app");
        c.reconfigure(
            fake.dir.path(),
            vec![
                TargetSpec {
                    process_name: Some("python".into()),
                    ..spec("app")
                },
                TargetSpec {
                    cmdline: Some(Regex::new("app").expect("re")),
                    ..spec("new")
                },
            ],
        );
        let s = c.collect().snapshot;
        assert_eq!(value(&s, "process_cpu_seconds", "app"), before);
        assert_eq!(value(&s, "sidelight_target_processes", "new"), Some(1.0));
    }

    #[test]
    fn lean_stat_parser_agrees_with_procfs_core_on_this_machine() {
        use procfs_core::FromRead;
        let mut checked = 0;
        for e in std::fs::read_dir("/proc").expect("proc").flatten() {
            let Ok(bytes) = std::fs::read(e.path().join("stat")) else {
                continue;
            };
            let Ok(oracle) = procfs_core::process::Stat::from_read(&bytes[..]) else {
                continue;
            };
            let ours = parse_stat(&bytes).expect("parses");
            assert_eq!(ours.comm, oracle.comm);
            assert_eq!(ours.ppid, oracle.ppid as u32);
            assert_eq!(ours.cpu_ticks, oracle.utime + oracle.stime);
            assert_eq!(ours.threads, oracle.num_threads);
            assert_eq!(ours.start, oracle.starttime);
            assert_eq!(ours.vsize, oracle.vsize);
            assert_eq!(ours.rss, oracle.rss);
            checked += 1;
        }
        assert!(checked > 0);
        // A comm with spaces and parentheses; a truncated line.
        let tricky = b"42 (a) (b c) S 1 42 42 0 -1 0 0 0 0 0 7 3 0 0 20 0 5 0 999 4096 12 0 0";
        let f = parse_stat(tricky).expect("parses");
        assert_eq!(
            (
                f.comm.as_str(),
                f.ppid,
                f.cpu_ticks,
                f.threads,
                f.start,
                f.rss
            ),
            ("a) (b c", 1, 10, 5, 999, 12)
        );
        assert_eq!(parse_stat(b"42 (x) S 1 2 3"), None);
        assert_eq!(parse_stat(b"garbage"), None);
    }

    #[test]
    fn a_pid_that_vanishes_mid_cycle_is_not_an_error() {
        let fake = Fake::new();
        fake.add(100, 1, "python3", "python app.py", 500, 1);
        // Listed by readdir, gone before its stat could be read.
        fs::create_dir_all(fake.dir.path().join("300")).expect("mkdir");
        let mut c = fake.collector(vec![TargetSpec {
            process_name: Some("python".into()),
            ..spec("app")
        }]);
        let sample = c.collect();
        assert!(sample.errors.is_empty(), "{:?}", sample.errors);
        assert_eq!(
            value(&sample.snapshot, "sidelight_target_processes", "app"),
            Some(1.0)
        );
        // A member that exits between cycles simply leaves the target.
        fake.remove(100);
        let sample = c.collect();
        assert!(sample.errors.is_empty(), "{:?}", sample.errors);
        assert_eq!(
            value(&sample.snapshot, "sidelight_target_processes", "app"),
            Some(0.0)
        );
    }

    #[test]
    fn names() {
        assert!(name_matches("python", "python3.11"));
        assert!(name_matches("python", "python"));
        assert!(!name_matches("python", "pythonista"));
        assert!(!name_matches("gunicorn", "gunicorn: worker"));
    }

    #[test]
    fn own_process_on_this_machine() {
        let mut c = ProcessCollector::new("/proc", vec![TargetSpec::own_process("sidelight")]);
        let s = c.collect().snapshot;
        assert_eq!(
            value(&s, "sidelight_target_processes", "sidelight"),
            Some(1.0)
        );
        assert!(value(&s, "process_resident_memory_bytes", "sidelight").is_some_and(|v| v > 0.0));
        assert!(value(&s, "process_open_fds", "sidelight").is_some_and(|v| v > 0.0));
    }
}
