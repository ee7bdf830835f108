//! The configuration's `defaults`: the lease, cache and bound settings every entry starts from
//! (`Policy::effective` lays an entry's own over them), and durations as the configuration and
//! documents write them (`"90s"`, `"15m"`).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A duration written as `"90s"`, `"15m"`, `"1h30m"`, `"500ms"` or a number of seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl Dur {
    pub const fn secs(s: u64) -> Self {
        Dur(Duration::from_secs(s))
    }
}

/// The longest duration leasefs takes anywhere (100 years): past it, adding it to a clock
/// reading could overflow. A lease is bounded tighter (`policy::MAX_LEASE`).
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86400);

/// Parses `"90s"`, `"15m"`, `"1h30m"`, `"250ms"`, `"2d"`; a bare number means seconds. A duration
/// longer than `MAX_DURATION` (or one that overflows) is refused, never wrapped or clamped.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    let too_long = || format!("duration too long (at most {} days)", MAX_DURATION.as_secs() / 86400);
    let total = if t.bytes().all(|b| b.is_ascii_digit()) {
        Duration::from_secs(t.parse::<u64>().map_err(|_| too_long())?)
    } else {
        let mut total = Duration::ZERO;
        let mut rest = t;
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
            if digits == 0 {
                return Err("invalid duration: expected a number before the unit".into());
            }
            let n: u64 = rest[..digits].parse().map_err(|_| too_long())?;
            rest = &rest[digits..];
            let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let part = match unit {
                "ms" => Some(Duration::from_millis(n)),
                "s" => Some(Duration::from_secs(n)),
                "m" => n.checked_mul(60).map(Duration::from_secs),
                "h" => n.checked_mul(3600).map(Duration::from_secs),
                "d" => n.checked_mul(86400).map(Duration::from_secs),
                "" => {
                    return Err("invalid duration: missing unit (ms, s, m, h, d)".into());
                }
                _ => return Err("invalid duration: unknown unit (ms, s, m, h, d)".into()),
            };
            total = part.and_then(|p| total.checked_add(p)).ok_or_else(too_long)?;
        }
        total
    };
    if total > MAX_DURATION {
        return Err(too_long());
    }
    Ok(total)
}

/// Formats a duration the way the configuration writes them (`"15m"`).
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s > 0 && s % 3600 == 0 {
        format!("{}h", s / 3600)
    } else if s > 0 && s % 60 == 0 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"90s\", \"15m\" or \"1h\", or a number of seconds")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Dur, E> {
                parse_duration(&v.to_string()).map(Dur).map_err(E::custom)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Dur, E> {
                parse_duration(v).map(Dur).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// How a live lease may be shared between opens (SPEC §3).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Reuse {
    #[default]
    None,
    Uid,
    Pid,
    /// The reader's session (`u=$(cat a); p=$(cat b)` in one script share it).
    Session,
    /// The reader's pod, else container, else systemd unit, else cgroup (`src/workload.rs`).
    Workload,
    /// The reader's cgroup; the lease ends when the cgroup has no process left.
    Cgroup,
}

impl Reuse {
    pub fn parse(s: &str) -> Option<Reuse> {
        match s {
            "none" => Some(Reuse::None),
            "uid" => Some(Reuse::Uid),
            "pid" => Some(Reuse::Pid),
            "session" => Some(Reuse::Session),
            "workload" => Some(Reuse::Workload),
            "cgroup" => Some(Reuse::Cgroup),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Defaults {
    pub ttl: Dur,
    pub max_ttl: Dur,
    pub cache_ttl: Dur,
    pub max_stale: Dur,
    pub issue_timeout: Dur,
    pub reuse: Reuse,
    pub min_remaining: Dur,
    pub refresh: Dur,
    pub revoke_on_shutdown: bool,
    pub revoke_on_close: bool,
    /// How long the kernel may cache names and attributes (never contents).
    pub attr_ttl: Dur,
    /// A lease whose revocation keeps failing this long is marked irrevocable (and still retried).
    pub irrevocable_after: Dur,
    /// Leases one uid may hold with their bytes in memory (open, or kept for reuse).
    pub max_leases_per_uid: usize,
    /// Bytes of rendered credentials one uid may hold.
    pub max_lease_bytes_per_uid: u64,
    /// Issuances of one entry under way at once; more opens fail with EAGAIN (0: no bound).
    pub max_concurrent_issuances: u32,
    /// Issuances of one entry per minute; past it opens fail with EAGAIN (0: no bound).
    pub max_issues_per_minute: u32,
    /// One uid's share of an entry's bounds while another uid uses it (0 < share ≤ 1).
    pub per_uid_share: f64,
    /// The most bytes of one server answer that is read (OpenBao, STS, Graph); a longer one is refused.
    pub max_response_bytes: u64,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            ttl: Dur::secs(15 * 60),
            max_ttl: Dur::secs(3600),
            cache_ttl: Dur::secs(30),
            max_stale: Dur::secs(600),
            issue_timeout: Dur::secs(10),
            reuse: Reuse::None,
            min_remaining: Dur::secs(30),
            refresh: Dur::secs(60),
            revoke_on_shutdown: true,
            revoke_on_close: false,
            attr_ttl: Dur::secs(60),
            irrevocable_after: Dur::secs(600),
            max_leases_per_uid: 1000,
            max_lease_bytes_per_uid: 64 * 1024 * 1024,
            max_concurrent_issuances: 64,
            max_issues_per_minute: 0,
            per_uid_share: 0.5,
            max_response_bytes: crate::tls::DEFAULT_MAX_RESPONSE_BYTES,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("42").unwrap(), Duration::from_secs(42));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("10").is_ok());
        assert!(parse_duration("10x").is_err());
        // Too long or overflowing: refused, never wrapped or clamped.
        for t in ["999999999999d", "18446744073709551615", "99999999999999999999s", "213503982334601h"] {
            assert!(parse_duration(t).unwrap_err().contains("too long"), "{t}");
        }
        assert_eq!(parse_duration("36500d").unwrap(), MAX_DURATION);
    }
}
