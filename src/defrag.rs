//! Defragmentation of every etcd member, one after another, as upstream's
//! `--defragmentation-schedule` does: deleted and compacted keys leave free
//! pages in etcd's database file that only `Maintenance/Defragment` gives
//! back to the file system.

use crate::etcd::{Client, EtcdConfig};
use log::{info, warn};
use std::time::{Duration, Instant};

/// When and how to defragment.
#[derive(Debug, Clone)]
pub struct Options {
    pub schedule: crate::cron::Schedule,
    /// Bound for one member's `Defragment` call (`--etcd-defrag-timeout`).
    pub timeout: Duration,
    /// Where the member list is asked for: `--service-endpoints` when
    /// given (a service that reaches any member), else `--endpoints`.
    pub cluster: EtcdConfig,
}

/// What one member's defragmentation did.
#[derive(Debug, Clone, PartialEq)]
pub struct Defragmented {
    pub member: String,
    pub endpoint: String,
    /// Database file size and bytes in use, before and after.
    pub before: (i64, i64),
    pub after: (i64, i64),
    pub seconds: f64,
}

/// Defragment every voting member, the leader last (as upstream and etcd's
/// own guidance do: the leader's pause stalls the whole cluster). Stops at
/// the first member that fails, so a sick cluster is not made sicker.
pub fn defragment_cluster(etcd: &EtcdConfig, opts: &Options) -> anyhow::Result<Vec<Defragmented>> {
    let mut client = Client::connect(&opts.cluster)?;
    let leader = client.status()?.leader;
    let mut members: Vec<_> =
        client.member_list()?.into_iter().filter(|m| !m.is_learner && !m.client_urls.is_empty()).collect();
    anyhow::ensure!(!members.is_empty(), "etcd at {} lists no member with a client URL", client.endpoint());
    members.sort_by_key(|m| m.id == leader);
    let mut done = Vec::new();
    for m in members {
        // The member's own URLs, with the connection's TLS and credentials.
        let cfg = EtcdConfig { endpoints: m.client_urls.clone(), ..etcd.clone() };
        let mut member = Client::connect(&cfg)?;
        let before = member.status()?;
        let started = Instant::now();
        member.defragment(opts.timeout)?;
        let seconds = started.elapsed().as_secs_f64();
        let after = member.status()?;
        let d = Defragmented {
            member: m.name.clone(),
            endpoint: member.endpoint().to_string(),
            before: (before.db_size, before.db_size_in_use),
            after: (after.db_size, after.db_size_in_use),
            seconds,
        };
        info!(
            "Defragmented etcd member {} at {} in {:.2}s: database {} (in use {}) before, {} (in use {}) after",
            d.member,
            d.endpoint,
            d.seconds,
            mib(d.before.0),
            mib(d.before.1),
            mib(d.after.0),
            mib(d.after.1)
        );
        done.push(d);
    }
    Ok(done)
}

/// One defragmentation of the cluster, logged; `None` when a member failed.
pub fn run_once(etcd: &EtcdConfig, opts: &Options) -> Option<Vec<Defragmented>> {
    info!("Starting the scheduled defragmentation of every etcd member");
    defragment_cluster(etcd, opts).map_err(|e| warn!("Defragmentation failed: {e:#}")).ok()
}

fn mib(bytes: i64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1 << 20) as f64)
}
