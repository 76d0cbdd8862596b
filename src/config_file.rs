//! The server's configuration file (`sds serve --config FILE`): TOML whose keys are the long
//! flags of `sds serve` with underscores (`state_dir`, `nbd_listen`, `cycle_ms`, …).
//!
//! The file is read against the clap definition of the command, not against a struct of its
//! own: every argument with a long name is a key, so a flag added to `sds serve` is a key of
//! the file with nothing more to write, and its value is checked by the very value parser the
//! flag uses (the same ranges, the same possible values, the same messages). What comes out is
//! a list of `--flag=value` arguments that the command line appends to its own, for the keys
//! the command line (or the flag's environment variable) did not already set: so a flag
//! overrides the file, and the file overrides only the built-in defaults.
//!
//! Every error names the file, the line and what was expected, and stops start-up: a key the
//! command does not know, a value of the wrong TOML type (a table, an array for a flag that
//! takes one value), or a value the flag's parser refuses. Keys are top level only.

use crate::constants::MAX_CONFIG_FILE_BYTES;
use clap::{Arg, ArgAction, Command};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use toml::{Spanned, Value};

/// The flag that names the file itself: it is not a key of the file.
pub const CONFIG_FLAG: &str = "config";

/// Why a configuration file was refused. Every variant but `Read` names the line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read the configuration file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: larger than {MAX_CONFIG_FILE_BYTES} bytes; expected a short TOML file")]
    TooLarge { path: PathBuf },
    #[error("{path}:{line}: {message}; expected TOML `key = value` lines")]
    Syntax {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}:{line}: unknown key `{key}`; expected one of: {expected}")]
    UnknownKey {
        path: PathBuf,
        line: usize,
        key: String,
        expected: String,
    },
    #[error("{path}:{line}: bad value for `{key}`: {expected}")]
    BadValue {
        path: PathBuf,
        line: usize,
        key: String,
        expected: String,
    },
}

/// Reads `path` and returns the arguments it stands for, `--flag=value` each, for every key
/// whose flag `set_elsewhere` (by its argument id) says is not already given on the command
/// line or by its environment variable. Every key is checked, given elsewhere or not.
pub fn load(
    path: &Path,
    command: &Command,
    set_elsewhere: impl Fn(&str) -> bool,
) -> Result<Vec<OsString>, ConfigFileError> {
    let text = read_bounded(path)?;
    arguments(path, &text, command, set_elsewhere)
}

