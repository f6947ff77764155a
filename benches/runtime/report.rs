//! The results table (markdown, printed and written to target/bench-results.md).

use std::fmt::Write;
use std::process::Command;
use std::time::Duration;

use crate::direct::Env;
use crate::support::{self, Stat};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Milliseconds,
    MegabytesPerSecond,
    PerSecond,
    /// Sizes, given in bytes.
    Megabytes,
}

impl Unit {
    fn format(self, value: f64) -> String {
        if !value.is_finite() {
            return "n/a".into();
        }
        match self {
            Unit::Milliseconds => format!("{:.2} ms", value * 1000.0),
            Unit::MegabytesPerSecond => format!("{value:.0} MB/s"),
            Unit::PerSecond => format!("{value:.2} /s"),
            Unit::Megabytes => format!("{:.1} MB", value / 1e6),
        }
    }
}

pub struct Row {
    what: String,
    ours: Stat,
    unit: Unit,
    raw_what: String,
    raw: Option<Stat>,
}

impl Row {
    pub fn latency(what: &str, samples: &[f64], raw_what: &str, raw: Option<Stat>) -> Row {
        Row {
            what: what.into(),
            ours: Stat::latency(samples),
            unit: Unit::Milliseconds,
            raw_what: raw_what.into(),
            raw,
        }
    }

    pub fn rate(what: &str, samples: &[f64], unit: Unit, raw_what: &str, raw: Option<Stat>) -> Row {
        Row {
            what: what.into(),
            ours: Stat::rate(samples),
            unit,
            raw_what: raw_what.into(),
            raw,
        }
    }
}

impl Row {
    /// Sizes in bytes; summarized like latencies (p90, and the smallest as "best").
    pub fn size(what: &str, bytes: &[f64], raw_what: &str, raw: Option<Stat>) -> Row {
        Row {
            what: what.into(),
            ours: Stat::latency(bytes),
            unit: Unit::Megabytes,
            raw_what: raw_what.into(),
            raw,
        }
    }
}

pub struct Memory {
    pub what: String,
    pub bytes: Option<u64>,
    pub note: String,
}

#[derive(Default)]
pub struct Report {
    machine: Vec<String>,
    pub rows: Vec<Row>,
    pub memory: Vec<Memory>,
    pub total: Duration,
    load_start: String,
    pub load_end: String,
    pub failures: Vec<String>,
    /// Observations printed after the targets (for example the lease settle share of a restore).
    pub notes: Vec<String>,
    // Figures the targets and the decision are computed from.
    pub bash_agent: Option<Stat>,
    pub bash_runsc_exec: Option<Stat>,
    pub python_agent: Option<Stat>,
    pub python_runsc_exec: Option<Stat>,
    pub fork_exec_bash: Option<Stat>,
    pub throughput_runsc_exec: Option<Stat>,
    pub raw_create_and_exec: Option<Stat>,
    pub execute_cold: Option<Stat>,
    pub execute_pooled: Option<Stat>,
}

/// `/proc/loadavg`'s 1, 5 and 15 minute figures: how busy the machine was (it is shared).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or("").trim().to_string()
}

