//! Reading JSON-RPC parameters: every accessor names the parameter in its error, and a
//! parameter the method does not know is refused, so a typo never passes silently.

use crate::constants::MAX_NAME_BYTES;
use crate::rpc::RpcError;
use serde_json::{Map, Value};

/// What every `*_get_*` method answers: the one entry named by `name`, or all of them, as a
/// JSON array. `kind` names the entries in the error for an unknown name.
pub fn one_or_all<T>(
    params: Option<Value>,
    entries: &std::collections::BTreeMap<String, T>,
    kind: &str,
    describe: impl Fn(&T) -> Value,
) -> Result<Value, RpcError> {
    let params = Params::new(params, &["name"])?;
    match params.optional_name("name")? {
        Some(name) => {
            let entry = entries
                .get(name)
                .ok_or_else(|| RpcError::invalid_params(format!("name: no {kind} {name}")))?;
            Ok(Value::Array(vec![describe(entry)]))
        }
        None => Ok(Value::Array(entries.values().map(describe).collect())),
    }
}

pub struct Params {
    map: Map<String, Value>,
}

impl Params {
    /// Accepts an object or no params at all; `known` lists every parameter the method takes.
    pub fn new(params: Option<Value>, known: &[&str]) -> Result<Self, RpcError> {
        let map = match params {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(map)) => map,
            Some(_) => return Err(RpcError::invalid_params("params: must be an object")),
        };
        if let Some(unknown) = map.keys().find(|key| !known.contains(&key.as_str())) {
            return Err(RpcError::invalid_params(format!(
                "{unknown}: unknown parameter (expected one of: {})",
                known.join(", ")
            )));
        }
        Ok(Self { map })
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub fn optional_str(&self, key: &str) -> Result<Option<&str>, RpcError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(RpcError::invalid_params(format!("{key}: must be a string"))),
        }
    }

    pub fn str(&self, key: &str) -> Result<&str, RpcError> {
        self.optional_str(key)?
            .ok_or_else(|| RpcError::invalid_params(format!("{key}: missing required parameter")))
    }

    /// A LUN, pool, volume, host or domain name: 1..=`MAX_NAME_BYTES` (64) of
    /// `[A-Za-z0-9._:-]`.
    pub fn name(&self, key: &str) -> Result<&str, RpcError> {
        let name = self.str(key)?;
        check_name(key, name)?;
        Ok(name)
    }

    pub fn optional_name(&self, key: &str) -> Result<Option<&str>, RpcError> {
        match self.optional_str(key)? {
            Some(name) => check_name(key, name).map(|()| Some(name)),
            None => Ok(None),
        }
    }

    /// A parameter as raw JSON (an object the caller validates itself).
    pub fn optional_value(&self, key: &str) -> Option<&Value> {
        self.get(key)
    }

    /// A list of strings; `None` when absent.
    pub fn optional_str_list(&self, key: &str) -> Result<Option<Vec<&str>>, RpcError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| {
                    item.as_str().ok_or_else(|| {
                        RpcError::invalid_params(format!("{key}: must be an array of strings"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(RpcError::invalid_params(format!(
                "{key}: must be an array of strings"
            ))),
        }
    }

    pub fn optional_u64(&self, key: &str) -> Result<Option<u64>, RpcError> {
        match self.get(key) {
            None => Ok(None),
            Some(value) => value.as_u64().map(Some).ok_or_else(|| {
                RpcError::invalid_params(format!("{key}: must be a non-negative integer"))
            }),
        }
    }

    pub fn u64(&self, key: &str) -> Result<u64, RpcError> {
        self.optional_u64(key)?
            .ok_or_else(|| RpcError::invalid_params(format!("{key}: missing required parameter")))
    }

    pub fn optional_bool(&self, key: &str) -> Result<Option<bool>, RpcError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(RpcError::invalid_params(format!(
                "{key}: must be true or false"
            ))),
        }
    }

    pub fn name_list(&self, key: &str) -> Result<Vec<String>, RpcError> {
        let items = match self.get(key) {
            Some(Value::Array(items)) if !items.is_empty() => items,
            Some(_) => {
                return Err(RpcError::invalid_params(format!(
                    "{key}: must be a non-empty array of names"
                )))
            }
            None => {
                return Err(RpcError::invalid_params(format!(
                    "{key}: missing required parameter"
                )))
            }
        };
        let mut names = Vec::with_capacity(items.len());
        for item in items {
            let name = item.as_str().ok_or_else(|| {
                RpcError::invalid_params(format!("{key}: every item must be a string"))
            })?;
            check_name(key, name)?;
            names.push(name.to_string());
        }
        Ok(names)
    }
}

fn check_name(key: &str, name: &str) -> Result<(), RpcError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'));
    if valid {
        Ok(())
    } else {
        Err(RpcError::invalid_params(format!("{key}: {name:?} is not a valid name (1-{MAX_NAME_BYTES} characters of A-Z a-z 0-9 . _ - :)")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_the_bad_parameter() {
        let params = Params::new(Some(json!({"name": "a b", "size": -1})), &["name", "size"])
            .expect("known");
        assert!(params
            .name("name")
            .unwrap_err()
            .message
            .starts_with("name:"));
        assert!(params.u64("size").unwrap_err().message.starts_with("size:"));
        let error = Params::new(Some(json!({"nmae": "x"})), &["name"])
            .err()
            .expect("unknown");
        assert_eq!(error.code, crate::rpc::error::INVALID_PARAMS);
        assert!(error.message.starts_with("nmae:"));
    }
}
