//! The `leasefs` command line (clap): parses arguments and calls into the library; no filesystem logic here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use leasefs::config::Config;
use leasefs::daemon::{self, RunOptions};

const ABOUT: &str = "A FUSE filesystem that exposes secrets as files.

Listing is metadata-only; a static secret's bytes are fetched when it is opened; opening a
dynamic secret issues a fresh short-lived credential whose bytes vanish when its lease expires.";

const AFTER: &str = "EXAMPLES:
    leasefs demo                                   # mount a sample catalog at ./secrets
    leasefs mount /secrets --config /etc/leasefs/config.json
    leasefs check --config /etc/leasefs/config.json
    leasefs leases /secrets                        # live leases, metadata only
    leasefs revoke /secrets 5f0c9e...              # end a lease now
    mount -t leasefs /etc/leasefs/config.json /secrets   # via /usr/sbin/mount.leasefs

FILES:
    /etc/leasefs/config.json      configuration (must not be group/world readable)
    /var/lib/leasefs/journal.jsonl  lease journal: leases to revoke after a crash
    MOUNTPOINT/.leasefs/          status.json, leases.json, metrics, revoke (root only)

SIGNALS:
    SIGHUP reloads documents and reopens the audit log; SIGTERM/SIGINT revoke live
    leases (revoke_on_shutdown) and unmount.

EXIT STATUS:
    0  success
    1  check found invalid files, or the daemon failed while running
    2  the command line or the configuration is invalid

See docs/ in the source tree for the configuration reference and the security model.";