impl Report {
    pub fn new(env: &Env) -> Report {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|line| line.starts_with("model name"))
                    .map(|line| line.split(':').nth(1).unwrap_or("").trim().to_string())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0);
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .next()
                    .and_then(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
            })
            .map(|kb| format!("{:.1} GiB RAM", kb as f64 / 1024.0 / 1024.0))
            .unwrap_or_default();
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|text| first_line(&text))
            .unwrap_or_default();
        let date = support::run_output(
            Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]),
            Duration::from_secs(5),
        )
        .map(|(_, out)| first_line(&String::from_utf8_lossy(&out)))
        .unwrap_or_default();
        Report {
            machine: vec![
                format!("{date}; {cores} CPUs ({cpu}), {memory}, kernel {kernel}"),
                format!(
                    "{} (platform: runsc default), rootfs {}",
                    env.version,
                    env.rootfs.display()
                ),
            ],
            load_start: load_average(),
            ..Report::default()
        }
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# Benchmark results (`cargo bench --bench runtime`)\n");
        for line in &self.machine {
            let _ = writeln!(out, "- {line}");
        }
        let _ = writeln!(
            out,
            "- total bench time {:.0} s; load average (1/5/15 min) {} at the start, {} at the end\n",
            self.total.as_secs_f64(),
            self.load_start,
            self.load_end
        );
        let _ = writeln!(
            out,
            "Latency: median / p90 / best (min) of n runs. Rates (MB/s, /s): median / p10 / best (max).\n\
             Ratio = ours / raw, on medians from this run (below 1 = ours faster for latencies, slower for rates).\n"
        );
        let _ = writeln!(out, "| measurement (ours) | median | p90 | best | n | same operation on raw runsc | median | p90 | best | n | ours / raw |");
        let _ = writeln!(
            out,
            "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"
        );
        for row in &self.rows {
            let unit = row.unit;
            let (raw_median, raw_tail, raw_best, raw_n, ratio) = match row.raw {
                Some(raw) => (
                    unit.format(raw.median),
                    unit.format(raw.tail),
                    unit.format(raw.best),
                    raw.n.to_string(),
                    format!("{:.2}", row.ours.median / raw.median),
                ),
                None => Default::default(),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                row.what,
                unit.format(row.ours.median),
                unit.format(row.ours.tail),
                unit.format(row.ours.best),
                row.ours.n,
                row.raw_what,
                raw_median,
                raw_tail,
                raw_best,
                raw_n,
                ratio
            );
        }

        let _ = writeln!(out, "\n## Targets\n");
        let ms = |stat: Stat| Unit::Milliseconds.format(stat.median);
        match (self.bash_agent, self.fork_exec_bash) {
            (Some(agent), Some(fork)) => {
                let ratio = agent.median / fork.median;
                let _ = writeln!(
                    out,
                    "- warm `bash -c true`, request to exit status: {} through the agent vs {} for a bare fork+exec+wait of `/bin/bash -c true` inside the sandbox (cheapest of the three ways measured) = **{ratio:.2}x** (target <= 2x): **{}** (on medians; best of each: {:.2}x)",
                    ms(agent),
                    ms(fork),
                    if ratio <= 2.0 { "met" } else { "NOT met" },
                    agent.best / fork.best
                );
            }
            _ => {
                let _ = writeln!(out, "- warm `bash -c true`: not measured");
            }
        }
        match (self.python_agent, self.python_runsc_exec) {
            (Some(agent), Some(raw)) => {
                let ratio = agent.median / raw.median;
                let _ = writeln!(
                    out,
                    "- warm python `print(1)`: {} through the agent (standby ready) vs {} for `runsc exec python3 -c 'print(1)'` = **{ratio:.2}x** (target < 0.5x): **{}** (on medians; best of each: {:.2}x)",
                    ms(agent),
                    ms(raw),
                    if ratio < 0.5 { "met" } else { "NOT met" },
                    agent.best / raw.best
                );
            }
            _ => {
                let _ = writeln!(out, "- warm python `print(1)`: not measured");
            }
        }
        if let (Some(agent), Some(raw)) = (self.bash_agent, self.bash_runsc_exec) {
            let _ = writeln!(
                out,
                "- agent vs `runsc exec` per execution, `bash -c true`: {} vs {} ({:.2}x, {:.1} ms saved per execution)",
                ms(agent),
                ms(raw),
                agent.median / raw.median,
                (raw.median - agent.median) * 1000.0
            );
        }
        if let (Some(cold), Some(pooled)) = (self.execute_cold, self.execute_pooled) {
            let _ = writeln!(
                out,
                "- `POST /execute` bash `true`: {} with a ready pool vs {} without ({:.1}x faster)",
                ms(pooled),
                ms(cold),
                cold.median / pooled.median
            );
        }

        if !self.notes.is_empty() {
            let _ = writeln!(out, "\n## Checkpoint, restore, snapshots\n");
            for note in &self.notes {
                let _ = writeln!(out, "- {note}");
            }
        }

        let _ = writeln!(out, "\n## Memory\n");
        let _ = writeln!(out, "| what | MB | how |");
        let _ = writeln!(out, "|---|---:|---|");
        for memory in &self.memory {
            let value = memory
                .bytes
                .map(|bytes| format!("{:.1}", bytes as f64 / 1e6))
                .unwrap_or_else(|| "n/a".into());
            let _ = writeln!(out, "| {} | {value} | {} |", memory.what, memory.note);
        }
        if !self.failures.is_empty() {
            let _ = writeln!(out, "\n## Failures\n");
            for failure in &self.failures {
                let _ = writeln!(out, "- {failure}");
            }
        }
        out
    }
}
