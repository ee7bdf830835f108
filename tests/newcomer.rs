//! A newcomer's first minutes: `leasefs demo`, then every command it prints, typed as printed
//! from the directory the demo was started in.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

#[test]
fn the_demo_mounts_and_every_command_it_prints_works_as_printed() {
    let dir = tempfile::Builder::new().prefix("leasefs-test-").tempdir().unwrap();
    let mnt = dir.path().join("secrets");
    let mut child = Command::new(BIN)
        .arg("demo")
        .current_dir(dir.path())
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut banner = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        let done = line.starts_with("Press Ctrl-C");
        banner.push(line);
        if done {
            break;
        }
    }
    let commands: Vec<String> = banner
        .iter()
        .filter(|l| l.starts_with("  "))
        .map(|l| l.split(" # ").next().unwrap().trim().to_string())
        .filter(|c| !c.contains("sleep 31") && !c.starts_with("tail -f"))
        .collect();
    assert!(commands.len() >= 8, "{banner:?}");
    eprintln!("running: {commands:#?}");
    // `leasefs` is not on this PATH: the demo must print a path that runs.
    let leases = commands.iter().find(|c| c.contains(" leases ")).expect("a leases command");
    assert!(!leases.starts_with("leasefs "), "printed a command that is not on PATH: {leases}");
    for c in &commands {
        if c.starts_with("cat ") && c.contains("revoked.jsonl") {
            continue; // written only once a lease has been revoked
        }
        let o = Command::new("sh").arg("-c").arg(c).current_dir(dir.path()).output().unwrap();
        assert!(o.status.success(), "{c}: {}", String::from_utf8_lossy(&o.stderr));
        assert!(!o.stdout.is_empty(), "{c} printed nothing");
    }
    // Ctrl-C unmounts.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "the demo did not stop on Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!is_mounted(&mnt));
}
