//! `leasefs check`: loads the configuration and every document as the mount would, and names
//! each problem (file, line, column) without mounting, issuing or writing anything.

use std::path::Path;
use std::process::ExitCode;

use leasefs::config::{Config, SourceKind};
use leasefs::daemon::{self, RunOptions};

/// A `local` source whose directory is missing at start is a configuration error, for `check`
/// and for the mount alike (like Vault Agent, which refuses to start on a missing template
/// source): one that vanishes while the daemon runs keeps its last listing instead.
pub fn local_dirs_exist(cfg: &Config, config: &Path) -> Result<(), String> {
    for (i, s) in cfg.sources.iter().enumerate() {
        let Some(dir) = s.path.as_ref().filter(|_| s.kind == SourceKind::Local) else { continue };
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(format!("{}: sources[{i}]: {} is not a directory", config.display(), dir.display())),
            Err(e) => {
                return Err(format!(
                    "{}: sources[{i}]: the local source's directory {}: {e}",
                    config.display(),
                    dir.display()
                ));
            }
        }
    }
    Ok(())
}

pub fn check(config: &Path, insecure_perms: bool) -> ExitCode {
    let cfg = match Config::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = local_dirs_exist(&cfg, config) {
        eprintln!("{e}");
        return ExitCode::from(2);
    }
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
        Err(e) => {
            eprintln!("leasefs: {e}");
            return ExitCode::from(1);
        }
    };
    let problems = rt.block_on(fs.refresh());
    for p in &problems {
        eprintln!("{p}");
    }
    bad += problems.len();
    // Links to no base (a local source has already dropped and named its own).
    for d in fs.catalog().dangling_links(&fs.tree()) {
        eprintln!("{d}");
        bad += 1;
    }
    // The passes below repeat, for sources other than `local`, what a local source does itself at
    // listing (it drops and names such entries, so they are not met again here): an entry whose
    // leases could never be reused under the defaults, and an untrusted rotate_command.
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
fn sdk_refresh_warnings(fs: &leasefs::fs::LeaseFs, defaults: &leasefs::defaults::Defaults) -> Vec<String> {
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
