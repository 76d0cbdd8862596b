//! How a command's result reaches the user: a table for people, or with `--json` the
//! server's raw JSON result for scripts.
//!
//! `show` is for results that are a resource or a list of them (every `*_create`, `*_get_*`
//! and `*_set*` method), `show_object` for results that are one object with lists inside (the
//! `*_get_stats` methods), `done` for methods whose result people need not see (the
//! `*_delete` ones and `bdev_set_qos_limit`): a sentence instead.

use serde_json::Value;

/// Prints `result` as indented JSON (`--json`, and `sds rpc`).
pub fn print_json(result: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(result).unwrap_or_default()
    );
}

/// A method people need not see the result of: `message`, or with `--json` the result on one
/// line.
pub fn done(json: bool, result: Value, message: &str) -> Result<(), String> {
    if json {
        println!("{result}");
    } else {
        println!("{message}");
    }
    Ok(())
}

/// A resource or a list of them: the table `print` makes of them, or with `--json` the result.
pub fn show(json: bool, result: Value, print: fn(&[Value])) -> Result<(), String> {
    if json {
        print_json(&result);
        return Ok(());
    }
    match result {
        Value::Array(items) => print(&items),
        single => print(&[single]),
    }
    Ok(())
}

/// Like `show`, for results that are one object rather than a list (the `*_get_stats` ones).
pub fn show_object(json: bool, result: Value, print: fn(&Value)) -> Result<(), String> {
    if json {
        print_json(&result);
    } else {
        print(&result);
    }
    Ok(())
}
