//! JSON-RPC parameters from command-line options: only the options given are sent, by the
//! names the server knows them by.

use clap::ValueEnum;
use serde_json::Value;

/// Sets `params[key]` to an option's value when the option was given.
pub fn set(params: &mut Value, key: &str, value: Option<Value>) {
    if let Some(value) = value {
        params[key] = value;
    }
}

/// The name clap shows for a value-enum variant, which is also the JSON-RPC value.
pub fn value_name(value: &impl ValueEnum) -> String {
    value
        .to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default()
}
