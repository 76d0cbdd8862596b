//! The `save_config` document: its format (sections in dependency order), its secrets, and
//! the order of records inside a section.

use super::to_value;
use crate::store::records::{
    DomainRecord, MirrorRecord, PoolRecord, VolumeRecord, VolumeSetRecord, VpathRecord,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;

/// The document format this server writes and reads (`"sds_config": 1`).
pub const CONFIG_FORMAT: u64 = 1;
/// Secret fields: of a LUN record (a remote LUN's CHAP), and of a host's `chap` object.
const LUN_SECRET_KEYS: &[&str] = &["chap_secret"];
const CHAP_SECRET_KEYS: &[&str] = &["secret", "mutual_secret"];

/// The kinds of objects, in dependency order: the order of the document's `sections`.
pub const SECTION_KINDS: [&str; 8] = [
    "luns",
    "pools",
    "volumes",
    "volume_sets",
    "mirrors",
    "hosts",
    "domains",
    "vpaths",
];

/// The document. On the wire: `{"sds_config": 1, "saved_by", "secrets", "sections":
/// [{"kind": "luns", "records": [...]}, ...]}`, the sections in [`SECTION_KINDS`] order (a
/// JSON object's keys have no order a reader must keep; an array's has). LUNs and hosts are
/// kept as JSON so that a document saved without secrets (which lacks fields the records
/// require) still parses, and says what is missing.
#[derive(Debug, Default)]
pub struct ConfigDocument {
    pub sds_config: u64,
    pub saved_by: String,
    /// Whether the secrets are in it.
    pub secrets: bool,
    pub luns: Vec<Value>,
    pub pools: Vec<PoolRecord>,
    pub volumes: Vec<VolumeRecord>,
    pub volume_sets: Vec<VolumeSetRecord>,
    pub mirrors: Vec<MirrorRecord>,
    pub hosts: Vec<Value>,
    pub domains: Vec<DomainRecord>,
    /// A VP's `id` is this server's; a loading server gives it its own and knows the VP by
    /// its host and volume.
    pub vpaths: Vec<VpathRecord>,
}

fn values<T: Serialize>(records: &[T]) -> Vec<Value> {
    records.iter().map(to_value).collect()
}

fn records_of<T: DeserializeOwned>(kind: &str, records: Vec<Value>) -> Result<Vec<T>, String> {
    records
        .into_iter()
        .map(|value| {
            let name = value
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string();
            serde_json::from_value(value).map_err(|error| format!("{kind}: {name}: {error}"))
        })
        .collect()
}

impl ConfigDocument {
    pub fn to_json(&self) -> Value {
        let sections: [(&str, Vec<Value>); 8] = [
            ("luns", self.luns.clone()),
            ("pools", values(&self.pools)),
            ("volumes", values(&self.volumes)),
            ("volume_sets", values(&self.volume_sets)),
            ("mirrors", values(&self.mirrors)),
            ("hosts", self.hosts.clone()),
            ("domains", values(&self.domains)),
            ("vpaths", values(&self.vpaths)),
        ];
        json!({
            "sds_config": self.sds_config,
            "saved_by": self.saved_by,
            "secrets": self.secrets,
            "sections": sections
                .into_iter()
                .map(|(kind, records)| json!({"kind": kind, "records": records}))
                .collect::<Vec<_>>(),
        })
    }

    /// Reads a document; sections may come in any order, each kind at most once.
    pub fn from_json(value: Value) -> Result<Self, String> {
        let Value::Object(mut object) = value else {
            return Err("the document must be a JSON object".into());
        };
        if let Some(key) = object
            .keys()
            .find(|k| !["sds_config", "saved_by", "secrets", "sections"].contains(&k.as_str()))
        {
            return Err(format!(
                "{key}: unknown key (expected sds_config, saved_by, secrets, sections)"
            ));
        }
        let mut document = Self {
            sds_config: object
                .get("sds_config")
                .and_then(Value::as_u64)
                .ok_or("sds_config: required, the format number")?,
            saved_by: object
                .get("saved_by")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            secrets: object
                .get("secrets")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            ..Default::default()
        };
        let sections = match object.remove("sections") {
            Some(Value::Array(sections)) => sections,
            None => Vec::new(),
            Some(_) => return Err("sections: must be a list".into()),
        };
        let mut seen = BTreeSet::new();
        for section in sections {
            let kind = section
                .get("kind")
                .and_then(Value::as_str)
                .ok_or("sections: each needs a kind")?
                .to_string();
            if !SECTION_KINDS.contains(&kind.as_str()) {
                return Err(format!(
                    "sections: unknown kind {kind} (expected one of {})",
                    SECTION_KINDS.join(", ")
                ));
            }
            if !seen.insert(kind.clone()) {
                return Err(format!("sections: {kind} twice"));
            }
            let records = match section.get("records") {
                Some(Value::Array(records)) => records.clone(),
                _ => return Err(format!("sections: {kind}: records must be a list")),
            };
            match kind.as_str() {
                "luns" => document.luns = records,
                "pools" => document.pools = records_of(&kind, records)?,
                "volumes" => document.volumes = records_of(&kind, records)?,
                "volume_sets" => document.volume_sets = records_of(&kind, records)?,
                "mirrors" => document.mirrors = records_of(&kind, records)?,
                "hosts" => document.hosts = records,
                "domains" => document.domains = records_of(&kind, records)?,
                _ => document.vpaths = records_of(&kind, records)?,
            }
        }
        Ok(document)
    }
}

/// Removes the secrets from a LUN's or a host's JSON.
pub(super) fn strip_secrets(value: &mut Value) {
    if let Some(object) = value.as_object_mut() {
        for key in LUN_SECRET_KEYS {
            object.remove(*key);
        }
        if let Some(chap) = object.get_mut("chap").and_then(Value::as_object_mut) {
            for key in CHAP_SECRET_KEYS {
                chap.remove(*key);
            }
        }
    }
}

pub(super) fn stripped(mut value: Value) -> Value {
    strip_secrets(&mut value);
    value
}

/// The secret fields a LUN's or a host's JSON names a user for but lacks.
pub(super) fn missing_secrets(value: &Value) -> Vec<&'static str> {
    let mut missing = Vec::new();
    let has =
        |object: &Map<String, Value>, key: &str| object.get(key).is_some_and(|v| !v.is_null());
    if let Some(object) = value.as_object() {
        if has(object, "chap_user") && !has(object, "chap_secret") {
            missing.push("chap_secret");
        }
        if let Some(chap) = object.get("chap").and_then(Value::as_object) {
            if !has(chap, "secret") {
                missing.push("chap.secret");
            }
            if has(chap, "mutual_user") && !has(chap, "mutual_secret") {
                missing.push("chap.mutual_secret");
            }
        }
    }
    missing
}

