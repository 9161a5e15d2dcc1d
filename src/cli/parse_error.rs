//! What the command line parser found wrong, in words that never quote the
//! rejected value: a value in the wrong place (`--kind '+1 202-555-0123'`)
//! may be personal data, and error output goes to logs and CI transcripts.

use clap::error::{ContextKind, ContextValue, ErrorKind};
use std::ffi::{OsStr, OsString};

/// The flags that may come from an environment variable, and the variable.
const FROM_ENV: &[(&str, &str)] = &[
    ("--addr", "FIELDVAULT_ADDR"),
    ("--data-dir", "FIELDVAULT_DATA_DIR"),
    ("--connect-timeout", "FIELDVAULT_CONNECT_TIMEOUT"),
    ("--timeout", "FIELDVAULT_TIMEOUT"),
];

/// Kinds whose clap message names arguments only, never a value.
pub(crate) fn clap_words_are_safe(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::MissingRequiredArgument
            | ErrorKind::ArgumentConflict
            | ErrorKind::MissingSubcommand
    )
}

fn context(e: &clap::Error, kind: ContextKind) -> Option<String> {
    match e.get(kind)? {
        ContextValue::String(s) => Some(s.clone()),
        ContextValue::Strings(v) => Some(v.join(", ")),
        _ => None,
    }
}

/// `--kind <KIND>` → `--kind`; a positional (`[VALUES]...`) as is.
fn flag_name(arg: &str) -> &str {
    arg.split([' ', '=']).next().unwrap_or(arg)
}

/// An unexpected argument, shown only when it is shaped as this CLI's
/// flag names are (`--kidn`: lowercase ASCII letters and dashes); anything
/// else (`--Main-Street-17`) may be a value given in the wrong place.
fn shown_if_flag(arg: &str) -> Option<&str> {
    let name = flag_name(arg);
    let body = name.strip_prefix("--").or_else(|| name.strip_prefix('-'))?;
    let flag_like = !body.is_empty()
        && body.len() <= 40
        && body.starts_with(|c: char| c.is_ascii_lowercase())
        && body.chars().all(|c| c.is_ascii_lowercase() || c == '-');
    flag_like.then_some(name)
}

/// The (sub)command `args` name: `store` for `fieldvault store bogus`.
fn command_of(args: &[OsString]) -> clap::Command {
    use clap::CommandFactory;
    let mut cmd = crate::cli::Cli::command();
    for a in args.iter().skip(1) {
        let Some(a) = a.to_str() else { break };
        if a.starts_with('-') {
            continue;
        }
        match cmd.find_subcommand(a) {
            Some(sub) => cmd = sub.clone(),
            None => break,
        }
    }
    cmd
}

/// `serve, tokenize, detokenize, health and store`.
fn subcommands_of(cmd: &clap::Command) -> String {
    let names: Vec<&str> = cmd
        .get_subcommands()
        .map(clap::Command::get_name)
        .filter(|n| *n != "help")
        .collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        Some((last, _)) => (*last).to_owned(),
        None => String::new(),
    }
}

/// The flag whose value is the first argument that is not UTF-8
/// (`--purpose <bytes>` or `--purpose=<bytes>`), if it is one of `cmd`'s.
fn flag_of_invalid_utf8(cmd: &clap::Command, args: &[OsString]) -> Option<String> {
    let at = args.iter().position(|a| a.to_str().is_none())?;
    let is_flag = |name: &str| {
        name.strip_prefix("--").is_some_and(|long| {
            cmd.get_arguments()
                .any(|a| a.get_long() == Some(long) && a.get_action().takes_values())
        })
    };
    let lossy = args[at].to_string_lossy();
    if let Some((name, _)) = lossy.split_once('=') {
        if is_flag(name) {
            return Some(name.to_owned());
        }
    }
    let before = args.get(at.checked_sub(1)?)?.to_str()?;
    is_flag(before).then(|| before.to_owned())
}

