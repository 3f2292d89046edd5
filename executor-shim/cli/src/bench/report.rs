//! What one bench run measured, as a table for people and one JSON line
//! for scripts (the keys of earlier versions are kept; new ones are added).

use std::path::PathBuf;

use serde_json::{json, Map, Value};

use super::stats::{mb_s, median, ratio, Samples, Spread};
use super::throughput::{RawCopy, Throughput};

/// One figure's rounds: ours and the baseline's, interleaved in time.
#[derive(Debug, Clone, Default)]
pub struct Paired<T> {
    pub ours: Vec<T>,
    pub base: Vec<T>,
}

/// Everything one run measured.
#[derive(Debug, Default)]
pub struct Report {
    pub volume: PathBuf,
    pub fs: String,
    pub rounds: usize,
    pub handshake: Paired<Samples>,
    pub poll: Samples,
    pub overhead: Paired<Samples>,
    /// `--parallel c` -> tasks per second, per round.
    pub load: Vec<(u32, Paired<f64>)>,
    /// Idle task directories present -> per-task overhead, per round.
    pub growth: Vec<(usize, Vec<Samples>)>,
    pub bytes: u64,
    pub file: Vec<Throughput>,
    pub stream: Vec<Throughput>,
    pub raw: Vec<RawCopy>,
}

/// One line of the table.
struct Row {
    key: &'static str,
    figure: String,
    ours: String,
    baseline: String,
    ratio: String,
    target: &'static str,
    met: Option<bool>,
}

pub fn us(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1} ms", v / 1000.0)
    } else {
        format!("{v:.0} µs")
    }
}

fn p50s(rounds: &[Samples]) -> Vec<f64> {
    rounds.iter().map(Samples::p50).collect()
}

impl Report {
    fn handshake_ratio(&self) -> Spread {
        Spread::ratios(&p50s(&self.handshake.ours), &p50s(&self.handshake.base))
    }
    fn overhead_ratio(&self) -> Spread {
        Spread::ratios(&p50s(&self.overhead.ours), &p50s(&self.overhead.base))
    }
    fn overhead_p99_ratio(&self) -> f64 {
        let o = &self.overhead;
        ratio(
            Samples::pooled(&o.ours).p99(),
            Samples::pooled(&o.base).p99(),
        )
    }
    fn raw_mb_s(&self) -> Vec<f64> {
        self.raw.iter().map(RawCopy::mb_s).collect()
    }
    fn mode_ratio(&self, mode: &[Throughput]) -> Spread {
        let ours: Vec<f64> = mode.iter().map(Throughput::mb_s).collect();
        Spread::ratios(&ours, &self.raw_mb_s())
    }
    fn growth_ratio(&self, dirs: usize) -> Option<Spread> {
        let base = &self.growth.first()?.1;
        let this = &self.growth.iter().find(|(d, _)| *d == dirs)?.1;
        Some(Spread::ratios(&p50s(this), &p50s(base)))
    }
    pub fn peak_rss_mib(&self) -> f64 {
        let all = self.file.iter().chain(&self.stream);
        all.map(|t| t.peak_rss_kib).max().unwrap_or(0) as f64 / 1024.0
    }

    fn latency_rows(&self) -> Vec<Row> {
        let hs = Samples::pooled(&self.handshake.ours);
        let raw = Samples::pooled(&self.handshake.base);
        let over = Samples::pooled(&self.overhead.ours);
        let spawn = Samples::pooled(&self.overhead.base);
        let (h, o) = (self.handshake_ratio(), self.overhead_ratio());
        let p99r = self.overhead_p99_ratio();
        vec![
            Row {
                key: "handshake_p50",
                figure: format!("handshake p50 ({} round trips)", hs.len()),
                ours: us(hs.p50()),
                baseline: format!("{} bare inotify", us(raw.p50())),
                ratio: h.shown(),
                target: "<= 3x",
                met: Some(h.median <= 3.0),
            },
            Row {
                key: "handshake_p99",
                figure: "handshake p99".into(),
                ours: us(hs.p99()),
                baseline: format!("{} bare inotify", us(raw.p99())),
                ratio: format!("{:.1}x", ratio(hs.p99(), raw.p99())),
                target: "<= 500 µs",
                met: Some(hs.p99() <= 500.0),
            },
            Row {
                key: "poll",
                figure: format!("handshake p50 vs polling ({} round trips)", self.poll.len()),
                ours: us(hs.p50()),
                baseline: format!("{} polling 1 ms", us(self.poll.p50())),
                ratio: format!("{:.2}x", ratio(hs.p50(), self.poll.p50())),
                target: "-",
                met: None,
            },
            Row {
                key: "task_overhead",
                figure: format!("per-task overhead p50 ({} tasks, `true`)", over.len()),
                ours: us(over.p50()),
                baseline: format!("{} bare spawn", us(spawn.p50())),
                ratio: o.shown(),
                target: "<= 2x",
                met: Some(o.median <= 2.0),
            },
            Row {
                key: "task_overhead_p99",
                figure: "per-task overhead p99".into(),
                ours: us(over.p99()),
                baseline: format!("{} bare spawn", us(spawn.p99())),
                ratio: format!("{p99r:.1}x"),
                target: "<= 3x",
                met: Some(p99r <= 3.0),
            },
        ]
    }

