//! Resource use of the running servers for `kennel list`: a task samples every running
//! server's `/proc/<pid>/stat` and `/proc/<pid>/statm` every [`SAMPLE_INTERVAL`]; CPU use is
//! the difference between two samples.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::procfs::{self, Reading};

/// Time between two samples.
pub(crate) const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// Two samples closer than this give no CPU figure.
const MIN_SPAN: Duration = Duration::from_millis(200);

/// The last known resource use of one process.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Usage {
    /// Resident memory in bytes.
    pub(crate) rss: Option<u64>,
    /// CPU use in percent of one core over the last sample period.
    pub(crate) cpu: Option<f64>,
}

/// The event loop's handle on the sampler task.
#[derive(Debug)]
pub(crate) struct Sampler {
    pids: watch::Sender<Vec<u32>>,
    usage: Arc<Mutex<HashMap<u32, Usage>>>,
}

impl Sampler {
    /// Starts the sampler task; it ends when `stop` is cancelled.
    pub(crate) fn start(stop: CancellationToken) -> Sampler {
        let (pids, rx) = watch::channel(Vec::new());
        let usage = Arc::new(Mutex::new(HashMap::new()));
        tokio::spawn(sample(rx, usage.clone(), stop));
        Sampler { pids, usage }
    }

    /// The processes to sample from now on.
    pub(crate) fn set_pids(&self, mut pids: Vec<u32>) {
        pids.sort_unstable();
        self.pids.send_if_modified(|old| {
            let changed = *old != pids;
            if changed {
                *old = pids;
            }
            changed
        });
    }

    /// The last sample of `pid`.
    pub(crate) fn usage(&self, pid: u32) -> Usage {
        self.usage
            .lock()
            .map(|m| m.get(&pid).copied().unwrap_or_default())
            .unwrap_or_default()
    }
}

async fn sample(
    pids: watch::Receiver<Vec<u32>>,
    usage: Arc<Mutex<HashMap<u32, Usage>>>,
    stop: CancellationToken,
) {
    let mut last: HashMap<u32, (Reading, Instant)> = HashMap::new();
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let current = pids.borrow().clone();
        let mut next = HashMap::new();
        let mut fresh = HashMap::new();
        for pid in current {
            let Some(reading) = procfs::read_usage(pid) else {
                continue;
            };
            let cpu = last.get(&pid).and_then(|(before, at)| {
                let span = now.duration_since(*at);
                (span >= MIN_SPAN).then(|| procfs::cpu_percent(*before, reading, span))
            });
            fresh.insert(
                pid,
                Usage {
                    rss: Some(reading.rss),
                    cpu,
                },
            );
            next.insert(pid, (reading, now));
        }
        last = next;
        if let Ok(mut m) = usage.lock() {
            *m = fresh;
        }
    }
}
