//! From the command line to values: secret-safe usage errors, and the value forms the
//! original flux-status took (`:3000`, bare seconds).

use clap::{CommandFactory, Parser};
use std::net::SocketAddr;
use std::time::Duration;

/// `P::parse()`, except that a usage error never shows what may be a secret.
pub fn parse_args<P: Parser>() -> P {
    P::try_parse().unwrap_or_else(|e| without_secrets::<P>(e).exit())
}

/// A clap error with every value that may be a secret taken out: the value of a
/// secret flag (one whose env value is hidden), a value given to a flag that takes
/// none, and an unknown word (`--github-token= ghp_…` makes the token one). Other
/// flags' invalid values stay, since they say what to fix.
pub fn without_secrets<P: CommandFactory>(mut e: clap::Error) -> clap::Error {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    const HIDDEN: &str = "<not shown: may be a secret>";
    let secret_flags: Vec<String> = P::command()
        .get_arguments()
        .filter(|a| a.is_hide_env_values_set())
        .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
        .collect();
    let arg = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => s.clone(),
        _ => String::new(),
    };
    // `--token <TOKEN>`, `--debug[=<DEBUG>]`: the flag is the first word.
    let flag = arg.split([' ', '[', '=']).next().unwrap_or_default();
    let mut hidden = Vec::new();
    // An unknown `--flag-name` is a typo worth naming; any other unknown word (even
    // `-x`, from a stray `-x…` token) is shown by no one.
    let flag_shaped = arg.strip_prefix("--").is_some_and(|name| {
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    });
    if e.kind() == ErrorKind::UnknownArgument && !flag_shaped {
        hidden.push(arg.clone());
        e.insert(ContextKind::InvalidArg, ContextValue::String(HIDDEN.into()));
    }
    let names_the_problem = matches!(e.kind(), ErrorKind::InvalidValue | ErrorKind::ValueValidation)
        && !secret_flags.iter().any(|f| f == flag);
    if !names_the_problem && let Some(value) = e.get(ContextKind::InvalidValue) {
        hidden.push(value.to_string());
        e.insert(ContextKind::InvalidValue, ContextValue::String(HIDDEN.into()));
    }
    // A tip can quote the word again ("to pass '…' as a value, use '-- …'").
    let quotes_it = e.get(ContextKind::Suggested).is_some_and(|tip| {
        hidden
            .iter()
            .any(|h| !h.is_empty() && tip.to_string().contains(h.as_str()))
    });
    if quotes_it {
        e.remove(ContextKind::Suggested);
    }
    e
}

/// `host:port`, or Go's `:port` (all interfaces) as the original flux-status took it.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_string()
    };
    full.parse()
        .map_err(|_| format!("invalid address {s:?} (examples: 127.0.0.1:3000, 0.0.0.0:3000, :3000)"))
}

/// `20s`, `5m`, `1h`, `250ms`, `1m30s`, or a bare number of seconds (the original's flags).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let err = || format!("invalid duration {s:?} (examples: 20s, 5m, 1h, 250ms, 90)");
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return Err(err());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
        if digits == 0 {
            return Err(err());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            _ => return Err(err()),
        };
        total = total.saturating_add(unit);
        rest = &rest[unit_len..];
    }
    Ok(total)
}
