//! `host_*` methods: initiators, by what their protocol proves.

use super::params::{one_or_all, Params};
use super::Control;
use crate::constants::{
    DEFAULT_MAX_SESSIONS_PER_HOST, MAX_CHAP_SECRET_BYTES, MAX_CHAP_USER_BYTES, MAX_HOSTS,
    MAX_HOST_ADDRESSES, MAX_IDENTITY_BYTES, MAX_SESSIONS_PER_HOST, MIN_CHAP_SECRET_BYTES,
};
use crate::domain::host::Host;
use crate::domain::iscsi_name;
use crate::domain::nvme_name;
use crate::logger::error_chain;
use crate::rpc::RpcError;
use crate::store::records::{ChapRecord, HostRecord};
use serde_json::{json, Value};
use std::sync::Arc;

pub struct HostEntry {
    pub record: HostRecord,
    pub host: Host,
}

pub fn describe(control: &Control, entry: &HostEntry) -> Value {
    let vpaths = control
        .vpaths
        .values()
        .filter(|v| v.record.host == entry.record.name)
        .count();
    json!({
        "name": entry.record.name,
        "nbd_tls_subject": entry.record.nbd_tls_subject,
        "iqn": entry.record.iqn,
        // Who the host and the target say they are in CHAP; never the secrets.
        "chap": entry.record.chap.as_ref().map(|chap| json!({
            "user": chap.user,
            "mutual_user": chap.mutual_user,
        })),
        "nqn": entry.record.nqn,
        "addresses": entry.host.addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "vpaths": vpaths,
        "max_sessions": entry.host.max_sessions,
        "sessions": entry.host.sessions.load(std::sync::atomic::Ordering::Acquire),
        "overlaps": overlaps(control, entry),
    })
}

/// The other hosts some of whose addresses a peer of `entry` could also match, and which host
/// such a peer goes to (the more specific address; equal ones go to the first by name). Not
/// an error: a catch-all beside specific hosts is legitimate, but the administrator should
/// see it.
fn overlaps(control: &Control, entry: &HostEntry) -> Vec<Value> {
    let mut found = Vec::new();
    for other in control.hosts.values() {
        if other.record.name == entry.record.name {
            continue;
        }
        for own in &entry.host.addresses {
            for theirs in other.host.addresses.iter().filter(|a| a.overlaps(own)) {
                let winner = match own.specificity().cmp(&theirs.specificity()) {
                    std::cmp::Ordering::Greater => &entry.record.name,
                    std::cmp::Ordering::Less => &other.record.name,
                    std::cmp::Ordering::Equal => entry.record.name.as_str().min(&other.record.name),
                };
                found.push(json!({
                    "address": own.to_string(),
                    "host": other.record.name,
                    "host_address": theirs.to_string(),
                    "peers_in_both_go_to": winner,
                }));
            }
        }
    }
    found
}

fn identity(params: &Params, key: &str) -> Result<Option<String>, RpcError> {
    match params.optional_str(key)? {
        None => Ok(None),
        Some(text) if text.is_empty() || text.len() > MAX_IDENTITY_BYTES => Err(
            RpcError::invalid_params(format!("{key}: must be 1 to {MAX_IDENTITY_BYTES} bytes")),
        ),
        Some(text) => Ok(Some(text.to_string())),
    }
}