fn read_bounded(path: &Path) -> Result<String, ConfigFileError> {
    let read_error = |source| ConfigFileError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut text = String::new();
    file.take(MAX_CONFIG_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(read_error)?;
    if text.len() as u64 > MAX_CONFIG_FILE_BYTES {
        return Err(ConfigFileError::TooLarge {
            path: path.to_owned(),
        });
    }
    Ok(text)
}

/// The keys of `command`'s file: each argument with a long name, but the help and version
/// flags and `--config` itself, by key (the long name with `-` as `_`).
fn keys(command: &Command) -> BTreeMap<String, &Arg> {
    command
        .get_arguments()
        .filter(|arg| {
            !matches!(
                arg.get_action(),
                ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
            ) && arg.get_id().as_str() != CONFIG_FLAG
        })
        .filter_map(|arg| Some((arg.get_long()?.replace('-', "_"), arg)))
        .collect()
}

fn arguments(
    path: &Path,
    text: &str,
    command: &Command,
    set_elsewhere: impl Fn(&str) -> bool,
) -> Result<Vec<OsString>, ConfigFileError> {
    let line_of = |offset: usize| 1 + text[..offset.min(text.len())].matches('\n').count();
    let table: BTreeMap<Spanned<String>, Spanned<Value>> =
        toml::from_str(text).map_err(|error: toml::de::Error| ConfigFileError::Syntax {
            path: path.to_owned(),
            line: error.span().map_or(1, |span| line_of(span.start)),
            message: error.message().trim().to_owned(),
        })?;
    let known = keys(command);
    // In the file's order, so the first mistake reported is the first in the file.
    let mut entries: Vec<_> = table.into_iter().collect();
    entries.sort_by_key(|(key, _)| key.span().start);
    let mut out = Vec::new();
    for (key, value) in entries {
        let Some(arg) = known.get(key.get_ref()) else {
            return Err(ConfigFileError::UnknownKey {
                path: path.to_owned(),
                line: line_of(key.span().start),
                key: key.get_ref().clone(),
                expected: known.keys().cloned().collect::<Vec<_>>().join(", "),
            });
        };
        let bad = |expected: String| ConfigFileError::BadValue {
            path: path.to_owned(),
            line: line_of(value.span().start),
            key: key.get_ref().clone(),
            expected,
        };
        let flag = format!("--{}", arg.get_long().unwrap_or_default());
        let mut these = Vec::new();
        match arg.get_action() {
            ArgAction::SetTrue | ArgAction::SetFalse => match value.get_ref() {
                Value::Boolean(true) => these.push(OsString::from(&flag)),
                Value::Boolean(false) => {}
                other => {
                    return Err(bad(format!(
                        "expected true or false, found {}",
                        other.type_str()
                    )))
                }
            },
            // clap keeps a count in a u8: 255 is its own bound, not one of ours.
            ArgAction::Count => match value.get_ref() {
                Value::Integer(count @ 0..=255) => {
                    these.extend((0..*count).map(|_| OsString::from(&flag)));
                }
                other => {
                    return Err(bad(format!(
                        "expected a count from 0 to 255, found {other}"
                    )))
                }
            },
            action => {
                let items: Vec<&Value> = match value.get_ref() {
                    Value::Array(items) if matches!(action, ArgAction::Append) => {
                        items.iter().collect()
                    }
                    Value::Array(_) => {
                        return Err(bad("expected one value, found an array".to_owned()))
                    }
                    one => vec![one],
                };
                for item in items {
                    let text = scalar_text(item).map_err(&bad)?;
                    check_value(arg, &text).map_err(&bad)?;
                    these.push(OsString::from(format!("{flag}={text}")));
                }
            }
        }
        if !set_elsewhere(arg.get_id().as_str()) {
            out.extend(these);
        }
    }
    Ok(out)
}

/// A TOML scalar as the text a flag would be given.
fn scalar_text(value: &Value) -> Result<String, String> {
    match value {
        Value::String(text) => Ok(text.clone()),
        Value::Integer(number) => Ok(number.to_string()),
        Value::Float(number) => Ok(number.to_string()),
        Value::Boolean(flag) => Ok(flag.to_string()),
        other => Err(format!(
            "expected a string, a number or a boolean, found {}",
            other.type_str()
        )),
    }
}

/// Runs the flag's own value parser on `text`, in a command of that one flag (the parser
/// itself is not callable from outside clap): what it refuses, it explains, in clap's words
/// without its "error:" prefix and its usage hint.
fn check_value(arg: &Arg, text: &str) -> Result<(), String> {
    let long = arg.get_long().unwrap_or_default();
    let alone = Command::new("sds")
        .no_binary_name(true)
        .disable_help_flag(true)
        .arg(
            Arg::new(arg.get_id().clone())
                .long(long.to_owned())
                .value_names(arg.get_value_names().unwrap_or_default().to_vec())
                .value_parser(arg.get_value_parser().clone())
                .action(ArgAction::Set),
        );
    match alone.try_get_matches_from([format!("--{long}={text}")]) {
        Ok(_) => Ok(()),
        Err(error) => {
            let rendered = error.render().to_string();
            let message = rendered
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty() && !line.starts_with("For more information"))
                .collect::<Vec<_>>()
                .join(" ");
            Err(message.trim_start_matches("error: ").to_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::value_parser;

    fn command() -> Command {
        Command::new("serve")
            .arg(Arg::new("config").long("config"))
            .arg(Arg::new("state_dir").long("state-dir"))
            .arg(
                Arg::new("cycle_ms")
                    .long("cycle-ms")
                    .value_parser(value_parser!(u64).range(10..=1000)),
            )
            .arg(
                Arg::new("poll")
                    .long("poll")
                    .value_parser(["busy", "adaptive"]),
            )
            .arg(
                Arg::new("verbose")
                    .long("verbose")
                    .action(ArgAction::SetTrue),
            )
            .arg(Arg::new("peer").long("peer").action(ArgAction::Append))
    }

    fn parse(text: &str) -> Result<Vec<String>, ConfigFileError> {
        arguments(Path::new("sds.toml"), text, &command(), |id| id == "poll").map(|args| {
            args.into_iter()
                .map(|arg| arg.into_string().unwrap_or_default())
                .collect()
        })
    }

    #[test]
    fn keys_become_flags_in_file_order_and_flags_given_elsewhere_win() {
        let args = parse(
            "# a comment\ncycle_ms = 200\nstate_dir = \"/srv/sds\"\npoll = \"busy\"\nverbose = true\npeer = [\"a\", \"b\"]\n",
        )
        .unwrap();
        assert_eq!(
            args,
            [
                "--cycle-ms=200",
                "--state-dir=/srv/sds",
                "--verbose",
                "--peer=a",
                "--peer=b"
            ]
        );
    }

    #[test]
    fn unknown_key_names_its_line_and_the_known_keys() {
        let error = parse("cycle_ms = 200\n\nstate-dir = \"x\"\n").unwrap_err();
        let text = error.to_string();
        assert!(
            matches!(error, ConfigFileError::UnknownKey { line: 3, .. }),
            "{text}"
        );
        assert!(
            text.starts_with("sds.toml:3: unknown key `state-dir`"),
            "{text}"
        );
        assert!(
            text.contains("cycle_ms, peer, poll, state_dir, verbose"),
            "{text}"
        );
        assert!(!text.contains("config"), "{text}");
    }

    #[test]
    fn bad_values_name_their_line_and_what_was_expected() {
        let error = parse("state_dir = \"x\"\ncycle_ms = 5\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("sds.toml:2: bad value for `cycle_ms`"),
            "{error}"
        );
        assert!(error.contains("10..=1000"), "{error}");
        let error = parse("poll = \"fast\"\n").unwrap_err().to_string();
        assert!(error.contains("possible values: busy, adaptive"), "{error}");
        let error = parse("verbose = \"yes\"\n").unwrap_err().to_string();
        assert!(error.contains("expected true or false"), "{error}");
        let error = parse("state_dir = [\"a\"]\n").unwrap_err().to_string();
        assert!(error.contains("expected one value"), "{error}");
        let error = parse("state_dir = { a = 1 }\n").unwrap_err().to_string();
        assert!(error.contains("found table"), "{error}");
    }

    #[test]
    fn syntax_errors_name_their_line() {
        let error = parse("cycle_ms = 100\nstate_dir = \n").unwrap_err();
        assert!(
            matches!(error, ConfigFileError::Syntax { line: 2, .. }),
            "{error}"
        );
        let error = parse("cycle_ms = 1\ncycle_ms = 2\n").unwrap_err();
        assert!(
            matches!(error, ConfigFileError::Syntax { line: 2, .. }),
            "{error}"
        );
    }

    #[test]
    fn negative_numbers_stay_values() {
        let error = parse("cycle_ms = -5\n").unwrap_err().to_string();
        assert!(error.contains("bad value for `cycle_ms`"), "{error}");
        assert!(!error.contains("unexpected argument"), "{error}");
    }
}
