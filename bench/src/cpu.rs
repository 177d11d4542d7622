//! Where the machine's time goes, per core, from `/proc/stat`: a core's busy share over an
//! interval, and a sampler that says, second by second, how busy the busiest core was and how
//! busy the rest (on a veth topology the receive path runs on the sending core, so one core
//! can be saturated while another idles).
use std::{
    fs,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

/// Busy and total jiffies of each core so far, by core number (idle and iowait are not busy).
pub fn jiffies() -> Vec<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").expect("/proc/stat");
    stat.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("cpu")?;
            let (n, fields) = rest.split_once(' ')?;
            let n: usize = n.parse().ok()?;
            let f: Vec<u64> = fields
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
            let total: u64 = f.iter().take(8).sum();
            Some((n, (total - f[3] - f[4], total)))
        })
        .fold(Vec::new(), |mut out, (n, v)| {
            out.resize(out.len().max(n + 1), (0, 0));
            out[n] = v;
            out
        })
}

/// Busy and total jiffies of core `cpu` so far.
pub fn core_jiffies(cpu: usize) -> (u64, u64) {
    jiffies()
        .get(cpu)
        .copied()
        .expect("the core's line in /proc/stat")
}

/// Busy share (0–1) of each core between two `jiffies` readings.
pub fn busy_between(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<f64> {
    a.iter()
        .zip(b)
        .map(|((b0, t0), (b1, t1))| {
            let total = t1.saturating_sub(*t0);
            if total == 0 {
                0.0
            } else {
                b1.saturating_sub(*b0) as f64 / total as f64
            }
        })
        .collect()
}

/// Per-second busy shares of every core, taken on a thread of its own until `stop`.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<Vec<Vec<f64>>>,
}

/// What the samples after a warm-up say: mean busy share of the busiest core of each second,
/// and mean of the others'.
#[derive(Clone, Copy, Debug, Default)]
pub struct CoreUse {
    pub busiest: f64,
    pub others: f64,
    pub seconds: usize,
}

impl Sampler {
    pub fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = thread::spawn(move || {
            let mut out = Vec::new();
            let mut last = jiffies();
            while !flag.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_secs(1));
                let now = jiffies();
                out.push(busy_between(&last, &now));
                last = now;
            }
            out
        });
        Self { stop, handle }
    }

    /// Stops sampling; the seconds after the first `skip` are summed up, but for the last one,
    /// which runs past the stop.
    pub fn finish(self, skip: usize) -> CoreUse {
        self.stop.store(true, Ordering::Relaxed);
        let mut samples = self.handle.join().expect("the CPU sampler");
        samples.pop();
        summarise(samples.get(skip..).unwrap_or_default())
    }
}

fn summarise(samples: &[Vec<f64>]) -> CoreUse {
    let mut use_ = CoreUse::default();
    for s in samples.iter().filter(|s| !s.is_empty()) {
        let busiest = s.iter().copied().fold(0.0, f64::max);
        let rest: f64 = s.iter().sum::<f64>() - busiest;
        use_.busiest += busiest;
        use_.others += if s.len() > 1 {
            rest / (s.len() - 1) as f64
        } else {
            0.0
        };
        use_.seconds += 1;
    }
    if use_.seconds > 0 {
        use_.busiest /= use_.seconds as f64;
        use_.others /= use_.seconds as f64;
    }
    use_
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busiest_core_is_taken_per_second() {
        // Core 0 saturated in the first second, core 1 in the second: the busiest core is
        // always full, the other half busy, whichever it was.
        let u = summarise(&[vec![1.0, 0.5], vec![0.5, 1.0]]);
        assert_eq!((u.busiest, u.others, u.seconds), (1.0, 0.5, 2));
        assert_eq!(summarise(&[]).seconds, 0);
    }

    #[test]
    fn busy_shares_come_from_jiffy_differences() {
        let a = [(10, 100), (0, 100)];
        let b = [(60, 200), (0, 100)];
        assert_eq!(busy_between(&a, &b), vec![0.5, 0.0]);
    }
}
