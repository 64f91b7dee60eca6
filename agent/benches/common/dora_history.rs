//! The synthetic DORA history the DORA benches share: 100 services × 20 deployments a day in
//! time order (services interleaved, as a store returns history), 3 changes each, one
//! deployment in 50 a hotfix or a rollback, an incident a day per service.

use sidelight::dora::{Change, DeployStatus, Deployment, DeploymentKind, Events, Incident};

pub const DAY: i64 = 86_400;
pub const SERVICES: usize = 100;
pub const DEPLOYS_PER_DAY: i64 = 20;

/// A small deterministic generator (SplitMix64), so every run times the same data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> i64 {
        i64::try_from(self.next() % n).unwrap_or(0)
    }
}

pub fn generate(now: i64, days: i64) -> Events {
    let mut rng = Rng(42);
    let mut events = Events::default();
    let start = now - days * DAY;
    let step = DAY / DEPLOYS_PER_DAY;
    // Time order, services interleaved, as a store returns history.
    let services: Vec<String> = (0..SERVICES).map(|s| format!("service-{s:03}")).collect();
    let mut commit = vec![0_u64; SERVICES];
    for k in 0..days * DEPLOYS_PER_DAY {
        for (s, service) in services.iter().enumerate() {
            let finished_at = start + 1 + k * step + rng.below(600);
            let commits = (0..3)
                .map(|_| {
                    commit[s] += 1;
                    Change {
                        sha: format!("{s:03}{:012x}", commit[s]),
                        timestamp: finished_at - 600 - rng.below(3 * DAY as u64),
                        pr_first_commit_at: None,
                    }
                })
                .collect::<Vec<_>>();
            let kind = match rng.below(50) {
                0 => DeploymentKind::Hotfix,
                1 => DeploymentKind::Rollback,
                _ => DeploymentKind::Normal,
            };
            let id = format!("{service}-{k}");
            if k % DEPLOYS_PER_DAY == 7 {
                events.incidents.push(Incident {
                    id: format!("inc-{id}"),
                    service: service.clone(),
                    environment: "production".into(),
                    started_at: finished_at + 300,
                    resolved_at: Some(finished_at + 300 + rng.below(7200)),
                    deployment_id: Some(id.clone()),
                    commit: None,
                    resolved_by_deployment: None,
                });
            }
            events.deployments.push(Deployment {
                id,
                service: service.clone(),
                environment: "production".into(),
                version: format!("1.{k}.0"),
                commit: commits[2].sha.clone(),
                status: DeployStatus::Success,
                started_at: finished_at - 120,
                finished_at,
                commits,
                kind,
                fixes_deployment: None,
                resolves_incidents: Vec::new(),
            });
        }
    }
    events
}