#[derive(Parser)]
#[command(name = "leasefs", version, about = ABOUT, long_about = ABOUT, after_long_help = AFTER)]
struct Cli {
    /// Log level: error, warn, info, debug, trace (or a tracing filter such as leasefs=debug).
    #[arg(long, global = true, default_value = "info", env = "LEASEFS_LOG")]
    log_level: String,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Mount a secret catalog and serve it in the foreground until SIGTERM or SIGINT.
    ///
    /// The mount is ready when it appears in /proc/mounts. SIGHUP reloads the documents
    /// without unmounting. A mountpoint left dead by a killed daemon is detached and reused.
    Mount {
        /// Where to mount (created if missing).
        mountpoint: PathBuf,
        /// The configuration file (JSON; see docs/configuration.md).
        #[arg(long, short)]
        config: PathBuf,
        /// Accept document and config files readable by group or others.
        #[arg(long)]
        insecure_perms: bool,
    },
    /// Mount an embedded sample catalog (no configuration needed) and print commands to try.
    Demo {
        /// Where to mount.
        #[arg(default_value = "./secrets")]
        mountpoint: PathBuf,
    },
    /// Validate the configuration and every document; name each bad file with line and column.
    Check {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        insecure_perms: bool,
    },
    /// List the live leases of a mounted leasefs (metadata only, never values).
    Leases {
        mountpoint: PathBuf,
        /// Print the JSON of /.leasefs/leases.json instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff), e.g. `leasefs manpage | gzip > /usr/share/man/man1/leasefs.1.gz`.
    Manpage,
    /// Revoke a lease now (its file then reads "Key has expired"; the issuer revokes it).
    Revoke {
        mountpoint: PathBuf,
        /// The lease id (see `leasefs leases`).
        #[arg(required_unless_present = "all")]
        lease_id: Option<String>,
        /// Revoke every live lease.
        #[arg(long, conflicts_with = "lease_id")]
        all: bool,
    },
}

/// Libraries whose debug output can hold secrets: tokio-postgres logs statement text (such as
/// `CREATE ROLE … PASSWORD`), aws-sigv4 traces what it signs, HTTP stacks trace headers.
const QUIET: &[&str] = &[
    "tokio_postgres",
    "postgres_protocol",
    "aws_sigv4",
    "aws_smithy_runtime_api",
    "reqwest",
    "hyper",
    "hyper_util",
    "h2",
    "rustls",
];

fn init_logs(level: &str, format: LogFormat) {
    // Records from the `log` crate (tokio-postgres, fuser) come through this bridge; the quiet
    // crates are dropped here whatever the level, since target filters do not reach bridged records.
    let _ = tracing_log::LogTracer::builder()
        .ignore_all(QUIET.iter().copied())
        .with_max_level(log::LevelFilter::Trace)
        .init();
    let caps: String = QUIET.iter().map(|c| format!(",{c}=info")).collect();
    let filter = tracing_subscriber::EnvFilter::try_new(format!("{level}{caps}"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("info{caps}")));
    // Colour only on a terminal: a log file or journald gets plain text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let json = matches!(format, LogFormat::Json);
    let writer = leasefs::logcap::CappedStderr { json };
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_ansi(colour);
    let _ = match format {
        LogFormat::Text => tracing::subscriber::set_global_default(b.finish()),
        LogFormat::Json => tracing::subscriber::set_global_default(b.json().finish()),
    };
}

fn main() -> ExitCode {
    // The daemon restarts its exec guard as this binary with a hidden argument (SPEC §10.3).
    if std::env::args_os().nth(1).is_some_and(|a| a == leasefs::issuer::guard::GUARD_ARG) {
        leasefs::issuer::guard::run_spawned();
    }
    // Installed as /usr/sbin/mount.leasefs, the binary speaks mount(8)'s helper protocol.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if std::path::Path::new(&argv0).file_name().is_some_and(|n| n.to_string_lossy().starts_with("mount.leasefs")) {
        return mount_helper(std::env::args().skip(1).collect());
    }
    let cli = Cli::parse();
    init_logs(&cli.log_level, cli.log_format);
    match cli.command {
        Command::Mount { mountpoint, config, insecure_perms } => {
            let cfg = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("leasefs: {e}");
                    return ExitCode::from(2);
                }
            };
            if !insecure_perms {
                if let Err(e) = leasefs::trust::check_config_perms(&config) {
                    eprintln!("leasefs: {e}");
                    return ExitCode::from(2);
                }
            }
            finish(daemon::run(&mountpoint, cfg, RunOptions { insecure_perms, banner: None }))
        }
        Command::Demo { mountpoint } => {
            let dir = match tempfile::Builder::new().prefix("leasefs-demo-").tempdir() {
                Ok(d) => d,
                Err(e) => return finish(Err(e.into())),
            };
            let cfg = match leasefs::demo::write_catalog(dir.path()) {
                Ok(c) => c,
                Err(e) => return finish(Err(e.into())),
            };
            let banner = leasefs::demo::banner(&mountpoint, dir.path());
            finish(daemon::run(&mountpoint, cfg, RunOptions { insecure_perms: false, banner: Some(banner) }))
        }
        Command::Check { config, insecure_perms } => check(&config, insecure_perms),
        Command::Leases { mountpoint, json } => leases(&mountpoint, json),
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "leasefs", &mut out);
            print_all(&out)
        }
        Command::Manpage => {
            let mut out = Vec::new();
            match clap_mangen::Man::new(Cli::command()).render(&mut out) {
                Ok(()) => print_all(&out),
                Err(e) => finish(Err(e.into())),
            }
        }
        Command::Revoke { mountpoint, lease_id, all } => {
            let target = if all { "all".to_string() } else { lease_id.unwrap_or_default() };
            let path = mountpoint.join(".leasefs/revoke");
            match std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{target}\n").as_bytes()))
            {
                Ok(()) => {
                    println!("revoked {target}");
                    ExitCode::SUCCESS
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) && path.exists() => {
                    eprintln!("leasefs: no live lease {target} at {}", mountpoint.display());
                    ExitCode::from(1)
                }
                Err(e) => {
                    eprintln!("leasefs: {}: {e}", path.display());
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn leases(mountpoint: &std::path::Path, json: bool) -> ExitCode {
    let path = mountpoint.join(".leasefs/leases.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("leasefs: {}: {e} (is leasefs mounted there, and are you root?)", path.display());
            return ExitCode::from(1);
        }
    };
    if json {
        print!("{text}");
        return ExitCode::SUCCESS;
    }
    let list: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap_or_default();
    println!(
        "{:<32}  {:<8}  {:>6}  {:>7}  {:<12}  {:>9}  PATH",
        "LEASE", "ISSUER", "UID", "PID", "COMMAND", "REMAINING"
    );
    for l in &list {
        let s = |k: &str| {
            l.get(k).map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())).unwrap_or_default()
        };
        println!(
            "{:<32}  {:<8}  {:>6}  {:>7}  {:<12}  {:>8}s  {}",
            s("id"),
            s("issuer"),
            s("uid"),
            s("pid"),
            s("comm"),
            s("remaining_seconds"),
            s("path")
        );
    }
    ExitCode::SUCCESS
}

