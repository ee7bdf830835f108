//! Scenarios for validation (SPEC §10.8): `leasefs check` and the mount refuse a zero or overlong
//! lease, a `min_remaining` that no lease can meet, and unknown keys (with "did you mean"), naming
//! file:line:column and the key, never a value; durations are strings or numbers of seconds.
mod common;

use common::*;
use serde_json::json;

const JWT_BASE: &str = r#"{"path": "base:jwt", "attributes": {"type": "jwt"},
  "data": {"algorithm": "HS256", "key": "validation-test-key-0123456789abcdef"}}"#;

/// "line:col" of the first `needle` in `text` (both from 1).
fn pos_of(text: &str, needle: &str) -> String {
    let at = text.find(needle).unwrap_or_else(|| panic!("{needle} not in the document"));
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    format!("{line}:{col}")
}

fn check(env: &Env) -> std::process::Output {
    run(BIN, &["check", "--config", env.path("config.json").to_str().unwrap()])
}

/// A catalog of the jwt base and one entry linked to it with these attribute lines.
fn jwt_entry(attrs: &str) -> String {
    format!(
        "[\n{JWT_BASE},\n{{\"path\": \"dyn:token\",\n \"attributes\": {{\n  \"linkConfig\": {{\"linkType\": \"dynamic\", \"linkedSecret\": \"base:jwt\"}},\n{attrs}}}}}\n]\n"
    )
}

/// `check` exits 1 and names `bad.json:line:col` of `at` in the document, and each needle;
/// `secret` (a value in the document) appears nowhere in its output.
fn refused(doc: &str, at: &str, needles: &[&str], secret: &str) {
    let env = Env::new();
    env.doc("bad.json", doc);
    env.config(json!({}));
    let o = check(&env);
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(1), "check passed:\n{out}{err}");
    let place = format!("bad.json:{}:", pos_of(doc, at));
    assert!(err.contains(&place), "check does not name {place}:\n{err}");
    for n in needles {
        assert!(err.contains(n), "check does not say {n:?}:\n{err}");
    }
    assert!(!err.contains(secret) && !out.contains(secret), "check printed a value:\n{err}");
}

#[test]
fn a_zero_ttl_is_refused_at_its_key() {
    refused(&jwt_entry("  \"ttl\": \"0s\""), "\"ttl\"", &["attributes.ttl", "above zero"], "\"0s\"");
}

#[test]
fn a_ttl_beyond_a_year_or_overflowing_is_refused() {
    let doc = jwt_entry("  \"ttl\": \"999999999999d\"");
    refused(&doc, "\"ttl\"", &["attributes.ttl", "too long"], "999999999999");
    let doc = jwt_entry("  \"ttl\": \"400d\"");
    refused(&doc, "\"ttl\"", &["attributes.ttl", "longer than leasefs can honour"], "400d");
}

#[test]
fn a_max_ttl_beyond_a_year_is_refused() {
    let doc = jwt_entry("  \"ttl\": \"1h\",\n  \"max_ttl\": \"500d\"");
    refused(&doc, "\"max_ttl\"", &["attributes.max_ttl", "longer than leasefs can honour"], "500d");
}

#[test]
fn a_min_remaining_as_long_as_the_ttl_is_refused() {
    let doc = jwt_entry("  \"reuse\": \"uid\", \"ttl\": \"5m\",\n  \"min_remaining\": \"5m\"");
    refused(&doc, "\"min_remaining\"", &["attributes.min_remaining must be shorter than attributes.ttl"], "5m\"");
}

#[test]
fn an_unknown_attribute_is_refused_on_static_and_jwt_entries() {
    let doc = "[\n{\"path\": \"plain\",\n \"attributes\": {\"mode\": \"0400\", \"colour\": \"chartreuse-value\"},\n \"data\": {\"value\": \"v\"}}\n]";
    refused(doc, "\"colour\"", &["`colour`"], "chartreuse-value");
    // A jwt entry reads audience, subject and claims besides leasefs's own keys; not colour.
    let doc = jwt_entry("  \"audience\": \"api\",\n  \"colour\": \"chartreuse-value\"");
    refused(&doc, "\"colour\"", &["`colour`", "jwt"], "chartreuse-value");
}

#[test]
fn a_misspelt_attribute_gets_did_you_mean() {
    let doc = jwt_entry("  \"ttl\": \"5m\",\n  \"rotate_signl\": \"SIGHUP\"");
    refused(&doc, "\"rotate_signl\"", &["`rotate_signl`", "did you mean", "rotate_signal"], "SIGHUP");
}

