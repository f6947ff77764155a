//! Counters and histograms, rendered in the Prometheus text format for `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;

/// A cumulative histogram with fixed bucket bounds (seconds).
#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, value: f64) {
        for (bound, count) in self.bounds.iter().zip(self.counts.iter_mut()) {
            if value <= *bound {
                *count += 1;
            }
        }
        self.sum += value;
        self.count += 1;
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", self.sum, self.count);
    }
}

#[derive(Debug, Clone)]
pub struct Metrics {
    /// `POST /execute` executions by how they ended.
    pub executions: BTreeMap<&'static str, u64>,
    /// WebSocket sessions' executions by how they ended.
    pub session_executions: BTreeMap<&'static str, u64>,
    pub execute_seconds: Histogram,
    pub sandbox_start_seconds: Histogram,
    pub http_responses: BTreeMap<u16, u64>,
    /// MCP tool calls (`/mcp`) by tool.
    pub mcp_tool_calls: BTreeMap<&'static str, u64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            executions: BTreeMap::new(),
            session_executions: BTreeMap::new(),
            execute_seconds: Histogram::new(LATENCY_BUCKETS),
            sandbox_start_seconds: Histogram::new(LATENCY_BUCKETS),
            http_responses: BTreeMap::new(),
            mcp_tool_calls: BTreeMap::new(),
        }
    }
}

/// Point-in-time values sampled when rendering.
pub struct Gauges {
    pub live_sandboxes: usize,
    pub pool_ready: usize,
    pub pool_target: usize,
    pub snapshot_pool_ready: usize,
    pub snapshot_pools: usize,
    pub waiting_for_slot: usize,
    pub waiting_for_sandbox: usize,
    pub pool_evictions: u64,
    pub connections: usize,
    pub sessions: usize,
    pub websockets: usize,
    pub sandboxes_created: u64,
    pub sandbox_start_failures: u64,
    pub sandboxes_lost: u64,
    pub mcp_sessions: usize,
    pub mcp_sandboxes: usize,
}

impl Metrics {
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::new();
        let gauge_lines = [
            (
                "sandbox_live",
                "Sandboxes that exist now (pools and sandboxes being deleted included).",
                gauges.live_sandboxes as u64,
                "gauge",
            ),
            (
                "sandbox_pool_ready",
                "Started sandboxes waiting in the pool.",
                gauges.pool_ready as u64,
                "gauge",
            ),
            (
                "sandbox_pool_target",
                "Started sandboxes the pool keeps now (SANDBOX_POOL_SIZE, more after requests found it empty, up to SANDBOX_POOL_MAX).",
                gauges.pool_target as u64,
                "gauge",
            ),
            (
                "sandbox_snapshot_pool_ready",
                "Sandboxes restored from a snapshot, ready in its pool.",
                gauges.snapshot_pool_ready as u64,
                "gauge",
            ),
            (
                "sandbox_snapshot_pools",
                "Snapshots that have a pool (at most SANDBOX_SNAPSHOT_POOLS_MAX).",
                gauges.snapshot_pools as u64,
                "gauge",
            ),
            (
                "sandbox_waiting_for_slot",
                "Requests waiting for a sandbox being deleted to free its slot.",
                gauges.waiting_for_slot as u64,
                "gauge",
            ),
            (
                "sandbox_requests_waiting",
                "`/execute` requests waiting in line for the next sandbox to become ready.",
                gauges.waiting_for_sandbox as u64,
                "gauge",
            ),
            (
                "sandbox_pool_evictions_total",
                "Pooled sandboxes deleted to give their slot to real work.",
                gauges.pool_evictions,
                "counter",
            ),
            (
                "sandbox_http_connections",
                "Open client connections.",
                gauges.connections as u64,
                "gauge",
            ),
            (
                "sandbox_sessions",
                "Sessions (WebSocket, and the sandboxes of /mcp), attached or not.",
                gauges.sessions as u64,
                "gauge",
            ),
            (
                "sandbox_websockets",
                "Open WebSocket connections.",
                gauges.websockets as u64,
                "gauge",
            ),
            (
                "sandbox_mcp_sessions",
                "MCP sessions (handshake revision) open on /mcp.",
                gauges.mcp_sessions as u64,
                "gauge",
            ),
            (
                "sandbox_mcp_sandboxes",
                "Sandboxes that /mcp calls created and that are not deleted yet.",
                gauges.mcp_sandboxes as u64,
                "gauge",
            ),
            (
                "sandbox_created_total",
                "Sandboxes started.",
                gauges.sandboxes_created,
                "counter",
            ),
            (
                "sandbox_start_failures_total",
                "Sandboxes that failed to start.",
                gauges.sandbox_start_failures,
                "counter",
            ),
            (
                "sandbox_lost_total",
                "Ready sandboxes that died unexpectedly.",
                gauges.sandboxes_lost,
                "counter",
            ),
        ];
        for (name, help, value, kind) in gauge_lines {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        for (name, help, table) in [
            (
                "sandbox_executions_total",
                "POST /execute executions by how they ended.",
                &self.executions,
            ),
            (
                "sandbox_session_executions_total",
                "Executions of WebSocket sessions by how they ended.",
                &self.session_executions,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (reason, count) in table {
                let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {count}");
            }
        }
        let _ = writeln!(out, "# HELP sandbox_mcp_tool_calls_total MCP tool calls by tool.\n# TYPE sandbox_mcp_tool_calls_total counter");
        for (tool, count) in &self.mcp_tool_calls {
            let _ = writeln!(
                out,
                "sandbox_mcp_tool_calls_total{{tool=\"{tool}\"}} {count}"
            );
        }
        let _ = writeln!(out, "# HELP sandbox_http_responses_total HTTP responses by status.\n# TYPE sandbox_http_responses_total counter");
        for (status, count) in &self.http_responses {
            let _ = writeln!(
                out,
                "sandbox_http_responses_total{{status=\"{status}\"}} {count}"
            );
        }
        self.execute_seconds.render(
            "sandbox_execute_seconds",
            "POST /execute from request to response end.",
            &mut out,
        );
        self.sandbox_start_seconds.render(
            "sandbox_start_seconds",
            "From runsc run to the agent being ready.",
            &mut out,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let mut histogram = Histogram::new(&[0.1, 1.0]);
        histogram.observe(0.05);
        histogram.observe(0.5);
        histogram.observe(5.0);
        let mut out = String::new();
        histogram.render("x", "help", &mut out);
        assert!(out.contains("x_bucket{le=\"0.1\"} 1\n"));
        assert!(out.contains("x_bucket{le=\"1\"} 2\n"));
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"));
        assert!(out.contains("x_count 3\n"));
    }
}