pub fn create(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    let params = Params::new(
        params,
        &[
            "name",
            "nbd_tls_subject",
            "iqn",
            "nqn",
            "addresses",
            "max_sessions",
        ],
    )?;
    let name = params.name("name")?;
    let record = HostRecord {
        name: name.to_string(),
        nbd_tls_subject: identity(&params, "nbd_tls_subject")?,
        iqn: params
            .optional_str("iqn")?
            .map(iscsi_name::normalize)
            .transpose()
            .map_err(|error| RpcError::invalid_params(format!("iqn: {error}")))?,
        nqn: params
            .optional_str("nqn")?
            .map(|nqn| nvme_name::validate(nqn).map(|()| nqn.to_string()))
            .transpose()
            .map_err(|error| RpcError::invalid_params(format!("nqn: {error}")))?,
        chap: None,
        addresses: params
            .optional_str_list("addresses")?
            .unwrap_or_default()
            .into_iter()
            .map(str::to_string)
            .collect(),
        max_sessions: max_sessions(&params)?,
    };
    if record.addresses.len() > MAX_HOST_ADDRESSES {
        return Err(RpcError::invalid_params(format!(
            "addresses: at most {MAX_HOST_ADDRESSES}"
        )));
    }
    let host = Host::from_record(&record)
        .map_err(|detail| RpcError::invalid_params(format!("addresses: {detail}")))?;
    if record.nbd_tls_subject.is_none()
        && record.iqn.is_none()
        && record.nqn.is_none()
        && record.addresses.is_empty()
    {
        return Err(RpcError::invalid_params(
            "addresses: a host needs at least one of nbd_tls_subject, iqn, nqn or addresses",
        ));
    }
    if control.hosts.contains_key(name) {
        return Err(RpcError::invalid_params(format!(
            "name: host {name} already exists"
        )));
    }
    if let Some(subject) = &record.nbd_tls_subject {
        if let Some(other) = control
            .hosts
            .values()
            .find(|h| h.record.nbd_tls_subject.as_ref() == Some(subject))
        {
            return Err(RpcError::invalid_params(format!(
                "nbd_tls_subject: host {} already has this subject",
                other.record.name
            )));
        }
    }
    if let Some(iqn) = &record.iqn {
        if let Some(other) = control
            .hosts
            .values()
            .find(|h| h.record.iqn.as_ref() == Some(iqn))
        {
            return Err(RpcError::invalid_params(format!(
                "iqn: host {} already has the iSCSI name {iqn}",
                other.record.name
            )));
        }
    }
    if let Some(nqn) = &record.nqn {
        if let Some(other) = control
            .hosts
            .values()
            .find(|h| h.record.nqn.as_ref() == Some(nqn))
        {
            return Err(RpcError::invalid_params(format!(
                "nqn: host {} already has the NVMe name {nqn}",
                other.record.name
            )));
        }
    }
    if control.hosts.len() >= MAX_HOSTS {
        return Err(RpcError::invalid_params(format!(
            "name: the server already has {MAX_HOSTS} hosts"
        )));
    }
    control
        .store
        .put("host", name, &record)
        .map_err(|error| RpcError::internal(error_chain(&error)))?;
    let entry = HostEntry { record, host };
    control.hosts.insert(name.to_string(), entry);
    control.publish();
    log::info!("host {name} created");
    let described = control
        .hosts
        .get(name)
        .map_or(Value::Null, |entry| describe(control, entry));
    for overlap in described["overlaps"].as_array().into_iter().flatten() {
        log::warn!(
            "host {name}: address {} overlaps host {}'s {}; peers in both go to {}",
            overlap["address"].as_str().unwrap_or("?"),
            overlap["host"].as_str().unwrap_or("?"),
            overlap["host_address"].as_str().unwrap_or("?"),
            overlap["peers_in_both_go_to"].as_str().unwrap_or("?"),
        );
    }
    Ok(described)
}

/// `max_sessions`, if given: 1 to MAX_SESSIONS_PER_HOST.
fn max_sessions(params: &Params) -> Result<Option<usize>, RpcError> {
    match params.optional_u64("max_sessions")? {
        None => Ok(None),
        Some(n) if (1..=MAX_SESSIONS_PER_HOST as u64).contains(&n) => Ok(Some(n as usize)),
        Some(_) => Err(RpcError::invalid_params(format!(
            "max_sessions: must be 1 to {MAX_SESSIONS_PER_HOST} (default \
             {DEFAULT_MAX_SESSIONS_PER_HOST})"
        ))),
    }
}

/// `host_set {name, max_sessions}`: changes a host's session limit, at once. Sessions open
/// past a lowered limit stay; new ones are refused until the host is under it.
pub fn set(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    let params = Params::new(params, &["name", "max_sessions"])?;
    let name = params.name("name")?;
    let Some(limit) = max_sessions(&params)? else {
        return Err(RpcError::invalid_params(
            "max_sessions: give the setting to change",
        ));
    };
    let Some(entry) = control.hosts.get(name) else {
        return Err(RpcError::invalid_params(format!("name: no host {name}")));
    };
    let mut record = entry.record.clone();
    record.max_sessions = Some(limit);
    control
        .store
        .put("host", name, &record)
        .map_err(|error| RpcError::internal(error_chain(&error)))?;
    if let Some(entry) = control.hosts.get_mut(name) {
        entry.record = record;
        // The same host, sessions counter and all: only its limit changes.
        entry.host.max_sessions = limit;
    }
    control.publish();
    log::info!("host {name}: max_sessions {limit}");
    Ok(control
        .hosts
        .get(name)
        .map_or(Value::Null, |entry| describe(control, entry)))
}

/// A CHAP user name: 1 to MAX_CHAP_USER_BYTES bytes of printable ASCII (it travels as the
/// CHAP_N text value; RFC 7143 §6.1 values are UTF-8 without NUL, and open-iscsi's own
/// configuration takes no more).
fn chap_user(params: &Params, key: &str) -> Result<Option<String>, RpcError> {
    match params.optional_str(key)? {
        None => Ok(None),
        Some(user)
            if !user.is_empty()
                && user.len() <= MAX_CHAP_USER_BYTES
                && user.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Ok(Some(user.to_string()))
        }
        Some(_) => Err(RpcError::invalid_params(format!(
            "{key}: must be 1 to {MAX_CHAP_USER_BYTES} printable ASCII characters"
        ))),
    }
}

