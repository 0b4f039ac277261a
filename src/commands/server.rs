//! `server`: the long-running `snapshot` plus upstream's HTTP API, each on
//! its own threads; SIGTERM stops both (the snapshotter after its final
//! delta snapshot).

use crate::endpoint::Backend;
use crate::flags::hiargs::ServerConfig;
use crate::record::Recorder;
use crate::{continuous, server};

pub fn run(cfg: &ServerConfig) -> i32 {
    let snap = &cfg.snapshot;
    let Some(settings) = &snap.scheduled else { return crate::exit::USAGE };
    let listener = match server::bind(&cfg.http) {
        Ok(l) => l,
        Err(e) => {
            log::error!("{e:#}");
            return crate::exit::USAGE;
        }
    };
    let endpoints = match super::open(&snap.endpoints) {
        Ok(e) => e,
        Err(code) => return code,
    };
    // Counters go on from the metrics file before /metrics shows them.
    if let Err(e) = snap.job.metrics.model.load() {
        log::warn!("Cannot read the metrics file back ({e}); its counters start again");
    }
    let prefixes = snap
        .endpoints
        .iter()
        .map(|c| {
            let prefix = match &c.backend {
                Backend::S3(s3) => &s3.prefix,
                Backend::Local { prefix, .. } => prefix,
            };
            (c.role, if prefix.is_empty() { "v2".to_string() } else { format!("{prefix}/v2") })
        })
        .collect();
    let control = continuous::Control::default();
    let api = server::Api {
        control: &control,
        endpoints: &endpoints,
        metrics: &snap.job.metrics.model,
        deltas: settings.delta_period.is_some(),
        prefixes,
        request_timeout: cfg.http.request_timeout,
        latest: Default::default(),
    };
    let recorder = Recorder::start(&snap.job.etcd, &endpoints);
    let code = std::thread::scope(|scope| {
        scope.spawn(|| listener.serve(&api));
        continuous::run_controlled(&snap.job, &endpoints, settings, &recorder, &control)
    });
    recorder.finish(snap.job.etcd.snapshot_timeout.min(super::snapshot::RECORD_WAIT));
    code
}
