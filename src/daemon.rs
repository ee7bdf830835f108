//! The mount lifecycle: build sources and the filesystem, recover a dead mountpoint, mount, serve signals (HUP reload, TERM/INT stop), unmount.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use fuser::{MountOption, SessionACL};
use tokio::signal::unix::{SignalKind, signal};

use crate::audit::Audit;
use crate::config::{Config, SourceKind};
use crate::fs::tree::Owner;
use crate::fs::{LeaseFs, Settings, SourceSpec};
use crate::fuse::FuseAdapter;
use crate::issuer::registry::Issuers;
use crate::lease::LeaseManager;
use crate::lease::journal::{Journal, Record};
use crate::metrics::Metrics;
use crate::notify::notify;
use crate::paths::{parse_mode, resolve_group, resolve_user, split_path};
use crate::source::Source;
use crate::source::local::LocalSource;
use crate::source::openbao::OpenBaoSource;

/// Options that come from the command line rather than the config file.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub insecure_perms: bool,
    /// Printed once the mount is ready (the demo's hints).
    pub banner: Option<String>,
}

fn effective_ids() -> (u32, u32) {
    // SAFETY: geteuid/getegid cannot fail.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

/// Builds the configured sources, in order, with their prefixes and default ownership.
pub fn build_sources(cfg: &Config, opts: &RunOptions) -> anyhow::Result<Vec<SourceSpec>> {
    let (uid, gid) = effective_ids();
    crate::tls::set_max_response_bytes(cfg.defaults.max_response_bytes);
    let mut out = Vec::new();
    for sc in &cfg.sources {
        let own = sc.ownership();
        let owner = Owner {
            uid: own.owner.as_ref().map(resolve_user).transpose().map_err(anyhow::Error::msg)?.unwrap_or(uid),
            gid: own.group.as_ref().map(resolve_group).transpose().map_err(anyhow::Error::msg)?.unwrap_or(gid),
            file_mode: own.mode.as_deref().map(parse_mode).transpose().map_err(anyhow::Error::msg)?.unwrap_or(0o400),
            dir_mode: 0o555,
        };
        let prefix = split_path(sc.prefix().trim_start_matches('/'), true).map_err(anyhow::Error::msg)?;
        let source: Arc<dyn Source> = match sc.kind {
            SourceKind::Local => Arc::new(
                LocalSource::new(sc.path.clone().unwrap_or_default(), !opts.insecure_perms)
                    .with_sizes(sc.page_cache())
                    .with_defaults(cfg.defaults.clone()),
            ),
            SourceKind::Openbao => Arc::new(OpenBaoSource::new(
                sc.endpoints(),
                sc.auth.clone().unwrap_or(crate::openbao_auth::AuthConfig::Token {
                    token_file: sc.token_file.clone().unwrap_or_default(),
                }),
                sc.kv_mounts.clone(),
                sc.dynamic_mounts.clone(),
                cfg.defaults.issue_timeout.0,
            )),
        };
        out.push(SourceSpec { source, prefix, owner, page_cache: sc.page_cache() });
    }
    Ok(out)
}

/// Builds the filesystem. For a mount (`mounting`), the audit log is opened and the lease journal
/// in `state_dir` is opened and replayed (the records it returns are the leases a previous run
/// left behind); otherwise (`check`) nothing is written anywhere.
pub fn build_fs(cfg: &Config, opts: &RunOptions, mounting: bool) -> anyhow::Result<(LeaseFs, Vec<Record>)> {
    let (uid, gid) = effective_ids();
    let audit = Arc::new(match &cfg.audit_log {
        Some(p) if mounting => Audit::open_trusted(p, !opts.insecure_perms)
            .with_context(|| format!("cannot use the audit log {}", p.display()))?,
        _ => Audit::disabled(),
    });
    let (journal, pending) = if mounting {
        let (j, replay) = Journal::open_trusted(&cfg.state_dir, !opts.insecure_perms)
            .with_context(|| format!("cannot use the state_dir {} (the lease journal)", cfg.state_dir.display()))?;
        for p in &replay.problems {
            tracing::warn!("{}: {p}", j.path().display());
        }
        (Some(j), replay.pending)
    } else {
        (None, Vec::new())
    };
    let leases = LeaseManager::new(
        Issuers::builtin(cfg.defaults.issue_timeout.0, !opts.insecure_perms),
        journal,
        cfg.defaults.clone(),
        audit.clone(),
        Arc::new(Metrics::default()),
        crate::clock::Clock::System,
    );
    let settings = Settings {
        defaults: cfg.defaults.clone(),
        root_owner: Owner { uid, gid, file_mode: 0o400, dir_mode: 0o555 },
        control: true,
    };
    Ok((LeaseFs::new(settings, build_sources(cfg, opts)?, audit, leases), pending))
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap_or_default()
}

/// Lazily detaches a mount (works while files are still open, unlike fuser 0.18's own unmount).
/// Without privilege, `fusermount3 -u -z` does the same.
pub fn detach(p: &Path) -> std::io::Result<()> {
    // SAFETY: umount2 with a valid C string.
    let rc = unsafe { libc::umount2(cpath(p).as_ptr(), libc::MNT_DETACH) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EPERM) {
        let st = std::process::Command::new("fusermount3").arg("-u").arg("-z").arg(p).status()?;
        if st.success() {
            return Ok(());
        }
    }
    Err(err)
}

/// Whether `p` is a mount point listed in /proc/mounts.
pub fn is_mounted(p: &Path) -> bool {
    mount_type(p).is_some()
}

/// The file system type of the mount at `p` (the last one, if several are stacked there).
fn mount_type(p: &Path) -> Option<String> {
    let text = std::fs::read_to_string("/proc/mounts").ok()?;
    let want = p.to_string_lossy().replace(' ', "\\040");
    text.lines()
        .rev()
        .filter(|l| l.split(' ').nth(1) == Some(want.as_str()))
        .find_map(|l| l.split(' ').nth(2).map(str::to_string))
}

/// `statfs` always reaches the filesystem (unlike `stat`, which the kernel may answer from its
/// attribute cache), so it tells a dead FUSE mount (`ENOTCONN`) from a live one.
fn statfs_errno(p: &Path) -> Option<i32> {
    // SAFETY: statfs into a zeroed struct we own, with a valid C string.
    let rc = unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(cpath(p).as_ptr(), &mut st)
    };
    if rc == 0 { None } else { std::io::Error::last_os_error().raw_os_error() }
}

