//! Host metrics under node_exporter's names and labels, so existing Node Exporter dashboards work
//! unchanged: CPU seconds by mode, memory, swap, load, filesystems, network devices, boot time.
//!
//! A [`HostCollector`] reads procfs once per collection cycle and returns a [`Snapshot`]; scrapes
//! never touch the filesystem.

use std::path::Path;

use procfs_core::process::MountInfos;
use procfs_core::{KernelStats, LoadAverage, Meminfo, net::InterfaceDeviceStatus};
use regex::Regex;

use crate::metrics::{FamilySnapshot, Kind, Snapshot};
use crate::procfs::{ProcError, ProcFs};

/// node_exporter's default `--collector.filesystem.fs-types-exclude`.
pub const DEFAULT_EXCLUDE_FSTYPES: &str = "^(autofs|binfmt_misc|bpf|cgroup2?|configfs|debugfs|devpts|devtmpfs|fusectl|hugetlbfs|iso9660|mqueue|nsfs|overlay|proc|procfs|pstore|rpc_pipefs|securityfs|selinuxfs|squashfs|sysfs|tracefs|nfsd|ramfs|efivarfs)$";
/// node_exporter's default `--collector.filesystem.mount-points-exclude`.
pub const DEFAULT_EXCLUDE_MOUNTPOINTS: &str =
    "^/(dev|proc|run/credentials/.+|sys|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)";

/// What the host source reads and which filesystems it skips.
#[derive(Debug, Clone)]
pub struct HostSettings {
    /// The procfs root.
    pub procfs: std::path::PathBuf,
    /// Filesystem types not reported.
    pub exclude_fstypes: Regex,
    /// Mount points not reported.
    pub exclude_mountpoints: Regex,
}

/// A failure of one part of a host collection; the other parts are still reported.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A procfs file could not be read or parsed.
    #[error(transparent)]
    Proc(#[from] ProcError),
    /// `statvfs` failed on a mount point.
    #[error("statvfs {mountpoint}: {source}")]
    Statvfs {
        /// The mount point.
        mountpoint: String,
        /// The cause.
        source: rustix::io::Errno,
    },
}

/// Samples the host.
#[derive(Debug)]
pub struct HostCollector {
    proc: ProcFs,
    settings: HostSettings,
}

/// The result of one host collection.
#[derive(Debug, Default)]
pub struct HostSample {
    /// The metrics.
    pub snapshot: Snapshot,
    /// Parts that failed (each already reflected by missing or error-flagged series).
    pub errors: Vec<HostError>,
}

impl HostCollector {
    /// A collector with these settings.
    pub fn new(settings: HostSettings) -> Self {
        Self {
            proc: ProcFs::new(&settings.procfs),
            settings,
        }
    }

    /// Replaces the settings (on reload).
    pub fn reconfigure(&mut self, settings: HostSettings) {
        self.proc = ProcFs::new(&settings.procfs);
        self.settings = settings;
    }

    /// Reads everything once. Blocking: run it off the async runtime.
    pub fn collect(&self) -> HostSample {
        let mut out = HostSample::default();
        let families = &mut out.snapshot.families;
        match self.proc.parse_si::<KernelStats>("stat") {
            Ok(stat) => {
                families.push(self.cpu(&stat));
                let mut boot = FamilySnapshot::new(
                    "node_boot_time_seconds",
                    "Node boot time, in unixtime.",
                    Kind::Gauge,
                );
                boot.push([], stat.btime as f64);
                families.push(boot);
            }
            Err(e) => out.errors.push(e.into()),
        }
        match self.proc.parse::<Meminfo>("meminfo") {
            Ok(mem) => families.extend(memory(&mem)),
            Err(e) => out.errors.push(e.into()),
        }
        match self.proc.parse_read::<LoadAverage>("loadavg") {
            Ok(load) => {
                for (name, help, v) in [
                    ("node_load1", "1m load average.", load.one),
                    ("node_load5", "5m load average.", load.five),
                    ("node_load15", "15m load average.", load.fifteen),
                ] {
                    let mut f = FamilySnapshot::new(name, help, Kind::Gauge);
                    f.push([], f64::from(v));
                    families.push(f);
                }
            }
            Err(e) => out.errors.push(e.into()),
        }
        match self.proc.parse_read::<procfs_core::Uptime>("uptime") {
            Ok(up) => {
                let mut f = FamilySnapshot::new(
                    "sidelight_host_uptime_seconds",
                    "Seconds since the host booted (monotonic, from /proc/uptime).",
                    Kind::Gauge,
                );
                f.push([], up.uptime);
                families.push(f);
            }
            Err(e) => out.errors.push(e.into()),
        }
        match self.proc.parse::<InterfaceDeviceStatus>("net/dev") {
            Ok(dev) => families.extend(network(&dev)),
            Err(e) => out.errors.push(e.into()),
        }
        match self.proc.parse::<MountInfos>("self/mountinfo") {
            Ok(mounts) => {
                let (fams, errs) = self.filesystems(&mounts);
                families.extend(fams);
                out.errors.extend(errs);
            }
            Err(e) => out.errors.push(e.into()),
        }
        out
    }

