//! In-process handshake round trip: start flag written -> done flag seen,
//! through the in-process sidecar of the real protocol code... kept minimal:
//! one sidecar thread with its own `Watch`, one executor thread with another.
//!
//! `cargo run --release -p sidecar-core --example handshake -- [DIR] [N]`
//! (DIR defaults to a fresh directory under /dev/shm, N to 5000).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sidecar_core::record::{read_flag, Outcome, TaskSpec};
use sidecar_core::wait::{Watch, WatchConfig};
use sidecar_core::{atomic, Status, TaskId, Timestamp, Volume};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let base = args.next().map(PathBuf::from).unwrap_or_else(|| {
        if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        }
    });
    let n: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(5000);
    let dir = tempfile::tempdir_in(&base)?;
    let volume = Volume::new(dir.path());
    std::fs::create_dir_all(volume.tasks_dir())?;

    let stop = Arc::new(AtomicBool::new(false));
    let sidecar = {
        let (volume, stop) = (volume.clone(), Arc::clone(&stop));
        std::thread::spawn(move || -> Result<(), String> {
            let watch = Watch::new(WatchConfig::default()).map_err(|e| e.to_string())?;
            watch
                .add(&volume.tasks_dir(), false)
                .map_err(|e| e.to_string())?;
            let mut next = 0u64;
            let mut watched = false;
            while !stop.load(Ordering::SeqCst) {
                let id = TaskId::for_attempt(next, 0, "");
                let task = volume.task(&id);
                let start = task.start_flag();
                let seen = watch.generation();
                // A new task directory gets its own watch, and its start flag
                // is checked only once the watch is in place: a flag renamed
                // in before that gives no event.
                if !watched && task.root().is_dir() {
                    watch.add(task.root(), false).map_err(|e| e.to_string())?;
                    watched = true;
                    continue;
                }
                if start.exists() {
                    let bytes = read_flag(&start, "spec").map_err(|e| e.to_string())?;
                    TaskSpec::parse(&bytes, &start).map_err(|e| e.to_string())?;
                    let o = Outcome::new(id.as_str(), Status::Succeeded, Timestamp::now());
                    let json = serde_json::to_vec(&o).map_err(|e| e.to_string())?;
                    atomic::write_atomic(&task.done_flag(), &json, Default::default())
                        .map_err(|e| e.to_string())?;
                    watch.remove(task.root());
                    watched = false;
                    next += 1;
                    continue;
                }
                watch.wait_changed(seen, Duration::from_millis(100));
            }
            Ok(())
        })
    };

    let watch = Watch::new(WatchConfig::default())?;
    let mut samples = Vec::with_capacity(n);
    for p in 0..n as u64 {
        let id = TaskId::for_attempt(p, 0, "");
        let task = volume.task(&id);
        std::fs::create_dir(task.root())?;
        watch.add(task.root(), false)?;
        let done = task.done_flag();
        let t0 = Instant::now();
        atomic::write_atomic(&task.start_flag(), b"{}", Default::default())?;
        watch.wait_until(
            "done_flag",
            Some(Instant::now() + Duration::from_secs(10)),
            || Ok::<_, sidecar_core::wait::WaitError>(done.exists().then_some(())),
        )?;
        samples.push(t0.elapsed());
        watch.remove(task.root());
        std::fs::remove_dir_all(task.root())?;
    }
    stop.store(true, Ordering::SeqCst);
    sidecar.join().map_err(|_| "sidecar thread panicked")??;
    samples.sort();
    let q = |f: f64| samples[((samples.len() - 1) as f64 * f) as usize].as_secs_f64() * 1e6;
    println!(
        "in-process handshake on {}: n={} p50={:.1}us p99={:.1}us max={:.1}us",
        base.display(),
        n,
        q(0.5),
        q(0.99),
        q(1.0)
    );
    Ok(())
}