#[test]
fn an_exec_entry_passes_its_own_attributes_through_but_not_a_near_miss() {
    let env = Env::new();
    let script = env.script();
    let catalog = |extra: serde_json::Value| exec_catalog(&script, &[("dyn:db", "royal", extra)]);
    env.doc("exec.json", &catalog(json!({"ttl": "5m", "colour": "blue", "tenant": {"id": 7}})));
    env.config(json!({}));
    let o = check(&env);
    assert!(o.status.success(), "an exec entry's own attributes were refused:\n{}", String::from_utf8_lossy(&o.stderr));
    env.doc("exec.json", &catalog(json!({"ttl": "5m", "rotate_signl": "SIGHUP"})));
    let err = String::from_utf8_lossy(&check(&env).stderr).into_owned();
    assert!(err.contains("exec.json:") && err.contains("did you mean `rotate_signal`"), "{err}");
}

#[test]
fn an_unknown_config_key_is_refused_with_did_you_mean() {
    let env = Env::new();
    let cfg = env.config(json!({}));
    let mut text: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    text["alow_other"] = json!(true);
    let text = serde_json::to_string_pretty(&text).unwrap();
    std::fs::write(&cfg, &text).unwrap();
    let o = check(&env);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    let line = text.lines().position(|l| l.contains("alow_other")).unwrap() + 1;
    assert!(err.contains(&format!("config.json:{line}:")), "{err}");
    assert!(err.contains("`alow_other`") && err.contains("did you mean `allow_other`"), "{err}");
    // In `defaults` and in a source too.
    for extra in [
        json!({"defaults": {"min_remaning": "10s"}}),
        json!({"sources": [{"type": "local", "path": env.docs(), "prefx": "/"}]}),
    ] {
        env.config(extra);
        let err = String::from_utf8_lossy(&check(&env).stderr).into_owned();
        assert!(err.contains("config.json:") && err.contains("did you mean"), "{err}");
    }
}

#[test]
fn config_lease_lengths_are_checked_too() {
    let env = Env::new();
    for (defaults, needle) in [
        (json!({"ttl": "0s"}), "defaults.ttl must be above zero"),
        (json!({"ttl": "1h", "max_ttl": "999999999999d"}), "too long"),
        (json!({"ttl": "10m", "min_remaining": "10m"}), "defaults.min_remaining must be shorter"),
    ] {
        env.config(json!({ "defaults": defaults }));
        let o = check(&env);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{defaults}: {err}");
        assert!(err.contains("config.json:") && err.contains(needle), "{defaults}: {err}");
    }
}

#[test]
fn durations_as_numbers_of_seconds_pass_in_documents_and_the_config() {
    let env = Env::new();
    env.doc("token.json", &jwt_entry("  \"ttl\": 90, \"min_remaining\": 30, \"format\": \"raw:token\""));
    env.config(json!({"defaults": {"ttl": 90, "max_ttl": 3600, "cache_ttl": 5}}));
    let o = check(&env);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("1 dynamic"), "{}", String::from_utf8_lossy(&o.stdout));
}

