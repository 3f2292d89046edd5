//! `probe`: exits 0 only when the volume's sidecar is ready and its
//! heartbeat is fresh. Made for Kubernetes' exec `startupProbe` and
//! `livenessProbe`, in images without a shell (`FROM scratch`).
//!
//! ## What "fresh" means for a one-shot process
//!
//! The protocol's own liveness rule ([`sidecar_core::liveness::Monitor`])
//! judges a pulse by when its *content* last changed on the reader's clock,
//! so that two machines' clocks never need to agree. A probe cannot use it
//! as is: it lives for one look, and watching the file for a change would
//! cost up to a heartbeat interval (500 ms by default, more with a longer
//! `--heartbeat`) on every successful probe, against the kubelet's default
//! one-second probe timeout.
//!
//! So the probe compares the pulse's `at` timestamp with its own clock. The
//! kubelet runs an exec probe inside the sidecar's own container: writer and
//! reader read the same kernel's `CLOCK_REALTIME` (time namespaces do not
//! virtualise it), so there is no skew to fear. A step of the wall clock
//! (NTP) can make one probe wrong in either direction; the sidecar rewrites
//! the pulse with the new clock within one heartbeat interval, and the
//! template's probes act only after several consecutive failures. A pulse
//! more than `--max-age` in the future is refused (the clocks do disagree:
//! the probe runs somewhere it should not).
//!
//! The probe also requires that the heartbeat and `sidecar/ready` were
//! written by the same process: a ready record left by an earlier sidecar
//! beside the pulse of a new one (or the reverse) is not "this sidecar".
//!
//! It never writes to the volume, never follows a link in any component,
//! never blocks on a FIFO planted under a flag's name
//! ([`read_flag_beneath`]), and starts no runtime: its latency is a few
//! file reads.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sidecar_core::layout::{resolve_volume, Volume};
use sidecar_core::liveness::Pulse;
use sidecar_core::record::{read_flag_beneath, Ready, RecordError};

use crate::cli::ProbeArgs;
use crate::End;

/// What a passing probe saw.
#[derive(Debug, Clone, PartialEq)]
pub struct Healthy {
    pub pid: u32,
    pub parallelism: u32,
    /// How old the last heartbeat is, on this clock.
    pub age: Duration,
}

/// Why the probe failed; the message is the one line the probe prints.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Unhealthy {
    #[error("{}: the volume does not exist or is not a directory (use --volume, $SIDECAR_VOLUME or $SHARED_DIR)", path.display())]
    NoVolume { path: PathBuf },
    #[error("not ready: {} does not exist yet (the sidecar is starting, or is not in --mode serve)", path.display())]
    NotReady { path: PathBuf },
    #[error("not ready: {0}")]
    BadReady(#[source] RecordError),
    #[error("no heartbeat: {} does not exist", path.display())]
    NoHeartbeat { path: PathBuf },
    #[error("no heartbeat: {0}")]
    BadHeartbeat(#[source] RecordError),
    #[error(
        "not this sidecar: sidecar/ready was written by pid {ready}, the heartbeat by pid {beat}"
    )]
    OtherProcess { ready: u32, beat: u32 },
    #[error("heartbeat stale: the last beat is {} old, over --max-age {}", fmt(*age), fmt(*max_age))]
    Stale { age: Duration, max_age: Duration },
    #[error("heartbeat from the future: {} ahead of this clock, over --max-age {} (run the probe in the sidecar's container)", fmt(*ahead), fmt(*max_age))]
    Future { ahead: Duration, max_age: Duration },
}

fn fmt(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64))
}

/// `sidecar-entrypoint probe`: one line on stdout when healthy, one line on
/// stderr saying why not otherwise.
pub fn run(args: &ProbeArgs) -> End {
    let volume = Volume::new(resolve_volume(args.volume.as_deref()));
    match probe(&volume, SystemTime::now(), args.max_age) {
        Ok(h) => {
            // A closed or broken stdout must not turn a verdict into a panic.
            let _ = writeln!(
                std::io::stdout(),
                "ready: pid {}, parallelism {}, heartbeat {} old",
                h.pid,
                h.parallelism,
                fmt(h.age)
            );
            End::Success
        }
        Err(why) => {
            let _ = writeln!(std::io::stderr(), "sidecar-entrypoint probe: {why}");
            End::Unhealthy
        }
    }
}