/// The message for `e`, without the value it rejected. `args` is the
/// command line (to tell whether a flag was given there or came from its
/// environment variable), `env` reads the environment.
pub(crate) fn message(
    e: &clap::Error,
    args: &[OsString],
    env: &dyn Fn(&str) -> Option<OsString>,
) -> String {
    let arg = context(e, ContextKind::InvalidArg);
    let name = arg.as_deref().map(flag_name).unwrap_or("an argument");
    let tip = context(e, ContextKind::SuggestedArg)
        .or_else(|| context(e, ContextKind::SuggestedSubcommand))
        .map(|s| format!(" (did you mean {s}?)"))
        .unwrap_or_default();
    match e.kind() {
        ErrorKind::InvalidValue | ErrorKind::ValueValidation => {
            let reason = match e.kind() {
                ErrorKind::ValueValidation => std::error::Error::source(e)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "not accepted".to_owned()),
                _ if context(e, ContextKind::InvalidValue).is_some_and(|v| v.is_empty()) => {
                    "a value is required".to_owned()
                }
                _ => match context(e, ContextKind::ValidValue) {
                    Some(valid) => format!("expected one of: {valid}"),
                    None => "not accepted".to_owned(),
                },
            };
            format!(
                "invalid value for {name}{}: {reason}; see --help",
                from_env(name, args, env)
            )
        }
        ErrorKind::UnknownArgument => match arg.as_deref().and_then(shown_if_flag) {
            Some(flag) => format!("unexpected argument {flag}{tip}; see --help"),
            None => format!(
                "unexpected argument (a value where none is expected: quote a value with \
                 spaces, or check the flags before it){tip}; see --help"
            ),
        },
        ErrorKind::InvalidSubcommand => {
            let cmd = command_of(args);
            let (whose, usage) = if cmd.get_name() == "fieldvault" {
                ("the commands are", " --help".to_owned())
            } else {
                ("its subcommands are", format!(" {} --help", cmd.get_name()))
            };
            format!(
                "unrecognized subcommand{tip}; {whose} {}; see{usage}",
                subcommands_of(&cmd)
            )
        }
        ErrorKind::NoEquals => format!("{name} needs its value after '='; see --help"),
        ErrorKind::TooManyValues | ErrorKind::WrongNumberOfValues | ErrorKind::TooFewValues => {
            format!("wrong number of values for {name}; see --help")
        }
        ErrorKind::InvalidUtf8 => {
            let flag = flag_of_invalid_utf8(&command_of(args), args);
            format!(
                "{}: not valid UTF-8; see --help",
                flag.as_deref().unwrap_or(name)
            )
        }
        kind if clap_words_are_safe(kind) => {
            // Its first paragraph, on one line (the usage follows).
            let rendered = e.render().to_string();
            let words: Vec<&str> = rendered
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let text = words.join(" ");
            text.strip_prefix("error: ").unwrap_or(&text).to_owned()
        }
        _ => "the command line is not valid; see --help".to_owned(),
    }
}

