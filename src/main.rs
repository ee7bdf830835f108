//! The `leasefs` command line (clap): parses arguments and calls into the library; no filesystem logic here.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use leasefs::config::Config;
use leasefs::daemon::{self, RunOptions};

mod cli;

const ABOUT: &str = "A FUSE filesystem that exposes secrets as files.

Listing is metadata-only; a static secret's bytes are fetched when it is opened; opening a
dynamic secret issues a fresh short-lived credential whose bytes vanish when its lease expires.";

#[derive(Parser)]
#[command(name = "leasefs", version, about = ABOUT, long_about = ABOUT)]
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
        /// The configuration file (JSON; see docs/configuration.md, installed in /usr/share/doc/leasefs).
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
        /// The configuration file to check, with every document its sources name.
        #[arg(long, short)]
        config: PathBuf,
        /// Accept document and config files readable by group or others.
        #[arg(long)]
        insecure_perms: bool,
    },
    /// List the live leases of a mounted leasefs (metadata only, never values).
    Leases {
        /// Where leasefs is mounted.
        mountpoint: PathBuf,
        /// Print the JSON of /.leasefs/leases.json instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell to print a completion script for.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `leasefs manpage | gzip > /usr/share/man/man1/leasefs.1.gz`.
    Manpage,
    /// Revoke a lease now (its file then reads "Key has expired"; the issuer revokes it).
    Revoke {
        /// Where leasefs is mounted.
        mountpoint: PathBuf,
        /// The lease id (see `leasefs leases`).
        #[arg(required_unless_present = "all")]
        lease_id: Option<String>,
        /// Revoke every live lease.
        #[arg(long, conflicts_with = "lease_id")]
        all: bool,
    },
}

fn main() -> ExitCode {
    // The daemon restarts its exec guard as this binary with a hidden argument.
    if std::env::args_os().nth(1).is_some_and(|a| a == leasefs::issuer::guard::GUARD_ARG) {
        leasefs::issuer::guard::run_spawned();
    }
    // Installed as /usr/sbin/mount.leasefs, the binary speaks mount(8)'s helper protocol.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if std::path::Path::new(&argv0).file_name().is_some_and(|n| n.to_string_lossy().starts_with("mount.leasefs")) {
        return cli::mount_helper::run(std::env::args().skip(1).collect());
    }
    let cli = match Cli::command()
        .after_long_help(cli::manpage::after_help())
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m))
    {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    cli::logs::init(&cli.log_level, matches!(cli.log_format, LogFormat::Json));
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
            if let Err(e) = cli::check::local_dirs_exist(&cfg, &config) {
                eprintln!("leasefs: {e}");
                return ExitCode::from(2);
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
        Command::Check { config, insecure_perms } => cli::check::check(&config, insecure_perms),
        Command::Leases { mountpoint, json } => leases(&mountpoint, json),
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "leasefs", &mut out);
            print_all(&out)
        }
        Command::Manpage => {
            let mut out = Vec::new();
            match cli::manpage::render(Cli::command(), &mut out) {
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
    match std::io::stdout().write_all(bytes) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => finish(Err(e.into())),
        _ => ExitCode::SUCCESS,
    }
}

fn finish(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Not eprintln!: started by mount.leasefs without a log, stderr may be a closed pipe.
            let _ = writeln!(std::io::stderr(), "leasefs: {e:#}");
            ExitCode::from(1)
        }
    }
}