    fn cpu(&self, stat: &KernelStats) -> FamilySnapshot {
        let tps = self.proc.ticks_per_second().max(1) as f64;
        let mut f = FamilySnapshot::new(
            "node_cpu_seconds",
            "Seconds the CPUs spent in each mode.",
            Kind::Counter,
        );
        for (i, t) in stat.cpu_time.iter().enumerate() {
            let modes = [
                ("user", Some(t.user)),
                ("nice", Some(t.nice)),
                ("system", Some(t.system)),
                ("idle", Some(t.idle)),
                ("iowait", t.iowait),
                ("irq", t.irq),
                ("softirq", t.softirq),
                ("steal", t.steal),
            ];
            for (mode, ticks) in modes {
                if let Some(ticks) = ticks {
                    f.push(
                        [("cpu", i.to_string()), ("mode", mode.to_owned())],
                        ticks as f64 / tps,
                    );
                }
            }
        }
        f
    }

    fn filesystems(&self, mounts: &MountInfos) -> (Vec<FamilySnapshot>, Vec<HostError>) {
        let mut size = FamilySnapshot::new(
            "node_filesystem_size_bytes",
            "Filesystem size in bytes.",
            Kind::Gauge,
        );
        let mut avail = FamilySnapshot::new(
            "node_filesystem_avail_bytes",
            "Filesystem space available to non-root users in bytes.",
            Kind::Gauge,
        );
        let mut free = FamilySnapshot::new(
            "node_filesystem_free_bytes",
            "Filesystem free space in bytes.",
            Kind::Gauge,
        );
        let mut files = FamilySnapshot::new(
            "node_filesystem_files",
            "Filesystem total file nodes.",
            Kind::Gauge,
        );
        let mut files_free = FamilySnapshot::new(
            "node_filesystem_files_free",
            "Filesystem total free file nodes.",
            Kind::Gauge,
        );
        let mut readonly = FamilySnapshot::new(
            "node_filesystem_readonly",
            "Filesystem read-only status.",
            Kind::Gauge,
        );
        let mut device_error = FamilySnapshot::new(
            "node_filesystem_device_error",
            "Whether an error occurred while getting statistics for the given device.",
            Kind::Gauge,
        );
        let mut errors = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for m in mounts.iter() {
            let mountpoint = m.mount_point.to_string_lossy().into_owned();
            if self.settings.exclude_fstypes.is_match(&m.fs_type)
                || self.settings.exclude_mountpoints.is_match(&mountpoint)
                || !seen.insert(mountpoint.clone())
            {
                continue;
            }
            let device = m.mount_source.clone().unwrap_or_else(|| "none".to_owned());
            let labels = || {
                [
                    ("device", device.clone()),
                    ("fstype", m.fs_type.clone()),
                    ("mountpoint", mountpoint.clone()),
                ]
            };
            match rustix::fs::statvfs(Path::new(&m.mount_point)) {
                Ok(st) => {
                    let frsize = st.f_frsize as f64;
                    size.push(labels(), st.f_blocks as f64 * frsize);
                    avail.push(labels(), st.f_bavail as f64 * frsize);
                    free.push(labels(), st.f_bfree as f64 * frsize);
                    files.push(labels(), st.f_files as f64);
                    files_free.push(labels(), st.f_ffree as f64);
                    let ro = st.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY);
                    readonly.push(labels(), if ro { 1.0 } else { 0.0 });
                    device_error.push(labels(), 0.0);
                }
                Err(source) => {
                    device_error.push(labels(), 1.0);
                    errors.push(HostError::Statvfs {
                        mountpoint: mountpoint.clone(),
                        source,
                    });
                }
            }
        }
        (
            vec![size, avail, free, files, files_free, readonly, device_error],
            errors,
        )
    }
}

