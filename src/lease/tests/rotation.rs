//! Rotation with real processes: the openers of a lease get its signal at `rotate_at`.

use super::*;

/// Waits (at most `limit`, polling) for a child to exit.
fn exited(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let until = std::time::Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(std::time::Instant::now() < until, "pid {} did not exit within {limit:?}", child.id());
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A `sleep 30` that dies of SIGHUP whatever the test runner's disposition of it (a runner
/// started under `nohup` ignores SIGHUP, and an ignored signal stays ignored across exec).
fn sleeper() -> std::process::Child {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new("sleep");
    cmd.arg("30");
    // SAFETY: only signal(2), async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGHUP, libc::SIG_DFL);
            Ok(())
        });
    }
    cmd.spawn().unwrap()
}

#[tokio::test(start_paused = true)]
async fn at_rotate_at_the_processes_that_opened_a_lease_get_its_signal_and_it_is_not_shared_again() {
    use std::os::unix::process::ExitStatusExt;
    let i = Arc::new(TestIssuer::default());
    let m = manager(&i, defaults());
    let mut reader = sleeper();
    let mut other = sleeper();
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    let attrs = serde_json::json!({"ttl": "30s", "reuse": "uid", "rotate_signal": "SIGHUP", "rotate_at": 0.5});
    // The reader's start time is read from /proc (start 0).
    let l = m.open(request_at("rot", attrs.clone(), uid, reader.id(), 0)).await.ok().unwrap();
    assert!(l.requester.start > 0, "the opener's start time is recorded");
    // An opener recorded with another start time: an earlier process whose pid `other` got since.
    let (_, other_start) = crate::requester::process_stat(other.id()).unwrap();
    let again = m.open(request_at("rot", attrs.clone(), uid, other.id(), other_start + 1)).await.ok().unwrap();
    assert_eq!(again.id, l.id, "shared by uid");
    advance(14).await;
    assert!(!l.is_retired(), "not rotated before half the lease");
    // The definite event: the rotation ran (the lease is retired for sharing), at 15 s.
    for _ in 0..5 {
        if l.is_retired() {
            break;
        }
        advance(1).await;
    }
    assert!(l.is_retired(), "rotated by 19 s");
    let st = exited(&mut reader, Duration::from_secs(10));
    assert_eq!(st.signal(), Some(libc::SIGHUP), "the reader got the rotation signal");
    // `other` is not the recorded opener: it was not signalled. Had it been, that SIGHUP (fatal by
    // default, so it set the exit status when it was sent) would be what it died of, not SIGKILL.
    other.kill().unwrap();
    assert_eq!(exited(&mut other, Duration::from_secs(10)).signal(), Some(libc::SIGKILL), "a later process at the pid");
    let fresh = m.open(request("rot", attrs, uid, 1)).await.ok().unwrap();
    assert_ne!(fresh.id, l.id, "a re-read after rotation gets a fresh lease");
    assert!(l.is_live(), "the old lease lives on until its expiry");
}