/// Makes the mountpoint usable: creates it if missing, detaches a mount left dead by a killed daemon,
/// and refuses one that is live.
pub fn prepare_mountpoint(p: &Path) -> anyhow::Result<PathBuf> {
    if statfs_errno(p) == Some(libc::ENOTCONN) {
        tracing::warn!(mountpoint = %p.display(), "found a dead mount left by a previous run; detaching it");
        detach(p).with_context(|| format!("cannot detach the dead mount at {}", p.display()))?;
    }
    match std::fs::metadata(p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(p).with_context(|| format!("cannot create the mountpoint {}", p.display()))?;
        }
        Err(e) => return Err(e).with_context(|| format!("cannot use the mountpoint {}", p.display())),
        Ok(m) if !m.is_dir() => bail!("{} is not a directory", p.display()),
        Ok(_) => {}
    }
    let abs = std::fs::canonicalize(p).with_context(|| format!("cannot resolve {}", p.display()))?;
    // A FUSE mount there is another leasefs (or another FUSE file system): refused. Any other
    // mount point — a container's bind mount of /secrets, a tmpfs — is mounted over.
    if mount_type(&abs).is_some_and(|t| t.starts_with("fuse")) {
        bail!("{} is already a mount point of a FUSE file system (is another leasefs running there?)", abs.display());
    }
    Ok(abs)
}

