//! The log: tracing to stderr (text or JSON lines, each capped), with the `log` crate's records
//! bridged in — minus the crates that could print secrets, and minus fuser's false alarm.

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

pub fn init(level: &str, json: bool) {
    // Records from the `log` crate (tokio-postgres, fuser) come through this bridge; the quiet
    // crates are dropped here whatever the level, since target filters do not reach bridged records.
    if log::set_logger(Box::leak(Box::new(Bridge(tracing_log::LogTracer::new())))).is_ok() {
        log::set_max_level(log::LevelFilter::Trace);
    }
    let mut caps: String = QUIET.iter().map(|c| format!(",{c}=info")).collect();
    // fuser logs one debug line per kernel request: tens of thousands a second under load, which
    // would drown leasefs's own debug lines and fill a disk. They come at `trace` only.
    if !level.contains("fuser") && !level.eq_ignore_ascii_case("trace") {
        caps.push_str(",fuser::request=info");
    }
    let filter = tracing_subscriber::EnvFilter::try_new(format!("{level}{caps}"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("info{caps}")));
    // Colour only on a terminal: a log file or journald gets plain text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let writer = leasefs::logcap::CappedStderr { json };
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_ansi(colour);
    let _ = if json {
        tracing::subscriber::set_global_default(b.json().finish())
    } else {
        tracing::subscriber::set_global_default(b.finish())
    };
}

/// The `log` → tracing bridge. Besides dropping [`QUIET`] crates, it takes fuser's warning that
/// it could not unmount with EINVAL down to debug: fuser unmounts again when its session ends, and
/// after `umount /secrets` the kernel has already done it (EINVAL: not a mount point). Any other
/// unmount failure stays a warning.
struct Bridge(tracing_log::LogTracer);

impl Bridge {
    fn quiet(target: &str) -> bool {
        QUIET.iter().any(|c| target.starts_with(c))
    }
}

impl log::Log for Bridge {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        !Self::quiet(m.target()) && self.0.enabled(m)
    }

    fn log(&self, r: &log::Record<'_>) {
        if Self::quiet(r.target()) {
            return;
        }
        let already_unmounted = r.level() == log::Level::Warn
            && r.target() == "fuser::session"
            && r.args().to_string().starts_with("Failed to umount filesystem")
            && r.args().to_string().contains("(os error 22)");
        if already_unmounted {
            let args = format_args!("{} (the mount was already gone)", r.args());
            self.0.log(&log::Record::builder().args(args).level(log::Level::Debug).target(r.target()).build());
        } else {
            self.0.log(r);
        }
    }

    fn flush(&self) {}
}