#[test]
fn a_mount_serves_the_good_documents_and_names_the_bad_one() {
    let mut env = Env::new();
    env.doc("good.json", r#"{"path": "app:one", "data": {"value": "served-one"}}"#);
    env.doc("token.json", &jwt_entry("  \"ttl\": 90, \"format\": \"raw:token\""));
    let bad = "[{\"path\": \"dyn:typo\", \"attributes\": {\n  \"linkConfig\": {\"linkType\": \"dynamic\", \"linkedSecret\": \"base:jwt\"},\n  \"ttl\": \"5m\", \"rotate_signl\": \"SIGHUP\"}}]";
    env.doc("bad/typo.json", bad);
    env.config(json!({}));
    env.start();
    assert_eq!(cat(&env.m("app/one")), "served-one");
    let token = cat(&env.m("dyn/token"));
    assert_eq!(token.split('.').count(), 3, "a jwt entry with a ttl of 90 (seconds) issues: {token}");
    assert!(env.m("dyn/token").exists() && !env.m("dyn/typo").exists(), "the misspelt entry is served");
    let log = env.log();
    let place = format!("typo.json:{}", pos_of(bad, "\"rotate_signl\""));
    assert!(log.contains(&place) && log.contains("did you mean `rotate_signal`"), "log does not name {place}:\n{log}");
}

#[test]
fn an_entry_whose_ttl_meets_the_default_min_remaining_is_named_by_check() {
    // reuse uid with a ttl of 30s: the default min_remaining (30s) is never left, so no lease of it
    // would ever be shared. The entry is judged against the configuration (check fails; the mount
    // does not serve it).
    let doc = jwt_entry("  \"reuse\": \"uid\",\n  \"ttl\": \"30s\"");
    let env = Env::new();
    env.doc("short.json", &doc);
    env.config(json!({}));
    let err = String::from_utf8_lossy(&check(&env).stderr).into_owned();
    let place = format!("short.json:{}:", pos_of(&doc, "\"ttl\""));
    assert!(err.contains(&place) && err.contains("would ever be reused"), "{err}");
    // With a shorter default min_remaining it passes.
    env.config(json!({"defaults": {"min_remaining": "10s"}}));
    let o = check(&env);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn what_check_refuses_the_mount_does_not_serve_and_names_at_load() {
    // A dangling link, an exec base whose program is missing (as in an image without a shell),
    // one whose program anyone may change, the entries linked to them, and an entry whose leases
    // the configuration's defaults make unshareable; beside good entries.
    let mut env = Env::new();
    let script = env.script();
    let loose = env.path("loose.sh");
    std::fs::write(&loose, "#!/bin/sh\necho '{\"Password\": \"x\"}'\n").unwrap();
    std::fs::set_permissions(&loose, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let doc = serde_json::to_string_pretty(&json!([
        {"path": "app:one", "data": {"value": "served-one"}},
        {"path": "base:exec:good", "attributes": {"type": "exec"}, "data": {"command": [script, "royal"]}},
        dynamic("dyn:good", "base:exec:good", json!({"format": "raw:Password"})),
        dynamic("dyn:dangling", "base:exec:nowhere", json!({})),
        {"path": "base:exec:noshell", "attributes": {"type": "exec"}, "data": {"command": ["/nonexistent/bin/sh", "-c", "true"]}},
        dynamic("dyn:noshell", "base:exec:noshell", json!({})),
        {"path": "base:exec:loose", "attributes": {"type": "exec"}, "data": {"command": [loose.to_str().unwrap()]}},
        dynamic("dyn:loose", "base:exec:loose", json!({})),
        // Shares leases, but the default min_remaining (30s) is its whole ttl: none is ever reused.
        dynamic("dyn:short", "base:exec:good", json!({"reuse": "uid", "ttl": "30s"})),
    ]))
    .unwrap();
    env.doc("catalog.json", &doc);
    env.config(json!({}));
    let o = check(&env);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "check passed:\n{err}");
    // Each named where it goes wrong: the link, the base's data.
    let at = |from: &str, key: &str| {
        // The object holding `from` (keys are printed in order: "data" comes before "path").
        let start = doc[..doc.find(from).unwrap()].rfind("\n  {").unwrap();
        let line = pos_of(&doc[start..], key).split(':').next().unwrap().parse::<usize>().unwrap();
        line + doc[..start].matches('\n').count()
    };
    let expect = [
        (at("\"dyn:dangling\"", "\"linkConfig\""), "base:exec:nowhere"),
        (at("\"base:exec:noshell\"", "\"data\""), "/nonexistent/bin/sh"),
        (at("\"base:exec:loose\"", "\"data\""), "loose.sh"),
        (at("\"dyn:short\"", "\"ttl\""), "would ever be reused"),
    ];
    for (line, needle) in expect {
        let place = format!("catalog.json:{line}:");
        assert!(
            err.lines().any(|l| l.contains(&place) && l.contains(needle)),
            "check does not name {place} {needle}:\n{err}"
        );
    }
    // The mount: the same entries are not listed, and its log names each at load.
    env.start();
    assert_eq!(cat(&env.m("app/one")), "served-one");
    assert!(cat(&env.m("dyn/good")).starts_with("pw-"));
    for gone in ["dyn/dangling", "dyn/noshell", "dyn/loose", "dyn/short"] {
        assert!(!env.m(gone).exists(), "{gone} is listed although check refuses it");
    }
    let log = env.log();
    for (line, needle) in expect {
        let place = format!("catalog.json:{line}:");
        assert!(
            log.lines().any(|l| l.contains(" WARN ") && l.contains(&place) && l.contains(needle)),
            "the log does not name {place} {needle} at warn:\n{log}"
        );
    }
}

#[test]
fn a_missing_source_directory_is_a_clear_error_for_check_and_the_mount() {
    let env = Env::new();
    let gone = env.path("no-such-dir");
    let cfg = env.config(json!({"sources": [{"type": "local", "path": gone}]}));
    let o = check(&env);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(2), "{err}");
    let needle = format!("the local source's directory {}: No such file or directory", gone.display());
    assert!(err.contains("config.json: sources[0]") && err.contains(&needle), "{err}");
    assert!(!err.contains("last listing"), "check speaks of a listing it never had: {err}");
    // The daemon refuses to start the same way, instead of serving an empty mount.
    let o = run("timeout", &["20", BIN, "mount", env.mnt().to_str().unwrap(), "--config", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains(&needle), "{err}");
    assert!(!is_mounted(&env.mnt()));
}