/// A CHAP secret: MIN_CHAP_SECRET_BYTES to MAX_CHAP_SECRET_BYTES bytes, no NUL or line
/// breaks. The error never repeats the secret.
fn chap_secret(params: &Params, key: &str) -> Result<Option<String>, RpcError> {
    match params.optional_str(key)? {
        None => Ok(None),
        Some(secret) if secret.len() < MIN_CHAP_SECRET_BYTES => {
            Err(RpcError::invalid_params(format!(
                "{key}: a CHAP secret is at least {MIN_CHAP_SECRET_BYTES} bytes (RFC 7143 \
                 §12.1.3); this one is {}",
                secret.len()
            )))
        }
        Some(secret) if secret.len() > MAX_CHAP_SECRET_BYTES => Err(RpcError::invalid_params(
            format!("{key}: a CHAP secret is at most {MAX_CHAP_SECRET_BYTES} bytes"),
        )),
        Some(secret) if secret.chars().any(char::is_control) => Err(RpcError::invalid_params(
            format!("{key}: a CHAP secret holds no control characters"),
        )),
        Some(secret) => Ok(Some(secret.to_string())),
    }
}

/// `host_set_chap {name, user, secret, mutual_user?, mutual_secret?}`: the CHAP credentials an
/// iSCSI login of this host must prove, and with the mutual pair, those the target proves
/// back. Replaces any earlier ones; sessions already logged in stay. Nothing the server says
/// (answers, logs) ever holds a secret.
pub fn set_chap(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    let params = Params::new(
        params,
        &["name", "user", "secret", "mutual_user", "mutual_secret"],
    )?;
    let name = params.name("name")?;
    let user =
        chap_user(&params, "user")?.ok_or_else(|| RpcError::invalid_params("user: required"))?;
    let secret = chap_secret(&params, "secret")?
        .ok_or_else(|| RpcError::invalid_params("secret: required"))?;
    let mutual_user = chap_user(&params, "mutual_user")?;
    let mutual_secret = chap_secret(&params, "mutual_secret")?;
    if mutual_user.is_some() != mutual_secret.is_some() {
        return Err(RpcError::invalid_params(
            "mutual_user: mutual CHAP needs both mutual_user and mutual_secret",
        ));
    }
    // One secret for both directions lets an impostor target replay the initiator's own
    // response as its proof (RFC 7143 §12.1.3 forbids it).
    if mutual_secret.as_ref() == Some(&secret) {
        return Err(RpcError::invalid_params(
            "mutual_secret: must differ from secret",
        ));
    }
    let Some(entry) = control.hosts.get(name) else {
        return Err(RpcError::invalid_params(format!("name: no host {name}")));
    };
    let mutual = mutual_user.is_some();
    let mut record = entry.record.clone();
    record.chap = Some(ChapRecord {
        user,
        secret,
        mutual_user,
        mutual_secret,
    });
    replace_chap(control, name, record)?;
    log::info!(
        "host {name}: CHAP set ({})",
        if mutual { "mutual" } else { "one-way" }
    );
    Ok(control
        .hosts
        .get(name)
        .map_or(Value::Null, |entry| describe(control, entry)))
}

/// `host_clear_chap {name}`: the host logs in without CHAP again.
pub fn clear_chap(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    let params = Params::new(params, &["name"])?;
    let name = params.name("name")?;
    let Some(entry) = control.hosts.get(name) else {
        return Err(RpcError::invalid_params(format!("name: no host {name}")));
    };
    let mut record = entry.record.clone();
    record.chap = None;
    replace_chap(control, name, record)?;
    log::info!("host {name}: CHAP cleared");
    Ok(control
        .hosts
        .get(name)
        .map_or(Value::Null, |entry| describe(control, entry)))
}

/// Persists `record` (whose CHAP changed) and publishes it: the live host keeps its sessions
/// counter, only its credentials change.
fn replace_chap(control: &mut Control, name: &str, record: HostRecord) -> Result<(), RpcError> {
    control
        .store
        .put("host", name, &record)
        .map_err(|error| RpcError::internal(error_chain(&error)))?;
    if let Some(entry) = control.hosts.get_mut(name) {
        entry.host.chap = record.chap.clone().map(Arc::new);
        entry.record = record;
    }
    control.publish();
    Ok(())
}

pub fn get(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    one_or_all(params, &control.hosts, "host", |entry| {
        describe(control, entry)
    })
}

pub fn delete(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    let params = Params::new(params, &["name"])?;
    let name = params.name("name")?;
    if !control.hosts.contains_key(name) {
        return Err(RpcError::invalid_params(format!("name: no host {name}")));
    }
    let vpaths = control
        .vpaths
        .values()
        .filter(|v| v.record.host == name)
        .count();
    if vpaths > 0 {
        return Err(RpcError::invalid_params(format!(
            "name: host {name} still has {vpaths} virtual paths (vpath_delete them first)"
        )));
    }
    control
        .store
        .delete("host", name)
        .map_err(|error| RpcError::internal(error_chain(&error)))?;
    control.hosts.remove(name);
    control.publish();
    log::info!("host {name} deleted");
    Ok(Value::Bool(true))
}
