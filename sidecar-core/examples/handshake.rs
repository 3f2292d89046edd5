//! In-process handshake round trip through the product's own code: start
//! flag written ([`ExecutorFlags`]) -> seen and driven by the sidecar side
//! ([`protocol::drive`] over [`FileFlags`], a no-op runner, on a tokio
//! runtime) -> done flag seen and parsed. One process, two threads, so a
//! profiler sees both sides at once; `executor-shim bench` measures the
//! same code across two processes.
//!
//! `cargo run --release -p sidecar-core --example handshake -- [DIR] [N]`
//! (DIR defaults to a fresh directory under /dev/shm, N to 5000).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sidecar_core::files::{ExecutorFlags, FileFlags, Stop, TaskFiles};
use sidecar_core::protocol::{self, NoopRunner};
use sidecar_core::wait::{WaitError, Watch, WatchConfig};
use sidecar_core::{TaskId, TaskSpec, Volume};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The sidecar side: drives tasks `0..n` as their directories appear.
fn sidecar(volume: Volume, n: u64) -> Result<(), Error> {
    let watch = Arc::new(Watch::new(WatchConfig::default())?);
    watch.add(&volume.tasks_dir())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        for p in 0..n {
            let id = TaskId::for_attempt(p, 0, "");
            let task = volume.task(&id);
            let root = task.root().to_owned();
            watch
                .wait_until_async("task directory", None, || {
                    Ok::<_, WaitError>(root.is_dir().then_some(()))
                })
                .await?;
            // Armed before the flags are looked at: nothing is missed.
            watch.add(&root)?;
            let flags = FileFlags::new(TaskFiles::serve(&task), Arc::clone(&watch), Stop::never());
            protocol::drive(&id, &flags, &NoopRunner, &flags).await?;
        }
        Ok(())
    })
}

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let base = args.next().map(PathBuf::from).unwrap_or_else(|| {
        if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        }
    });
    let n: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(5000);
    let dir = tempfile::tempdir_in(&base)?;
    let volume = Volume::new(dir.path());
    std::fs::create_dir_all(volume.tasks_dir())?;
    let peer = {
        let volume = volume.clone();
        std::thread::spawn(move || sidecar(volume, n))
    };
    let watch = Watch::new(WatchConfig::default())?;
    let mut samples = Vec::with_capacity(n as usize);
    for p in 0..n {
        let task = volume.task(&TaskId::for_attempt(p, 0, ""));
        std::fs::create_dir(task.root())?;
        watch.add(task.root())?;
        let flags = ExecutorFlags::new(task.clone());
        let t0 = Instant::now();
        flags.start(&TaskSpec::default())?;
        let deadline = Some(t0 + Duration::from_secs(10));
        watch.wait_until("done_flag", deadline, || flags.outcome())?;
        samples.push(t0.elapsed());
        watch.remove(task.root());
        flags.close()?;
    }
    peer.join().map_err(|_| "the sidecar thread panicked")??;
    samples.sort();
    let q = |f: f64| samples[((samples.len() - 1) as f64 * f) as usize].as_secs_f64() * 1e6;
    println!(
        "in-process handshake on {}: n={n} p50={:.1}us p99={:.1}us max={:.1}us",
        base.display(),
        q(0.5),
        q(0.99),
        q(1.0)
    );
    Ok(())
}