    fn load_rows(&self) -> Vec<Row> {
        let keys = ["load_p1", "load_p2", "load_p8", "load"];
        self.load
            .iter()
            .enumerate()
            .map(|(i, (c, p))| {
                let s = Spread::ratios(&p.ours, &p.base);
                Row {
                    key: keys[i.min(3)],
                    figure: format!("tasks/s at --parallel {c}, {c} threads"),
                    ours: format!("{:.0}/s", median(&p.ours)),
                    baseline: format!("{:.0}/s bare spawn", median(&p.base)),
                    ratio: s.shown(),
                    target: ">= 0.5x",
                    met: Some(s.median >= 0.5),
                }
            })
            .collect()
    }

    fn growth_rows(&self) -> Vec<Row> {
        let Some((first, base)) = self.growth.first() else {
            return Vec::new();
        };
        let base_p50 = Samples::pooled(base).p50();
        self.growth
            .iter()
            .skip(1)
            .map(|(dirs, rounds)| {
                let s = self.growth_ratio(*dirs).unwrap_or_default();
                Row {
                    key: if *dirs >= 10_000 {
                        "growth"
                    } else {
                        "growth_mid"
                    },
                    figure: format!("per-task overhead p50, {dirs} task dirs present"),
                    ours: us(Samples::pooled(rounds).p50()),
                    baseline: format!("{} with {first}", us(base_p50)),
                    ratio: s.shown(),
                    target: if *dirs >= 10_000 { "<= 1.5x" } else { "-" },
                    met: (*dirs >= 10_000).then_some(s.median <= 1.5),
                }
            })
            .collect()
    }

    fn throughput_rows(&self) -> Vec<Row> {
        let raw = median(&self.raw_mb_s());
        let (f, st) = (self.mode_ratio(&self.file), self.mode_ratio(&self.stream));
        let mb = |m: &[Throughput]| median(&m.iter().map(Throughput::mb_s).collect::<Vec<_>>());
        let rss = self.peak_rss_mib();
        let gib = self.bytes >= (1 << 30);
        vec![
            Row {
                key: "file_mode",
                figure: format!("file mode ({}, cat)", human_bytes(self.bytes)),
                ours: format!("{:.0} MB/s", mb(&self.file)),
                baseline: format!("{raw:.0} MB/s write+cp+read"),
                ratio: f.shown(),
                target: ">= 0.9x every round",
                met: Some(f.min >= 0.9),
            },
            Row {
                key: "stream_mode",
                figure: format!("stream mode ({}, cat)", human_bytes(self.bytes)),
                ours: format!("{:.0} MB/s", mb(&self.stream)),
                baseline: format!("{raw:.0} MB/s write+cp+read"),
                ratio: st.shown(),
                target: ">= 1.2x every round",
                met: Some(st.min >= 1.2),
            },
            Row {
                key: "shim_peak_rss",
                figure: "shim peak RSS (throughput)".into(),
                ours: format!("{rss:.1} MiB"),
                baseline: "-".into(),
                ratio: "-".into(),
                target: if gib {
                    "< 128 MiB"
                } else {
                    "< 128 MiB at 1 GiB"
                },
                met: gib.then_some(rss < 128.0),
            },
        ]
    }

    fn rows(&self) -> Vec<Row> {
        let mut rows = self.latency_rows();
        rows.extend(self.load_rows());
        rows.extend(self.growth_rows());
        rows.extend(self.throughput_rows());
        rows
    }

    /// The table: one line per figure, the ratio as the median of the
    /// rounds with their spread.
    pub fn table(&self) -> String {
        let header = [
            "figure",
            "ours",
            "baseline",
            "ratio (spread)",
            "target",
            "met?",
        ];
        let rows: Vec<[String; 6]> = self
            .rows()
            .into_iter()
            .map(|r| {
                let met = match r.met {
                    Some(true) => "yes",
                    Some(false) => "NO",
                    None => "-",
                };
                [
                    r.figure,
                    r.ours,
                    r.baseline,
                    r.ratio,
                    r.target.into(),
                    met.into(),
                ]
            })
            .collect();
        let mut width = header.map(|h| h.chars().count());
        for r in &rows {
            for (w, c) in width.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let cells: Vec<String> = cells
                .iter()
                .zip(width)
                .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
                .collect();
            cells.join(" | ").trim_end().to_owned() + "\n"
        };
        let mut out = format!(
            "executor-shim bench on {} ({}), {} interleaved rounds\n\n",
            self.volume.display(),
            self.fs,
            self.rounds
        );
        out.push_str(&line(&header.map(String::from)));
        let rule: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
        out.push_str(&line(&rule).replace(" | ", "-|-"));
        for r in &rows {
            out.push_str(&line(r));
        }
        out
    }