fn memory(mem: &Meminfo) -> Vec<FamilySnapshot> {
    let fields: [(&'static str, &'static str, Option<u64>); 11] = [
        (
            "node_memory_MemTotal_bytes",
            "Memory information field MemTotal_bytes.",
            Some(mem.mem_total),
        ),
        (
            "node_memory_MemFree_bytes",
            "Memory information field MemFree_bytes.",
            Some(mem.mem_free),
        ),
        (
            "node_memory_MemAvailable_bytes",
            "Memory information field MemAvailable_bytes.",
            mem.mem_available,
        ),
        (
            "node_memory_Buffers_bytes",
            "Memory information field Buffers_bytes.",
            Some(mem.buffers),
        ),
        (
            "node_memory_Cached_bytes",
            "Memory information field Cached_bytes.",
            Some(mem.cached),
        ),
        (
            "node_memory_SwapCached_bytes",
            "Memory information field SwapCached_bytes.",
            Some(mem.swap_cached),
        ),
        (
            "node_memory_SwapTotal_bytes",
            "Memory information field SwapTotal_bytes.",
            Some(mem.swap_total),
        ),
        (
            "node_memory_SwapFree_bytes",
            "Memory information field SwapFree_bytes.",
            Some(mem.swap_free),
        ),
        (
            "node_memory_Active_bytes",
            "Memory information field Active_bytes.",
            Some(mem.active),
        ),
        (
            "node_memory_Inactive_bytes",
            "Memory information field Inactive_bytes.",
            Some(mem.inactive),
        ),
        (
            "node_memory_Shmem_bytes",
            "Memory information field Shmem_bytes.",
            mem.shmem,
        ),
    ];
    fields
        .into_iter()
        .filter_map(|(name, help, v)| {
            let v = v?;
            let mut f = FamilySnapshot::new(name, help, Kind::Gauge);
            f.push([], v as f64);
            Some(f)
        })
        .collect()
}