/// Writes to stdout; a closed pipe (`| head`) is not an error.
fn print_all(bytes: &[u8]) -> ExitCode {
    use std::io::Write;
    match std::io::stdout().write_all(bytes) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => finish(Err(e.into())),
        _ => ExitCode::SUCCESS,
    }
}

fn finish(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("leasefs: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn check(config: &std::path::Path, insecure_perms: bool) -> ExitCode {
    let cfg = match Config::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let mut bad = 0usize;
    if !insecure_perms {
        if let Err(e) = leasefs::trust::check_config_perms(config) {
            eprintln!("{e}");
            bad += 1;
        }
    }
    let opts = RunOptions { insecure_perms, banner: None };
    let fs = match daemon::build_fs(&cfg, &opts, false) {
        Ok((f, _)) => f,
        Err(e) => {
            eprintln!("{}: {e:#}", config.display());
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return finish(Err(e.into())),
    };
    let problems = rt.block_on(fs.refresh());
    for p in &problems {
        eprintln!("{p}");
    }
    bad += problems.len();
    for d in fs.catalog().dangling_links(&fs.tree()) {
        eprintln!("{d}");
        bad += 1;
    }
    // Lease settings that only meet the configuration's defaults here: an entry whose leases could
    // never be reused (the mount serves it; every open then issues).
    for (prefix, meta) in fs.catalog().listed() {
        if !matches!(meta.kind, leasefs::secret::SecretKind::Dynamic { .. }) {
            continue;
        }
        let shown = format!("{}/{}", prefix.trim_end_matches('/'), meta.path());
        if let Some(w) = leasefs::attrs::overhang_warning(&meta, &shown) {
            eprintln!("warning: {w}");
        }
        if let Some((key, why)) = meta.policy().reuse_conflict(&cfg.defaults) {
            let path = format!("{}/{}", prefix.trim_end_matches('/'), meta.path());
            let place = leasefs::attrs::place_of(&meta, key).unwrap_or(path);
            eprintln!("{place}: attributes.{key}: {why}");
            bad += 1;
        }
        // A rotate_command's program, checked as it would be before it runs.
        if let Some(argv) = &meta.policy().rotate_command {
            let trust = leasefs::trust::Trust::new(!insecure_perms);
            if let Err(why) = trust.check_program(&argv[0], leasefs::issuer::exec::PATH) {
                let path = format!("{}/{}", prefix.trim_end_matches('/'), meta.path());
                let place = leasefs::attrs::place_of(&meta, "rotate_command").unwrap_or(path);
                eprintln!("{place}: attributes.rotate_command {:?} is not trusted: {why}", argv[0]);
                bad += 1;
            }
        }
    }
    // The programs exec bases would run, checked as the daemon would before running them.
    let trust = leasefs::trust::Trust::new(!insecure_perms);
    for (base, source) in fs.catalog().bases_of(leasefs::policy::IssuerKind::Exec) {
        match rt.block_on(source.read(&base)) {
            Ok(fields) => {
                for p in leasefs::issuer::exec::check_programs(&trust, &fields) {
                    eprintln!("{}: base secret {}: {p}", source.describe(), base.path().replace('/', ":"));
                    bad += 1;
                }
            }
            Err(e) => {
                eprintln!("{}: base secret {}: {e}", source.describe(), base.path().replace('/', ":"));
                bad += 1;
            }
        }
    }
    if insecure_perms {
        eprintln!("warning: --insecure-perms: ownership and mode checks are off");
    }
    for w in sdk_refresh_warnings(&fs, &cfg.defaults) {
        eprintln!("warning: {w}");
    }
    for (name, h) in fs.health() {
        if !h.up {
            eprintln!("{name}: {}", h.last_error.unwrap_or_default());
            bad += 1;
        }
    }
    let c = fs.tree().counts;
    if bad == 0 {
        println!("ok: {} static, {} dynamic, {} base secrets", c.static_secrets, c.dynamic_secrets, c.base_secrets);
        ExitCode::SUCCESS
    } else {
        println!(
            "{bad} problem(s); {} static, {} dynamic, {} base secrets are valid",
            c.static_secrets, c.dynamic_secrets, c.base_secrets
        );
        ExitCode::from(1)
    }
}

/// AWS SDKs refresh `credential_process` credentials once fewer than 15 minutes are left (10
/// minutes mandatory): an entry whose lease is shorter makes them run the process — a new STS
/// session — before nearly every call.
fn sdk_refresh_warnings(fs: &leasefs::fs::LeaseFs, defaults: &leasefs::config::Defaults) -> Vec<String> {
    const REFRESH: std::time::Duration = std::time::Duration::from_secs(16 * 60);
    let mut out = Vec::new();
    for (prefix, meta) in fs.catalog().listed() {
        if !matches!(meta.kind, leasefs::secret::SecretKind::Dynamic { .. }) {
            continue;
        }
        let p = meta.policy().effective(defaults);
        if p.format == leasefs::render::Format::CredentialProcess && p.ttl < REFRESH {
            let path = format!("{}/{}", prefix.trim_end_matches('/'), meta.path());
            out.push(format!(
                "{path}: credential_process with a {}s lease: AWS SDKs refresh credentials with less than 15 minutes left, so they would run the process (a new STS session) before nearly every call; use a ttl of 1h and \"reuse\": \"uid\" (see docs/integrations.md)",
                p.ttl.as_secs()
            ));
        }
    }
    out
}

/// `mount.leasefs CONFIG MOUNTPOINT [-sfnv] [-o OPTIONS]`, as mount(8) and fstab call it:
/// starts `leasefs mount` detached and returns once the mount is live (exit 32 if it fails).
///
/// Options: `insecure_perms`, `log=FILE` (the daemon's log; default: discarded),
/// `log_level=LEVEL`; mount(8)'s generic options (defaults, _netdev, nofail, auto, x-systemd.*…)
/// are accepted and ignored.
fn mount_helper(args: Vec<String>) -> ExitCode {
    const FAIL: u8 = 32;
    let mut pos = Vec::new();
    let mut opts = Vec::new();
    let mut fake = false;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-o" => opts.extend(it.next().unwrap_or_default().split(',').map(str::to_string)),
            "-t" | "-N" => {
                it.next();
            }
            "-f" => fake = true,
            "-s" | "-n" | "-v" => {}
            s if s.starts_with("-o") => opts.extend(s[2..].split(',').map(str::to_string)),
            _ => pos.push(a),
        }
    }
    let [config, mountpoint] = pos.as_slice() else {
        eprintln!("usage: mount.leasefs CONFIG MOUNTPOINT [-o options]");
        return ExitCode::from(FAIL);
    };
    if fake {
        return ExitCode::SUCCESS;
    }
    let exe = std::env::current_exe().unwrap_or_else(|_| "leasefs".into());
    let mut cmd = std::process::Command::new(exe);
    let mut log: Option<String> = None;
    let mut level = "info".to_string();
    let mut extra = Vec::new();
    for o in opts.iter().filter(|o| !o.is_empty()) {
        match o.split_once('=') {
            Some(("log", v)) => log = Some(v.to_string()),
            Some(("log_level", v)) => level = v.to_string(),
            None if o == "insecure_perms" => extra.push("--insecure-perms".to_string()),
            _ => {} // generic mount(8) options
        }
    }
    cmd.arg("--log-level").arg(&level).arg("mount").arg(mountpoint).arg("--config").arg(config).args(&extra);
    cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null());
    match &log {
        Some(p) => match std::fs::OpenOptions::new().create(true).append(true).open(p) {
            Ok(f) => {
                cmd.stderr(f);
            }
            Err(e) => {
                eprintln!("mount.leasefs: cannot open the log {p}: {e}");
                return ExitCode::from(FAIL);
            }
        },
        None => {
            cmd.stderr(std::process::Stdio::null());
        }
    }
    // SAFETY: setsid in the child before exec: the daemon outlives mount(8) and its terminal.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mount.leasefs: cannot start leasefs: {e}");
            return ExitCode::from(FAIL);
        }
    };
    let target = std::fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.into());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if daemon::is_mounted(&target) && std::fs::metadata(&target).is_ok() {
            return ExitCode::SUCCESS;
        }
        if let Ok(Some(st)) = child.try_wait() {
            eprintln!(
                "mount.leasefs: leasefs exited ({st}) before mounting {}{}",
                target.display(),
                log.as_ref().map(|l| format!("; see {l}")).unwrap_or_else(|| "; add -o log=FILE to see why".into())
            );
            return ExitCode::from(FAIL);
        }
        if std::time::Instant::now() > deadline {
            eprintln!("mount.leasefs: {} was not mounted within 30 s", target.display());
            return ExitCode::from(FAIL);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
