//! Property tests: path mapping and the renderers hold their invariants for arbitrary input.

use leasefs::fields::SecretFields;
use leasefs::paths::split_path;
use leasefs::render::{Format, render};
use proptest::prelude::*;

/// Undoes the env format's quoting of one line: KEY='v'\''alue' -> (KEY, v'alue).
fn unquote_env(line: &str) -> (String, String) {
    let (k, v) = line.split_once('=').unwrap();
    let v = v.strip_prefix('\'').unwrap().strip_suffix('\'').unwrap();
    (k.to_string(), v.replace("'\\''", "'"))
}

fn fields(map: &std::collections::BTreeMap<String, String>) -> SecretFields {
    let mut f = SecretFields::default();
    for (k, v) in map {
        f.insert(k, v.clone());
    }
    f
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn safe_segments_round_trip_with_either_separator(segs in prop::collection::vec("[A-Za-z0-9_ @+=,-][A-Za-z0-9_. @+=,-]{0,30}", 1..8)) {
        prop_assume!(segs.iter().all(|s| s != "." && s != ".." && s != ".leasefs"));
        prop_assert_eq!(split_path(&segs.join(":"), false).unwrap(), segs.clone());
        prop_assert_eq!(split_path(&segs.join("/"), false).unwrap(), segs);
    }

    #[test]
    fn whatever_split_path_accepts_is_safe(s in "\\PC{0,80}|[./:a\\x00\\n]{0,12}") {
        if let Ok(segs) = split_path(&s, true) {
            for seg in segs {
                prop_assert!(!seg.is_empty() && seg != "." && seg != ".." && !seg.contains('/'));
                prop_assert!(!seg.chars().any(|c| c.is_control()));
            }
        }
    }

    #[test]
    fn a_dot_dot_segment_is_always_refused(before in "[a-z]{1,5}", after in "[a-z]{1,5}", sep in prop::sample::select(vec![':', '/'])) {
        let path = format!("{before}{sep}..{sep}{after}");
        prop_assert!(split_path(&path, false).is_err());
    }

    #[test]
    fn json_render_parses_back_to_the_same_fields(map in prop::collection::btree_map("[a-z_]{1,12}", "\\PC{0,40}", 1..8)) {
        let out = render(&fields(&map), &Format::Json, None).unwrap();
        let back: std::collections::BTreeMap<String, String> = serde_json::from_slice(&out).unwrap();
        prop_assert_eq!(back, map);
    }

    #[test]
    fn env_render_is_shell_safe_and_reversible(map in prop::collection::btree_map("[a-z][a-z_]{0,10}", "[^\\x00\\n]{0,40}", 1..8)) {
        let out = render(&fields(&map), &Format::Env, None).unwrap();
        let text = String::from_utf8(out.to_vec()).unwrap();
        let back: std::collections::BTreeMap<String, String> = text.lines().map(unquote_env).collect();
        let want: std::collections::BTreeMap<String, String> = map.iter().map(|(k, v)| (k.to_uppercase(), v.clone())).collect();
        prop_assert_eq!(back, want);
    }

    #[test]
    fn templates_substitute_every_placeholder(user in "[^{}]{0,20}", pass in "[^{}]{0,20}", lit in "[^{}]{0,20}") {
        let mut f = SecretFields::default();
        f.insert("username", user.clone());
        f.insert("password", pass.clone());
        let fmt = Format::parse(&format!("template:{lit}{{{{username}}}}:{{{{ password }}}}{lit}")).unwrap();
        let out = render(&f, &fmt, None).unwrap();
        prop_assert_eq!(String::from_utf8(out.to_vec()).unwrap(), format!("{lit}{user}:{pass}{lit}"));
    }

    #[test]
    fn credential_process_always_has_the_aws_shape(k in "[A-Z0-9]{16,20}", s in "\\PC{1,40}", t in "\\PC{0,40}") {
        let mut f = SecretFields::default();
        f.insert("AccessKeyId", k.clone());
        f.insert("SecretAccessKey", s.clone());
        if !t.is_empty() { f.insert("SessionToken", t.clone()); }
        let v: serde_json::Value = serde_json::from_slice(&render(&f, &Format::CredentialProcess, None).unwrap()).unwrap();
        prop_assert_eq!(&v["Version"], &serde_json::json!(1));
        prop_assert_eq!(v["AccessKeyId"].as_str().unwrap(), k.as_str());
        prop_assert_eq!(v["SecretAccessKey"].as_str().unwrap(), s.as_str());
    }
}