/// Reads the ready record and the heartbeat of `volume` and judges them at
/// `now`.
pub fn probe(volume: &Volume, now: SystemTime, max_age: Duration) -> Result<Healthy, Unhealthy> {
    if !volume.root().is_dir() {
        return Err(Unhealthy::NoVolume {
            path: volume.root().to_owned(),
        });
    }
    // From the volume root, never through a link (`sidecar/` included).
    let beneath = volume.beneath();
    let path = volume.ready();
    let bytes =
        read_flag_beneath(&beneath, &path, "ready record").map_err(|e| missing_or(e, &path))?;
    let ready = Ready::parse(&bytes, &path).map_err(Unhealthy::BadReady)?;
    let path = volume.heartbeat();
    let bytes = read_flag_beneath(&beneath, &path, "heartbeat").map_err(|e| match e {
        RecordError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            Unhealthy::NoHeartbeat { path: path.clone() }
        }
        other => Unhealthy::BadHeartbeat(other),
    })?;
    let pulse: Pulse = serde_json::from_slice(&bytes).map_err(|source| {
        Unhealthy::BadHeartbeat(RecordError::Malformed {
            path: path.clone(),
            what: "heartbeat",
            source,
        })
    })?;
    judge(&ready, &pulse, now, max_age)
}

/// A missing ready record is "not ready yet"; anything else is broken.
fn missing_or(e: RecordError, path: &Path) -> Unhealthy {
    match e {
        RecordError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            Unhealthy::NotReady {
                path: path.to_owned(),
            }
        }
        other => Unhealthy::BadReady(other),
    }
}

/// The pure rule: the same process wrote both, and its last beat is at
/// most `max_age` old on this clock (and not more than `max_age` ahead).
pub fn judge(
    ready: &Ready,
    pulse: &Pulse,
    now: SystemTime,
    max_age: Duration,
) -> Result<Healthy, Unhealthy> {
    if ready.pid != pulse.pid {
        return Err(Unhealthy::OtherProcess {
            ready: ready.pid,
            beat: pulse.pid,
        });
    }
    let age = match now.duration_since(pulse.at.0) {
        Ok(age) if age > max_age => return Err(Unhealthy::Stale { age, max_age }),
        Ok(age) => age,
        Err(ahead) if ahead.duration() > max_age => {
            return Err(Unhealthy::Future {
                ahead: ahead.duration(),
                max_age,
            })
        }
        Err(_) => Duration::ZERO,
    };
    Ok(Healthy {
        pid: ready.pid,
        parallelism: ready.parallelism,
        age,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sidecar_core::record::Timestamp;

    const MAX: Duration = Duration::from_secs(5);

    fn at(t: SystemTime) -> (Ready, Pulse) {
        let ready = Ready {
            protocol: 1,
            version: "0".into(),
            pid: 1,
            parallelism: 2,
            started_at: Timestamp(t),
        };
        let pulse = Pulse {
            seq: 3,
            pid: 1,
            at: Timestamp(t),
        };
        (ready, pulse)
    }

    #[test]
    fn fresh_within_the_bound_and_stale_past_it() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let (ready, pulse) = at(t);
        let h = judge(&ready, &pulse, t + MAX, MAX).unwrap();
        assert_eq!(h.age, MAX);
        assert_eq!(h.parallelism, 2);
        let e = judge(&ready, &pulse, t + MAX + Duration::from_millis(1), MAX).unwrap_err();
        assert!(matches!(e, Unhealthy::Stale { .. }), "{e}");
        assert!(e.to_string().contains("over --max-age 5s"), "{e}");
    }

    #[test]
    fn a_little_ahead_is_fresh_far_ahead_is_refused() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let (ready, pulse) = at(t + Duration::from_secs(1));
        assert_eq!(judge(&ready, &pulse, t, MAX).unwrap().age, Duration::ZERO);
        let (ready, pulse) = at(t + Duration::from_secs(60));
        let e = judge(&ready, &pulse, t, MAX).unwrap_err();
        assert!(e.to_string().contains("from the future"), "{e}");
    }

    #[test]
    fn heartbeat_of_another_process_is_not_this_sidecar() {
        let t = SystemTime::now();
        let (ready, mut pulse) = at(t);
        pulse.pid = 42;
        let e = judge(&ready, &pulse, t, MAX).unwrap_err();
        assert_eq!(
            e.to_string(),
            "not this sidecar: sidecar/ready was written by pid 1, the heartbeat by pid 42"
        );
    }
}