/// Orders records so each comes after the ones it names (`depends` gives those names);
/// names outside the list are taken as there already. A cycle (a damaged record) keeps the
/// rest in their original order at the end.
pub(super) fn dependency_order<T>(
    records: Vec<T>,
    name: impl Fn(&T) -> &str,
    depends: impl Fn(&T) -> Vec<String>,
) -> Vec<T> {
    let names: BTreeSet<String> = records.iter().map(|r| name(r).to_string()).collect();
    let mut placed: BTreeSet<String> = BTreeSet::new();
    let mut waiting = records;
    let mut ordered = Vec::with_capacity(waiting.len());
    while !waiting.is_empty() {
        let before = waiting.len();
        let mut still = Vec::new();
        for record in waiting {
            let ready = depends(&record)
                .iter()
                .all(|d| !names.contains(d) || placed.contains(d));
            if ready {
                placed.insert(name(&record).to_string());
                ordered.push(record);
            } else {
                still.push(record);
            }
        }
        if still.len() == before {
            ordered.extend(still);
            break;
        }
        waiting = still;
    }
    ordered
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_stripped_and_missing_ones_named() {
        let host = json!({
            "name": "h", "addresses": [],
            "chap": {"user": "u", "secret": "s3cret-s3cret", "mutual_user": "t", "mutual_secret": "m"}
        });
        let bare = stripped(host.clone());
        assert_eq!(bare["chap"], json!({"user": "u", "mutual_user": "t"}));
        assert_eq!(missing_secrets(&host), Vec::<&str>::new());
        assert_eq!(
            missing_secrets(&bare),
            vec!["chap.secret", "chap.mutual_secret"]
        );
        let lun = json!({"name": "r", "chap_user": "u", "chap_secret": "x"});
        assert_eq!(stripped(lun.clone()).get("chap_secret"), None);
        assert_eq!(missing_secrets(&stripped(lun)), vec!["chap_secret"]);
    }

    #[test]
    fn a_document_round_trips_and_bad_ones_say_what_is_wrong() {
        let document = ConfigDocument {
            sds_config: CONFIG_FORMAT,
            saved_by: "test".into(),
            luns: vec![json!({"name": "l"})],
            domains: vec![DomainRecord {
                name: "d".into(),
                capabilities: Default::default(),
            }],
            ..Default::default()
        };
        let text = document.to_json();
        let kinds: Vec<&str> = text["sections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, SECTION_KINDS);
        let back = ConfigDocument::from_json(text.clone()).unwrap();
        assert_eq!(back.luns, document.luns);
        assert_eq!(back.domains, document.domains);
        let error = |value: Value| ConfigDocument::from_json(value).unwrap_err();
        assert!(error(json!([])).contains("object"));
        assert!(error(json!({"sections": []})).contains("sds_config"));
        assert!(error(json!({"sds_config": 1, "extra": 1})).contains("extra: unknown key"));
        let twice = json!({"sds_config": 1, "sections": [
            {"kind": "hosts", "records": []}, {"kind": "hosts", "records": []}]});
        assert!(error(twice).contains("hosts twice"));
        let unknown = json!({"sds_config": 1, "sections": [{"kind": "disks", "records": []}]});
        assert!(error(unknown).contains("unknown kind disks"));
        let bad =
            json!({"sds_config": 1, "sections": [{"kind": "pools", "records": [{"name": "p"}]}]});
        assert!(error(bad).contains("pools: p:"));
    }

    #[test]
    fn records_come_after_what_they_name() {
        let records = vec![
            ("clone", vec!["snap"]),
            ("snap", vec!["vol"]),
            ("other", vec!["elsewhere"]),
            ("vol", vec![]),
        ];
        let ordered = dependency_order(
            records,
            |r| r.0,
            |r| r.1.iter().map(|s| s.to_string()).collect(),
        );
        let names: Vec<&str> = ordered.iter().map(|r| r.0).collect();
        assert_eq!(names, ["other", "vol", "snap", "clone"]);
    }
}