    /// The JSON line: the keys of earlier versions, then the new ones.
    pub fn json(&self) -> Value {
        let mut v = self.latency_json();
        let extend = |v: &mut Value, more: Value| {
            if let (Value::Object(a), Value::Object(b)) = (v, more) {
                a.extend(b);
            }
        };
        extend(&mut v, self.throughput_json());
        extend(&mut v, self.load_growth_json());
        let met: Map<String, Value> = self
            .rows()
            .iter()
            .filter_map(|r| r.met.map(|m| (r.key.to_owned(), m.into())))
            .collect();
        extend(&mut v, json!({ "targets_met": met }));
        v
    }

    fn latency_json(&self) -> Value {
        let hs = Samples::pooled(&self.handshake.ours);
        let raw = Samples::pooled(&self.handshake.base);
        let over = Samples::pooled(&self.overhead.ours);
        let spawn = Samples::pooled(&self.overhead.base);
        let (h, o) = (self.handshake_ratio(), self.overhead_ratio());
        json!({
            "handshake_p50_us": hs.p50(),
            "handshake_p99_us": hs.p99(),
            "inotify_raw_p50_us": raw.p50(),
            "inotify_raw_p99_us": raw.p99(),
            "poll_p50_us": self.poll.p50(),
            "poll_p99_us": self.poll.p99(),
            "handshake_ratio": h.median,
            "handshake_ratio_min": h.min,
            "handshake_ratio_max": h.max,
            "task_overhead_p50_us": over.p50(),
            "task_overhead_p99_us": over.p99(),
            "spawn_raw_p50_us": spawn.p50(),
            "spawn_raw_p99_us": spawn.p99(),
            "task_overhead_ratio": o.median,
            "task_overhead_ratio_min": o.min,
            "task_overhead_ratio_max": o.max,
            "task_overhead_p99_ratio": self.overhead_p99_ratio(),
            "handshake_tasks": hs.len(),
            "poll_tasks": self.poll.len(),
            "overhead_tasks": over.len(),
            "rounds": self.rounds,
            "volume": self.volume.display().to_string(),
            "fs": self.fs,
        })
    }

    fn throughput_json(&self) -> Value {
        let mb = |m: &[Throughput]| median(&m.iter().map(Throughput::mb_s).collect::<Vec<_>>());
        let (f, s) = (self.mode_ratio(&self.file), self.mode_ratio(&self.stream));
        json!({
            "file_mode_mb_s": mb(&self.file),
            "stream_mode_mb_s": mb(&self.stream),
            "raw_copy_mb_s": median(&self.raw_mb_s()),
            "file_mode_ratio": f.median,
            "file_mode_ratio_min": f.min,
            "file_mode_ratio_max": f.max,
            "stream_mode_ratio": s.median,
            "stream_mode_ratio_min": s.min,
            "stream_mode_ratio_max": s.max,
            "shim_peak_rss_mib": self.peak_rss_mib(),
            "bytes": self.bytes,
        })
    }

    fn load_growth_json(&self) -> Value {
        let mut m = Map::new();
        for (c, p) in &self.load {
            let s = Spread::ratios(&p.ours, &p.base);
            m.insert(format!("load_p{c}_tasks_s"), median(&p.ours).into());
            m.insert(format!("load_p{c}_raw_tasks_s"), median(&p.base).into());
            m.insert(format!("load_p{c}_ratio"), s.median.into());
            m.insert(format!("load_p{c}_ratio_min"), s.min.into());
            m.insert(format!("load_p{c}_ratio_max"), s.max.into());
        }
        for (dirs, rounds) in &self.growth {
            m.insert(
                format!("growth_{dirs}_p50_us"),
                Samples::pooled(rounds).p50().into(),
            );
            if let Some(s) = self
                .growth_ratio(*dirs)
                .filter(|_| *dirs != self.growth[0].0)
            {
                m.insert(format!("growth_{dirs}_ratio"), s.median.into());
                m.insert(format!("growth_{dirs}_ratio_min"), s.min.into());
                m.insert(format!("growth_{dirs}_ratio_max"), s.max.into());
            }
        }
        Value::Object(m)
    }
}

pub fn human_bytes(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
    } else if b >= 1 << 20 {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    } else {
        format!("{b} B")
    }
}

/// The raw copy's three steps and both modes' times, for the table's foot.
pub fn times_line(r: &Report) -> String {
    let med = |v: Vec<f64>| median(&v);
    format!(
        "median round: raw write {:.2} s, cp {:.2} s, read {:.2} s; file mode {:.2} s, stream mode {:.2} s ({:.0} MB/s raw)\n",
        med(r.raw.iter().map(|x| x.write_secs).collect()),
        med(r.raw.iter().map(|x| x.cp_secs).collect()),
        med(r.raw.iter().map(|x| x.read_secs).collect()),
        med(r.file.iter().map(|x| x.secs).collect()),
        med(r.stream.iter().map(|x| x.secs).collect()),
        med(r.raw.iter().map(|x| mb_s(x.bytes, x.secs())).collect()),
    )
}
