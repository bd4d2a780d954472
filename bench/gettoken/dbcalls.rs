//! Database calls per request, from the server's per-operation counter
//! `tokenmanager_db_operations_total{operation,outcome}` (its metrics port, plain HTTP), scraped
//! before and after a counted run.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::target::{Target, request, run_list};

/// The counter's samples: (operation, outcome) → count.
pub type DbOperations = BTreeMap<(String, String), u64>;

/// The server's background work, not caused by requests: readiness and health pings, the
/// stored-credential gauges.
pub const BACKGROUND: [&str; 3] = ["ping", "count_credentials", "count_expiring"];

const METRIC: &str = "tokenmanager_db_operations_total";

/// One `GET /metrics`, its database-operation counters.
pub fn scrape(metrics: &Target) -> DbOperations {
    let (replies, _) = run_list(metrics, 1, vec![request("GET", "/metrics", None)]);
    assert_eq!(replies[0].status, 200, "/metrics: {}", replies[0].text());
    let operations = parse(&replies[0].text());
    assert!(
        !operations.is_empty(),
        "/metrics has no {METRIC} (an older server?)"
    );
    operations
}

/// The `tokenmanager_db_operations_total` samples of a Prometheus text exposition.
pub fn parse(text: &str) -> DbOperations {
    let mut operations = DbOperations::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(METRIC).and_then(|r| r.strip_prefix('{')) else {
            continue;
        };
        let Some((labels, value)) = rest.split_once('}') else {
            continue;
        };
        let label = |name: &str| -> String {
            labels
                .split(',')
                .filter_map(|pair| pair.split_once('='))
                .find(|(key, _)| key.trim() == name)
                .map(|(_, v)| v.trim().trim_matches('"').to_owned())
                .unwrap_or_default()
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        operations.insert((label("operation"), label("outcome")), value as u64);
    }
    operations
}

/// What the server asked its database between two scrapes, its background work excluded.
#[derive(Clone, Debug, Default)]
pub struct DbCalls {
    /// `operation` (or `operation/outcome` when the outcome is not `ok`) → calls.
    pub by_operation: BTreeMap<String, u64>,
    pub total: u64,
}

impl DbCalls {
    pub fn between(before: &DbOperations, after: &DbOperations) -> DbCalls {
        let mut calls = DbCalls::default();
        for ((operation, outcome), &count) in after {
            if BACKGROUND.contains(&operation.as_str()) {
                continue;
            }
            let delta = count.saturating_sub(
                before
                    .get(&(operation.clone(), outcome.clone()))
                    .copied()
                    .unwrap_or(0),
            );
            if delta == 0 {
                continue;
            }
            let key = if outcome == "ok" {
                operation.clone()
            } else {
                format!("{operation}/{outcome}")
            };
            *calls.by_operation.entry(key).or_default() += delta;
            calls.total += delta;
        }
        calls
    }

    /// Calls per request, for `requests` requests.
    pub fn per(&self, requests: u64) -> f64 {
        self.total as f64 / requests.max(1) as f64
    }

    /// `none`, or the operations and their counts.
    pub fn describe(&self) -> String {
        if self.by_operation.is_empty() {
            return "none".into();
        }
        self.by_operation
            .iter()
            .map(|(operation, count)| format!("{operation} {count}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn json(&self, requests: u64) -> Value {
        json!({
            "per_request": (self.per(requests) * 1e4).round() / 1e4,
            "total": self.total,
            "requests": requests,
            "operations": self.by_operation,
        })
    }
}
