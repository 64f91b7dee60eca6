//! CPU cost of one process-collection cycle with 100 and 500 watched processes, next to a sysinfo
//! refresh of the same processes (the design's first choice), measured in one run.
//!
//! `cargo bench -p sidelight-collector --bench process_cycle`
//!
//! Spawns N idle shell processes whose command line carries a marker, watches them as one target
//! (matched by cmdline regex, as a worker pool would be) and measures thread CPU time per cycle
//! over many cycles. CPU time, not wall time: the machine is shared.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use regex::Regex;
use rustix::time::{ClockId, clock_gettime};
use sidelight_collector::process::{ProcessCollector, TargetSpec};

fn thread_cpu() -> Duration {
    let t = clock_gettime(ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

struct Kids(Vec<Child>);

impl Drop for Kids {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn(n: usize, marker: &str) -> Kids {
    let kids = (0..n)
        .map(|_| {
            // A shell blocked on `read` from a pipe we hold: one process each, the marker in
            // its command line, no CPU use.
            Command::new("sh")
                .args(["-c", "read x", marker])
                .stdin(Stdio::piped())
                .spawn()
                .expect("spawn sleep")
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    Kids(kids)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let cycles = 50;
    println!(
        "| watched | processes listed | sidelight µs/cycle (CPU) | µs per listed process | sysinfo µs/cycle (CPU) | sysinfo / sidelight |"
    );
    println!("|---|---|---|---|---|---|");
    for n in [100usize, 500] {
        let marker = format!("sidelight-bench-{n}");
        let _kids = spawn(n, &marker);
        let spec = TargetSpec {
            name: "pool".into(),
            process_name: None,
            cmdline: Some(Regex::new(&regex::escape(&marker)).expect("regex")),
            pidfile: None,
            cgroup: None,
            pid: None,
            include_children: true,
        };
        let mut collector =
            ProcessCollector::new("/proc", vec![spec, TargetSpec::own_process("sidelight")]);
        let first = collector.collect();
        let watched = first
            .snapshot
            .family("sidelight_target_processes")
            .and_then(|f| f.samples.iter().find(|s| s.labels[0].1 == "pool"))
            .map(|s| s.value)
            .unwrap_or(0.0);
        let mut ours = Vec::new();
        let mut listed = 0;
        for _ in 0..cycles {
            let t = thread_cpu();
            let s = collector.collect();
            ours.push((thread_cpu() - t).as_secs_f64() * 1e6);
            listed = s.scanned;
        }

        // sysinfo: the refresh a sysinfo-based collector needs to match by cmdline and read
        // CPU and memory of every process (tasks off, cmdline read only once per process).
        let mut sys = sysinfo::System::new().expect("sysinfo supports this platform");
        let kind = sysinfo::ProcessRefreshKind::nothing()
            .with_cpu()
            .with_memory()
            .with_cmd(sysinfo::UpdateKind::OnlyIfNotSet)
            .without_tasks();
        sys.refresh_processes_specifics(sysinfo::ProcessesToUpdate::All, true, kind);
        let mut theirs = Vec::new();
        for _ in 0..cycles {
            let t = thread_cpu();
            sys.refresh_processes_specifics(sysinfo::ProcessesToUpdate::All, true, kind);
            theirs.push((thread_cpu() - t).as_secs_f64() * 1e6);
        }
        // The floor: list /proc and read every /proc/<pid>/stat once, parsing nothing.
        let mut floor = Vec::new();
        let mut buf = Vec::with_capacity(1024);
        for _ in 0..cycles {
            let t = thread_cpu();
            for e in std::fs::read_dir("/proc").expect("proc").flatten() {
                let name = e.file_name();
                if name
                    .to_str()
                    .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
                {
                    buf.clear();
                    if let Ok(mut f) = std::fs::File::open(e.path().join("stat")) {
                        let _ = std::io::Read::read_to_end(&mut f, &mut buf);
                    }
                }
            }
            floor.push((thread_cpu() - t).as_secs_f64() * 1e6);
        }
        eprintln!(
            "floor (list + read every stat): {:.0} µs/cycle",
            median(floor)
        );
        let (o, s) = (median(ours), median(theirs));
        println!(
            "| {watched:.0} | {listed} | {o:.0} | {:.2} | {s:.0} | {:.1}× |",
            o / listed.max(1) as f64,
            s / o
        );
    }
}
