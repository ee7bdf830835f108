//! The manual page (roff) and the text after `--help`: options and commands from clap, then
//! EXAMPLES, FILES, SIGNALS and EXIT STATUS as lists, from one table each.

use std::io::Write;

/// Each example: the command and what it does.
const EXAMPLES: &[(&str, &str)] = &[
    ("leasefs demo", "mount a sample catalog at ./secrets and print commands to try"),
    ("leasefs mount /secrets --config /etc/leasefs/config.json", "serve a catalog in the foreground"),
    ("leasefs check --config /etc/leasefs/config.json", "validate the configuration and every document"),
    ("leasefs leases /secrets", "live leases, metadata only"),
    ("leasefs revoke /secrets 5f0c9e...", "end a lease now"),
    ("mount -t leasefs /etc/leasefs/config.json /secrets", "the same as a mount(8) helper (/usr/sbin/mount.leasefs)"),
];

const FILES: &[(&str, &str)] = &[
    ("/etc/leasefs/config.json", "the configuration (must not be readable by group or others)"),
    ("/etc/leasefs/secrets/", "the packaged configuration's directory of secret documents"),
    ("/var/lib/leasefs/journal.jsonl", "the lease journal: leases to revoke after a crash"),
    ("/var/log/leasefs/", "the audit log (audit.jsonl) and mount.leasefs's log=FILE"),
    ("MOUNTPOINT/.leasefs/", "status.json, leases.json, metrics, revoke (root and the daemon's user only)"),
    ("/usr/share/doc/leasefs/", "the documentation: configuration reference, security model, operations"),
];

const SIGNALS: &[(&str, &str)] = &[
    ("SIGHUP", "list the documents again and reopen the audit log, without unmounting"),
    ("SIGTERM, SIGINT", "revoke live leases (revoke_on_shutdown), unmount and exit 0"),
];

const EXIT_STATUS: &[(&str, &str)] = &[
    ("0", "success (check: every file is valid)"),
    ("1", "check found invalid files, or the daemon failed while running"),
    ("2", "the command line or the configuration is invalid (including a missing source directory)"),
    ("32", "mount.leasefs: the mount failed (mount(8)'s convention)"),
];

/// Manual pages this one names; each exists on a Debian system with leasefs's dependencies.
const SEE_ALSO: &[&str] = &["mount(8)", "fstab(5)", "fusermount3(1)"];

const DOCS: &str = "The configuration reference, the security model and the operations guide are installed \
in /usr/share/doc/leasefs/docs/ (configuration.md, security.md, operations.md).";

fn section(out: &mut String, title: &str, rows: &[(&str, &str)]) {
    let width = rows.iter().map(|(a, _)| a.len()).max().unwrap_or(0);
    out.push_str(title);
    out.push_str(":\n");
    for (a, b) in rows {
        out.push_str(&format!("    {a:<width$}  {b}\n"));
    }
    out.push('\n');
}

/// The text `--help` prints after the options.
pub fn after_help() -> String {
    let mut out = String::new();
    section(&mut out, "EXAMPLES", EXAMPLES);
    section(&mut out, "FILES", FILES);
    section(&mut out, "SIGNALS", SIGNALS);
    section(&mut out, "EXIT STATUS", EXIT_STATUS);
    out.push_str(&format!("SEE ALSO:\n    {}\n    {DOCS}", SEE_ALSO.join(", ")));
    out
}

/// Text escaped for roff: backslashes, hyphens as minus signs, no control character at a line's start.
fn esc(s: &str) -> String {
    let s = s.replace('\\', "\\e").replace('-', "\\-");
    if s.starts_with('.') || s.starts_with('\'') { format!("\\&{s}") } else { s }
}

fn roff_list(out: &mut String, title: &str, rows: &[(&str, &str)]) {
    out.push_str(&format!(".SH {title}\n"));
    for (a, b) in rows {
        out.push_str(&format!(".TP\n\\fB{}\\fR\n{}\n", esc(a), esc(b)));
    }
}

/// One `.SS` per command: its usage line, what it does, and its arguments as a list.
fn commands(out: &mut String, cmd: &mut clap::Command) {
    out.push_str(".SH COMMANDS\n");
    for sub in cmd.get_subcommands_mut().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        let usage = sub.render_usage().to_string();
        let usage = usage.trim_start_matches("Usage:").trim();
        out.push_str(&format!(".SS \"{}\"\n", esc(usage)));
        if let Some(about) = sub.get_long_about().or(sub.get_about()) {
            for para in about.to_string().split("\n\n") {
                out.push_str(&format!(".PP\n{}\n", esc(&para.replace('\n', " "))));
            }
        }
        for arg in sub.get_arguments().filter(|a| !a.is_hide_set() && !a.is_global_set()) {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            let value = arg.get_value_names().and_then(|v| v.first()).map(|v| v.to_string());
            let name = match (arg.get_long(), arg.get_short()) {
                (Some(l), Some(s)) => format!("\\fB\\-{s}\\fR, \\fB\\-\\-{}\\fR", esc(l)),
                (Some(l), None) => format!("\\fB\\-\\-{}\\fR", esc(l)),
                _ => format!("\\fI{}\\fR", esc(&value.clone().unwrap_or_else(|| id.to_uppercase()))),
            };
            let takes = arg.get_long().is_some() && arg.get_action().takes_values();
            let name = match value.filter(|_| takes) {
                Some(v) => format!("{name} \\fI{}\\fR", esc(&v)),
                None => name,
            };
            let help = arg.get_long_help().or(arg.get_help()).map(|h| h.to_string()).unwrap_or_default();
            out.push_str(&format!(".TP\n{name}\n{}\n", esc(&help.replace('\n', " "))));
        }
    }
}

/// The whole manual page: NAME, SYNOPSIS, DESCRIPTION and OPTIONS from clap (no per-command
/// pages: every command is described here), then the lists above.
pub fn render(mut cmd: clap::Command, out: &mut dyn Write) -> std::io::Result<()> {
    cmd.build();
    let cmd = cmd.after_help(None::<&str>).after_long_help(None::<&str>);
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    let mut text = String::new();
    commands(&mut text, &mut cmd.clone());
    roff_list(&mut text, "EXAMPLES", EXAMPLES);
    roff_list(&mut text, "FILES", FILES);
    roff_list(&mut text, "SIGNALS", SIGNALS);
    roff_list(&mut text, "EXIT STATUS", EXIT_STATUS);
    text.push_str(".SH \"SEE ALSO\"\n");
    let pages: Vec<String> = SEE_ALSO
        .iter()
        .map(|p| {
            let (name, sec) = p.split_once('(').unwrap_or((p, ""));
            format!("\\fB{}\\fR({}", esc(name), sec)
        })
        .collect();
    text.push_str(&format!("{}\n.PP\n{}\n", pages.join(",\n"), esc(DOCS)));
    out.write_all(text.as_bytes())?;
    man.render_version_section(out)
}