fn network(dev: &InterfaceDeviceStatus) -> Vec<FamilySnapshot> {
    type Get = fn(&procfs_core::net::DeviceStatus) -> u64;
    let fields: [(&'static str, &'static str, Get); 8] = [
        (
            "node_network_receive_bytes",
            "Network device statistic receive_bytes.",
            |d| d.recv_bytes,
        ),
        (
            "node_network_receive_packets",
            "Network device statistic receive_packets.",
            |d| d.recv_packets,
        ),
        (
            "node_network_receive_errs",
            "Network device statistic receive_errs.",
            |d| d.recv_errs,
        ),
        (
            "node_network_receive_drop",
            "Network device statistic receive_drop.",
            |d| d.recv_drop,
        ),
        (
            "node_network_transmit_bytes",
            "Network device statistic transmit_bytes.",
            |d| d.sent_bytes,
        ),
        (
            "node_network_transmit_packets",
            "Network device statistic transmit_packets.",
            |d| d.sent_packets,
        ),
        (
            "node_network_transmit_errs",
            "Network device statistic transmit_errs.",
            |d| d.sent_errs,
        ),
        (
            "node_network_transmit_drop",
            "Network device statistic transmit_drop.",
            |d| d.sent_drop,
        ),
    ];
    let mut devices: Vec<_> = dev.0.values().collect();
    devices.sort_by(|a, b| a.name.cmp(&b.name));
    fields
        .into_iter()
        .map(|(name, help, get)| {
            let mut f = FamilySnapshot::new(name, help, Kind::Counter);
            for d in &devices {
                f.push([("device", d.name.clone())], get(d) as f64);
            }
            f
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn settings(root: &Path) -> HostSettings {
        HostSettings {
            procfs: root.to_owned(),
            exclude_fstypes: Regex::new(DEFAULT_EXCLUDE_FSTYPES).expect("regex"),
            exclude_mountpoints: Regex::new(DEFAULT_EXCLUDE_MOUNTPOINTS).expect("regex"),
        }
    }

    fn value(s: &Snapshot, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
        s.family(family)?
            .samples
            .iter()
            .find(|x| {
                labels
                    .iter()
                    .all(|(k, v)| x.labels.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|x| x.value)
    }

    #[test]
    fn fixture_tree_maps_to_node_exporter_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::create_dir_all(root.join("net")).expect("mkdir");
        fs::create_dir_all(root.join("self")).expect("mkdir");
        fs::write(
            root.join("stat"),
            "cpu  300 10 200 5000 40 0 5 0 0 0\ncpu0 150 5 100 2500 20 0 3 0 0 0\ncpu1 150 5 100 2500 20 0 2 0 0 0\nctxt 100\nbtime 1700000000\nprocesses 10\nprocs_running 1\nprocs_blocked 0\n",
        )
        .expect("write");
        fs::write(
            root.join("meminfo"),
            concat!(
                "MemTotal:       2048 kB\nMemFree:        1024 kB\nMemAvailable:   1536 kB\nBuffers:          64 kB\n",
                "Cached:          128 kB\nSwapCached:        0 kB\nActive:          100 kB\nInactive:        100 kB\n",
                "SwapTotal:       512 kB\nSwapFree:        256 kB\nDirty:             0 kB\nWriteback:         0 kB\n",
                "Mapped:           10 kB\nShmem:             8 kB\nSlab:             10 kB\nCommitted_AS:    100 kB\n",
                "VmallocTotal:   1000 kB\nVmallocUsed:      10 kB\nVmallocChunk:      0 kB\n",
            ),
        )
        .expect("write");
        fs::write(root.join("loadavg"), "0.50 0.25 0.10 1/100 4242\n").expect("write");
        fs::write(root.join("uptime"), "1234.50 2000.00\n").expect("write");
        fs::write(
            root.join("net/dev"),
            "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:    1000      10    0    0    0     0          0         0     1000      10    0    0    0     0       0          0\n  eth0:    5000      50    1    2    0     0          0         0     7000      70    3    4    0     0       0          0\n",
        )
        .expect("write");
        // One real mount (the temp dir's filesystem) and one pseudo filesystem that is excluded.
        let tmp = root.to_string_lossy();
        fs::write(
            root.join("self/mountinfo"),
            format!(
                "22 1 0:21 / /proc rw,nosuid shared:12 - proc proc rw\n30 1 8:1 / {tmp} rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
            ),
        )
        .expect("write");

        let sample = HostCollector::new(settings(root)).collect();
        assert!(sample.errors.is_empty(), "{:?}", sample.errors);
        let s = &sample.snapshot;
        let tps = rustix::param::clock_ticks_per_second() as f64;
        assert_eq!(
            value(s, "node_cpu_seconds", &[("cpu", "1"), ("mode", "idle")]),
            Some(2500.0 / tps)
        );
        assert_eq!(
            value(s, "node_cpu_seconds", &[("cpu", "0"), ("mode", "softirq")]),
            Some(3.0 / tps)
        );
        assert_eq!(
            value(s, "node_boot_time_seconds", &[]),
            Some(1_700_000_000.0)
        );
        assert_eq!(
            value(s, "node_memory_MemAvailable_bytes", &[]),
            Some(1536.0 * 1024.0)
        );
        assert_eq!(
            value(s, "node_memory_SwapFree_bytes", &[]),
            Some(256.0 * 1024.0)
        );
        assert_eq!(value(s, "node_load5", &[]), Some(0.25));
        assert_eq!(value(s, "sidelight_host_uptime_seconds", &[]), Some(1234.5));
        assert_eq!(
            value(s, "node_network_transmit_drop", &[("device", "eth0")]),
            Some(4.0)
        );
        assert_eq!(
            value(s, "node_network_receive_bytes", &[("device", "lo")]),
            Some(1000.0)
        );
        assert!(
            value(
                s,
                "node_filesystem_size_bytes",
                &[("mountpoint", &tmp), ("fstype", "ext4")]
            )
            .is_some_and(|v| v > 0.0)
        );
        assert!(value(s, "node_filesystem_size_bytes", &[("mountpoint", "/proc")]).is_none());
    }

    #[test]
    fn a_missing_file_is_an_error_but_the_rest_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("loadavg"), "1.00 2.00 3.00 1/1 1\n").expect("write");
        let sample = HostCollector::new(settings(dir.path())).collect();
        assert_eq!(value(&sample.snapshot, "node_load15", &[]), Some(3.0));
        assert!(sample.errors.len() >= 4, "{:?}", sample.errors);
    }

    #[test]
    fn reads_this_machine() {
        let sample = HostCollector::new(settings(Path::new("/proc"))).collect();
        let s = &sample.snapshot;
        assert!(
            s.family("node_cpu_seconds")
                .is_some_and(|f| !f.samples.is_empty())
        );
        assert!(value(s, "node_memory_MemTotal_bytes", &[]).is_some_and(|v| v > 0.0));
    }
}