/// ` (from FIELDVAULT_TIMEOUT)` when `flag`'s value came from its
/// environment variable rather than the command line.
fn from_env(flag: &str, args: &[OsString], env: &dyn Fn(&str) -> Option<OsString>) -> String {
    let Some((_, var)) = FROM_ENV.iter().find(|(f, _)| *f == flag) else {
        return String::new();
    };
    let on_command_line = args.iter().skip(1).any(|a| {
        let a: &OsStr = a;
        a.to_str()
            .is_some_and(|a| a == flag || a.starts_with(&format!("{flag}=")))
    });
    if on_command_line || env(var).is_none() {
        String::new()
    } else {
        format!(" (from {var})")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::{CommandFactory, FromArgMatches};

    fn error(args: &[&str], env: &[(&str, &str)]) -> String {
        let args: Vec<OsString> = std::iter::once("fieldvault")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        let e = crate::cli::Cli::command()
            .try_get_matches_from(&args)
            .and_then(|m| crate::cli::Cli::from_arg_matches(&m))
            .err()
            .unwrap();
        let env: Vec<(String, OsString)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), OsString::from(v)))
            .collect();
        message(&e, &args, &|k| {
            env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
    }

    const NUMBER: &str = "+1 202-555-0123";

    #[test]
    fn a_rejected_value_is_never_quoted_and_the_flag_is_named() {
        for (args, flag) in [
            (vec!["tokenize", "--kind", NUMBER, "x"], "--kind"),
            (
                vec!["tokenize", "--kind", "national_id", "--scheme", NUMBER, "x"],
                "--scheme",
            ),
            (
                vec!["tokenize", "--kind", "phone", "--batch-size", NUMBER, "x"],
                "--batch-size",
            ),
            (
                vec!["tokenize", "--kind", "phone", "--timeout", NUMBER, "x"],
                "--timeout",
            ),
        ] {
            let m = error(&args, &[]);
            assert!(!m.contains("202"), "{m}");
            assert!(m.starts_with(&format!("invalid value for {flag}: ")), "{m}");
        }
        let m = error(&["tokenize", "--kind", "phone", "--bogus", NUMBER], &[]);
        assert_eq!(m, "unexpected argument --bogus; see --help");
        let m = error(
            &["detokenize", "--purpose", "callback", "--stdin", NUMBER],
            &[],
        );
        assert!(!m.contains("202"), "{m}");
        let m = error(&[NUMBER], &[]);
        assert!(
            !m.contains("202") && m.starts_with("unrecognized subcommand"),
            "{m}"
        );
    }

    #[test]
    fn an_unknown_subcommand_lists_the_subcommands_of_its_own_command() {
        let m = error(&["store", "bogus"], &[]);
        assert_eq!(
            m,
            "unrecognized subcommand; its subcommands are salvage; see store --help"
        );
        let m = error(&["bogus"], &[]);
        assert_eq!(
            m,
            "unrecognized subcommand; the commands are serve, tokenize, detokenize, delete, \
             info, erase, export, keys, health, store, audit, callers, canary, grants, policy, \
             config, dev, backup and restore; see --help"
        );
        let m = error(&["audit", "bogus"], &[]);
        assert_eq!(
            m,
            "unrecognized subcommand; its subcommands are verify, search and report; see audit \
             --help"
        );
        let m = error(&["grants", "bogus"], &[]);
        assert_eq!(
            m,
            "unrecognized subcommand; its subcommands are request, approve, reject, revoke, \
             list and show; see grants --help"
        );
        let m = error(&["keys", "bogus"], &[]);
        assert_eq!(
            m,
            "unrecognized subcommand; its subcommands are status, rotate, rewrap, retire, \
             rotate-index and rotate-master; see keys --help"
        );
    }

    #[test]
    fn only_lowercase_flag_shaped_names_are_shown_never_a_flag_shaped_value() {
        let m = error(&["tokenize", "--kind", "address", "--Main-Street-17"], &[]);
        assert!(!m.contains("Main") && !m.contains("17"), "{m}");
        let m = error(&["tokenize", "--kind", "phone", "--kidn", "x"], &[]);
        assert!(m.starts_with("unexpected argument --kidn"), "{m}");
    }

    #[test]
    fn an_argument_that_is_not_utf8_names_its_flag() {
        use std::os::unix::ffi::OsStringExt;
        let bad = OsString::from_vec(vec![b'+', b'1', 0xff, b'2']);
        for args in [
            vec![
                OsString::from("detokenize"),
                "--purpose".into(),
                bad.clone(),
                "t".into(),
            ],
            vec![
                OsString::from("detokenize"),
                {
                    let mut flag = OsString::from("--purpose=");
                    flag.push(&bad);
                    flag
                },
                "t".into(),
            ],
        ] {
            let all: Vec<OsString> = std::iter::once(OsString::from("fieldvault"))
                .chain(args)
                .collect();
            let e = crate::cli::Cli::command()
                .try_get_matches_from(&all)
                .and_then(|m| crate::cli::Cli::from_arg_matches(&m))
                .err()
                .unwrap();
            assert_eq!(e.kind(), ErrorKind::InvalidUtf8);
            let m = message(&e, &all, &|_| None);
            assert_eq!(m, "--purpose: not valid UTF-8; see --help");
        }
    }

    #[test]
    fn a_value_from_the_environment_names_its_variable() {
        let args: Vec<OsString> = ["fieldvault", "health"].map(OsString::from).to_vec();
        let env = |k: &str| (k == "FIELDVAULT_TIMEOUT").then(|| OsString::from("abc"));
        assert_eq!(
            from_env("--timeout", &args, &env),
            " (from FIELDVAULT_TIMEOUT)"
        );
        let args: Vec<OsString> = ["fieldvault", "health", "--timeout", "abc"]
            .map(OsString::from)
            .to_vec();
        assert_eq!(from_env("--timeout", &args, &env), "");
        assert_eq!(from_env("--kind", &args, &env), "");
    }
}
