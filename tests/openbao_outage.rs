//! OpenBao goes down and comes back: listings stay served, cached values up to max_stale, opens fail fast, and leasefs recovers by itself.
//! (Its own test binary: it stops its OpenBao server, which no other test may share.)

mod common;

use std::time::{Duration, Instant};

use common::backends::bao;
use common::*;
use serde_json::json;

#[test]
fn openbao_down_then_back() {
    let b = bao();
    b.kv_put("svc/cached", json!({"value": "cached-v1"}));
    b.kv_put("svc/never-opened", json!({"value": "cold"}));
    let mut env = Env::new();
    let token = env.path("bao-token");
    std::fs::write(&token, &b.token).unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let cfg = json!({
        "sources": [{"type": "openbao", "prefix": "/bao", "address": b.addr, "token_file": token, "kv_mounts": ["secret"]}],
        "state_dir": env.path("state"),
        "defaults": {"refresh": "1s", "issue_timeout": "2s", "cache_ttl": "1s", "max_stale": "3s"}
    });
    std::fs::write(env.path("config.json"), cfg.to_string()).unwrap();
    std::fs::set_permissions(env.path("config.json"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    env.start();
    assert_eq!(cat(&env.m("bao/secret/svc/cached")), "cached-v1");

    b.stop();
    let status =
        || -> serde_json::Value { serde_json::from_str(&read(&env.m(".leasefs/status.json")).unwrap()).unwrap() };
    eventually(Duration::from_secs(5), "the source to be marked down", || {
        status()["sources"][0]["health"]["up"] == false
    });
    // The listing from the last refresh is still served.
    let listing = ok("find", &[env.m("bao").to_str().unwrap(), "-type", "f"]);
    assert!(listing.contains("svc/cached") && listing.contains("svc/never-opened"), "{listing}");
    // A value never read fails fast with EIO (not a hang).
    let t = Instant::now();
    assert_eq!(errno_of(read(&env.m("bao/secret/svc/never-opened"))), libc::EIO);
    assert!(t.elapsed() < Duration::from_millis(2500), "took {:?}", t.elapsed());
    // A cached value is served past cache_ttl while the source is down, up to max_stale, never beyond.
    assert_eq!(read(&env.m("bao/secret/svc/cached")).unwrap(), "cached-v1");
    std::thread::sleep(Duration::from_millis(4200));
    assert_eq!(errno_of(read(&env.m("bao/secret/svc/cached"))), libc::EIO, "served beyond max_stale");
    assert!(env.log().contains("serving the cached value"), "{}", env.log());

    // OpenBao returns (a dev server starts empty: put the data back); leasefs recovers by itself.
    b.start();
    b.kv_put("svc/cached", json!({"value": "cached-v2"}));
    b.kv_put("svc/new", json!({"value": "fresh"}));
    eventually(Duration::from_secs(8), "recovery after OpenBao returns", || read(&env.m("bao/secret/svc/new")).is_ok());
    assert_eq!(cat(&env.m("bao/secret/svc/cached")), "cached-v2");
    assert_eq!(status()["sources"][0]["health"]["up"], true);
}
