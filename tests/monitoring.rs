//! What an operator's monitoring sees: FUSE requests by operation, and the shipped Grafana
//! dashboard and alert rules, each of whose queries names a metric the daemon really exports.

mod common;

use common::*;
use serde_json::json;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `leasefs_…` names in a PromQL expression, as exported (histogram suffixes folded).
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("leasefs_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

fn metric_value(metrics: &str, sample: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(sample))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {sample}:\n{metrics}"))
}

#[test]
fn fuse_requests_are_counted_by_operation_and_the_dashboard_and_alerts_query_real_metrics() {
    let mut env = Env::new();
    let script = env.script();
    let mut docs: Vec<serde_json::Value> =
        serde_json::from_str(&exec_catalog(&script, &[("dyn:ok", "royal", json!({})), ("dyn:bad", "fail", json!({}))]))
            .unwrap();
    docs.push(json!({"path": "static:a", "data": {"value": "a"}}));
    env.doc("d.json", &serde_json::to_string(&docs).unwrap());
    env.config(json!({}));
    env.start();
    cat(&env.m("dyn/ok"));
    let _ = read(&env.m("dyn/bad"));
    let before = read(&env.m(".leasefs/metrics")).unwrap();
    for _ in 0..10 {
        cat(&env.m("static/a"));
        cat(&env.m("dyn/ok"));
    }
    let after = read(&env.m(".leasefs/metrics")).unwrap();
    let delta = |op: &str| {
        let s = format!("leasefs_fuse_requests_total{{op=\"{op}\"}}");
        metric_value(&after, &s) - metric_value(&before, &s)
    };
    // Twenty cats: twenty opens and releases reach the daemon, and a lookup for each dynamic
    // one (its name is looked up at every path walk); the reads are served from the page cache
    // (a static file's after the first time, a dynamic file's view filled when it is opened).
    assert!(delta("open") >= 20, "open {}", delta("open"));
    assert!(delta("release") >= 20, "release {}", delta("release"));
    assert!(delta("lookup") >= 10, "lookup {}", delta("lookup"));
    assert!(delta("read") < 10, "read {}", delta("read"));
    assert!(after.contains("# TYPE leasefs_fuse_requests_total counter"));

    let exported = |name: &str| {
        let base = name.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count");
        after.contains(&format!("# TYPE {base} ")) || after.contains(&format!("# TYPE {name} "))
    };
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{ROOT}/docs/monitoring/grafana-dashboard.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let mut checked = 0;
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            for m in metric_names(t["expr"].as_str().unwrap()) {
                assert!(
                    exported(&m),
                    "the dashboard panel {:?} queries {m}, which leasefs does not export",
                    p["title"]
                );
                checked += 1;
            }
        }
    }
    let rules = std::fs::read_to_string(format!("{ROOT}/docs/monitoring/alerts.yaml")).unwrap();
    for line in rules.lines().filter(|l| l.trim_start().starts_with("expr:")) {
        for m in metric_names(line) {
            assert!(exported(&m), "an alert queries {m}, which leasefs does not export");
            checked += 1;
        }
    }
    assert!(checked >= 15, "only {checked} queries checked");
}