/// Mounts and serves until SIGTERM/SIGINT (or an external unmount), then unmounts cleanly.
pub fn run(mountpoint: &Path, cfg: Config, opts: RunOptions) -> anyhow::Result<()> {
    // First, while this process has one thread and no files: exec scripts die with the daemon.
    if let Err(e) = crate::issuer::guard::start() {
        tracing::warn!(error = %e, "cannot fork the exec guard; exec scripts wait until one is started another way");
    }
    crate::memlock::harden_process();
    if opts.insecure_perms {
        tracing::warn!(
            "--insecure-perms: ownership and mode checks of the config, documents, their directories, exec programs, state_dir, the journal and the audit log are OFF; anyone who can write them can read every secret and run programs as this daemon"
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("leasefs-rt").build()?;
    let (fs, orphans) = build_fs(&cfg, &opts, true)?;
    let fs = Arc::new(fs);
    let mountpoint = prepare_mountpoint(mountpoint)?;

    rt.block_on(async {
        // Signals are registered before mounting so that none is lost once the mount is visible.
        let mut signals = Signals::new()?;
        load(&fs, orphans).await;
        let mut mount = Mounted::start(&fs, &cfg, &mountpoint)?;
        let counts = fs.tree().counts;
        notify(&format!(
            "READY=1\nSTATUS=serving {} static and {} dynamic secrets at {}",
            counts.static_secrets,
            counts.dynamic_secrets,
            mountpoint.display()
        ));
        if let Some(b) = &opts.banner {
            println!("{b}");
        }
        serve(&fs, &cfg, &mut signals, &mut mount.done).await;
        notify("STOPPING=1\nSTATUS=revoking live leases and unmounting");
        fs.leases().shutdown(cfg.defaults.revoke_on_shutdown).await;
        mount.stop(&mountpoint).await;
        anyhow::Ok(())
    })?;
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// The signals the daemon answers.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// Loads the catalog, then revokes what a previous run left (crash, kill -9) before anything new
/// is issued.
async fn load(fs: &Arc<LeaseFs>, orphans: Vec<Record>) {
    let problems = fs.refresh().await;
    for p in &problems {
        tracing::warn!("skipped: {p}");
    }
    fs.leases().recover(orphans, |source, base| fs.resolve_base(source, base)).await;
    let counts = fs.tree().counts;
    tracing::info!(
        static_secrets = counts.static_secrets,
        dynamic_secrets = counts.dynamic_secrets,
        skipped = problems.len(),
        "catalog loaded"
    );
}

/// The session's options: FUSE mount options, who may enter, request threads.
fn fuse_config(cfg: &Config) -> fuser::Config {
    let mut fcfg = fuser::Config::default();
    fcfg.mount_options = vec![
        MountOption::FSName("leasefs".into()),
        MountOption::Subtype("leasefs".into()),
        MountOption::DefaultPermissions,
        MountOption::NoSuid,
        MountOption::NoDev,
    ];
    fcfg.acl = if cfg.allow_other { SessionACL::All } else { SessionACL::Owner };
    // One request thread per two cores, at least two and at most four: handlers never block
    // (slow work is a task), and a second loop keeps `stat` answered while the other is busy.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    fcfg.n_threads = Some((cores / 2).clamp(2, 4));
    fcfg.clone_fd = true;
    fcfg
}

/// A mounted session served by its own thread.
struct Mounted {
    unmounter: fuser::SessionUnmounter,
    /// Fires when the session ends (an unmount from outside, or ours).
    done: tokio::sync::oneshot::Receiver<()>,
    thread: std::thread::JoinHandle<std::io::Result<()>>,
}

impl Mounted {
    /// Starts the notifier thread, mounts, and starts serving requests; each failure is a
    /// startup error (a filesystem whose pages are never dropped must not run).
    fn start(fs: &Arc<LeaseFs>, cfg: &Config, mountpoint: &Path) -> anyhow::Result<Mounted> {
        let notifier = Arc::new(std::sync::OnceLock::new());
        let notes = crate::notifier::Notes::start(notifier.clone()).context("cannot start the notifier thread")?;
        let adapter = FuseAdapter::new(fs.clone(), tokio::runtime::Handle::current(), notes.clone());
        let mut session = fuser::Session::new(adapter, mountpoint, &fuse_config(cfg))
            .with_context(|| format!("cannot mount {}", mountpoint.display()))?;
        let _ = notifier.set(session.notifier());
        fs.on_change(move |changes| crate::fuse::invalidate(&notes, changes));
        let unmounter = session.unmount_callable();
        let (done_tx, done) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("leasefs-fuse".into())
            .spawn(move || {
                let r = session.run();
                let _ = done_tx.send(());
                r
            })
            .context("cannot start the request thread")?;
        tracing::info!(mountpoint = %mountpoint.display(), "mounted");
        Ok(Mounted { unmounter, done, thread })
    }

    /// Unmounts: plainly if nothing is open, else lazily; waits (bounded) for the session to end.
    async fn stop(mut self, mountpoint: &Path) {
        // A plain unmount first (it succeeds when nothing is open, and takes fuser's own handle so
        // it never retries); with files still open it fails with EBUSY and we detach lazily instead.
        if let Err(e) = self.unmounter.unmount() {
            tracing::debug!(error = %e, "plain unmount failed; detaching lazily");
        }
        if is_mounted(mountpoint) {
            if let Err(e) = detach(mountpoint) {
                tracing::warn!(error = %e, "lazy unmount failed");
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while !self.thread.is_finished() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if self.thread.is_finished() {
            let _ = self.thread.join();
        } else {
            tracing::info!("files are still open on the detached mount; they will fail once the process exits");
        }
        tracing::info!(mountpoint = %mountpoint.display(), "unmounted");
    }
}

/// Serves signals and periodic refreshes until SIGTERM/SIGINT or the mount goes away.
async fn serve(fs: &Arc<LeaseFs>, cfg: &Config, s: &mut Signals, done: &mut tokio::sync::oneshot::Receiver<()>) {
    let refresh_every = cfg.defaults.refresh.0.max(Duration::from_secs(1));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + refresh_every, refresh_every);
    loop {
        tokio::select! {
            _ = s.term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = s.int.recv() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = s.hup.recv() => {
                tracing::info!("SIGHUP: reloading");
                notify("RELOADING=1");
                fs.audit().reopen();
                for p in fs.refresh().await { tracing::warn!("skipped: {p}"); }
                notify("READY=1");
            }
            _ = tick.tick() => {
                // A refresh a slow server holds up to issue_timeout never delays a shutdown:
                // dropped unfinished, it has swapped nothing in.
                tokio::select! {
                    problems = fs.refresh() => for p in problems { tracing::debug!("skipped: {p}"); },
                    _ = s.term.recv() => { tracing::info!("SIGTERM during a refresh: shutting down"); break; }
                    _ = s.int.recv() => { tracing::info!("SIGINT during a refresh: shutting down"); break; }
                }
            }
            _ = &mut *done => { tracing::info!("unmounted from outside (umount); revoking live leases and exiting"); break; }
        }
    }
}
