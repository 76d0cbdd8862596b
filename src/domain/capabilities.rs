//! What a storage domain grants its virtual paths: QoS limits for the domain as a whole, a
//! floor and a ceiling for each VP, a priority class, the operations allowed, and how much
//! statistics detail is kept. Zero means "no limit" everywhere, as in SPDK's QoS parameters.

use crate::blockio::BlockOp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Limits on a stream of I/O, SPDK's names and units; 0 = unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QosLimits {
    #[serde(default)]
    pub rw_ios_per_sec: u64,
    #[serde(default)]
    pub rw_mbytes_per_sec: u64,
    #[serde(default)]
    pub r_mbytes_per_sec: u64,
    #[serde(default)]
    pub w_mbytes_per_sec: u64,
}

impl QosLimits {
    pub const NAMES: [&'static str; 4] = [
        "rw_ios_per_sec",
        "rw_mbytes_per_sec",
        "r_mbytes_per_sec",
        "w_mbytes_per_sec",
    ];

    pub fn is_unlimited(&self) -> bool {
        *self == Self::default()
    }

    fn field(&mut self, name: &str) -> Option<&mut u64> {
        match name {
            "rw_ios_per_sec" => Some(&mut self.rw_ios_per_sec),
            "rw_mbytes_per_sec" => Some(&mut self.rw_mbytes_per_sec),
            "r_mbytes_per_sec" => Some(&mut self.r_mbytes_per_sec),
            "w_mbytes_per_sec" => Some(&mut self.w_mbytes_per_sec),
            _ => None,
        }
    }

    /// Sets the fields named in `object` (SPDK's `bdev_set_qos_limit` takes the same names).
    /// `prefix` is how errors name the object.
    pub fn merge(&mut self, object: &Map<String, Value>, prefix: &str) -> Result<(), String> {
        for name in Self::NAMES {
            if let Some(value) = object.get(name).filter(|v| !v.is_null()) {
                let number = value.as_u64().filter(|&n| n <= MAX_LIMIT).ok_or_else(|| {
                    format!(
                        "{prefix}{name}: must be a whole number from 0 (no limit) to {MAX_LIMIT}"
                    )
                })?;
                if let Some(field) = self.field(name) {
                    *field = number;
                }
            }
        }
        Ok(())
    }

    pub fn to_json(self) -> Value {
        serde_json::json!({
            "rw_ios_per_sec": self.rw_ios_per_sec,
            "rw_mbytes_per_sec": self.rw_mbytes_per_sec,
            "r_mbytes_per_sec": self.r_mbytes_per_sec,
            "w_mbytes_per_sec": self.w_mbytes_per_sec,
        })
    }
}

/// Largest limit accepted (IOPS or MB/s).
const MAX_LIMIT: u64 = 1 << 40;

/// How a domain's VPs rank against other domains' VPs when they share a limit (a volume's
/// `bdev_set_qos_limit`): their shares are weighted 4 : 2 : 1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    High,
    #[default]
    Normal,
    Low,
}

impl Priority {
    pub fn weight(self) -> u64 {
        match self {
            Self::High => 4,
            Self::Normal => 2,
            Self::Low => 1,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::High => "high",
            Self::Normal => "normal",
            Self::Low => "low",
        }
    }
    fn parse(text: &str) -> Option<Self> {
        match text {
            "high" => Some(Self::High),
            "normal" => Some(Self::Normal),
            "low" => Some(Self::Low),
            _ => None,
        }
    }
}

/// Operations a domain lets its VPs send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowedOps {
    pub read: bool,
    pub write: bool,
    pub flush: bool,
    pub trim: bool,
    pub write_zeroes: bool,
}

impl Default for AllowedOps {
    fn default() -> Self {
        Self {
            read: true,
            write: true,
            flush: true,
            trim: true,
            write_zeroes: true,
        }
    }
}

impl AllowedOps {
    /// Whether the domain lets its VPs send `op`.
    #[inline]
    pub fn allows(&self, op: BlockOp) -> bool {
        match op {
            BlockOp::Read => self.read,
            BlockOp::Write => self.write,
            BlockOp::Flush => self.flush,
            BlockOp::Trim => self.trim,
            BlockOp::WriteZeroes => self.write_zeroes,
        }
    }

    fn set(&mut self, op: BlockOp, on: bool) {
        match op {
            BlockOp::Read => self.read = on,
            BlockOp::Write => self.write = on,
            BlockOp::Flush => self.flush = on,
            BlockOp::Trim => self.trim = on,
            BlockOp::WriteZeroes => self.write_zeroes = on,
        }
    }

    fn parse(value: &Value, name: &str) -> Result<Self, String> {
        let list = value
            .as_array()
            .ok_or_else(|| format!("{name}: must be a list of operations"))?;
        let mut ops = Self {
            read: false,
            write: false,
            flush: false,
            trim: false,
            write_zeroes: false,
        };
        for item in list {
            let op = BlockOp::ALL
                .into_iter()
                .find(|op| item.as_str() == Some(op.as_str()));
            let Some(op) = op else {
                let names: Vec<&str> = BlockOp::ALL.iter().map(|op| op.as_str()).collect();
                return Err(format!("{name}: {item} is not one of {}", names.join(", ")));
            };
            ops.set(op, true);
        }
        Ok(ops)
    }

    pub fn to_json(self) -> Value {
        Value::Array(
            BlockOp::ALL
                .into_iter()
                .filter(|op| self.allows(*op))
                .map(|op| Value::from(op.as_str()))
                .collect(),
        )
    }
}

/// How much the data path records for each I/O of the domain's VPs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatsDetail {
    /// Operations, bytes and errors.
    Basic,
    /// Also a latency histogram (p50 / p99 / p99.9).
    #[default]
    Latency,
}

impl StatsDetail {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Basic => "basic",
            Self::Latency => "latency",
        }
    }
}

/// Everything a domain grants.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Limits on the domain as a whole, shared among its VPs by demand.
    #[serde(default)]
    pub qos: QosLimits,
    /// Each VP is guaranteed this many IOPS of the domain's budget while it wants them.
    #[serde(default)]
    pub vpath_min_ios_per_sec: u64,
    /// No VP gets more than this, whatever the domain has left (0: no ceiling).
    #[serde(default)]
    pub vpath_max_ios_per_sec: u64,
    #[serde(default)]
    pub priority: Priority,
    #[serde(default)]
    pub allowed_ops: AllowedOps,
    #[serde(default)]
    pub statistics: StatsDetail,
}

impl Capabilities {
    const KEYS: [&'static str; 10] = [
        "rw_ios_per_sec",
        "rw_mbytes_per_sec",
        "r_mbytes_per_sec",
        "w_mbytes_per_sec",
        "vpath_min_ios_per_sec",
        "vpath_max_ios_per_sec",
        "priority",
        "allowed_ops",
        "statistics",
        "qos",
    ];

    /// Applies the keys present in `value` (a JSON object) over `self`. Errors name the key as
    /// `capabilities.KEY`.
    pub fn merge(&mut self, value: &Value) -> Result<(), String> {
        let object = value.as_object().ok_or("capabilities: must be an object")?;
        if let Some(key) = object.keys().find(|k| !Self::KEYS.contains(&k.as_str())) {
            return Err(format!(
                "capabilities.{key}: unknown capability (expected one of: {})",
                Self::KEYS[..9].join(", ")
            ));
        }
        let mut next = *self;
        next.qos.merge(object, "capabilities.")?;
        if let Some(qos) = object.get("qos").filter(|v| !v.is_null()) {
            let inner = qos
                .as_object()
                .ok_or("capabilities.qos: must be an object")?;
            next.qos.merge(inner, "capabilities.qos.")?;
        }
        for (key, field) in [
            ("vpath_min_ios_per_sec", &mut next.vpath_min_ios_per_sec),
            ("vpath_max_ios_per_sec", &mut next.vpath_max_ios_per_sec),
        ] {
            if let Some(value) = object.get(key).filter(|v| !v.is_null()) {
                *field = value
                    .as_u64()
                    .filter(|&n| n <= MAX_LIMIT)
                    .ok_or_else(|| format!("capabilities.{key}: must be a whole number"))?;
            }
        }
        if let Some(value) = object.get("priority").filter(|v| !v.is_null()) {
            next.priority = value.as_str().and_then(Priority::parse).ok_or_else(|| {
                format!("capabilities.priority: {value} is not one of high, normal, low")
            })?;
        }
        if let Some(value) = object.get("allowed_ops").filter(|v| !v.is_null()) {
            next.allowed_ops = AllowedOps::parse(value, "capabilities.allowed_ops")?;
        }
        if let Some(value) = object.get("statistics").filter(|v| !v.is_null()) {
            next.statistics = match value.as_str() {
                Some("basic") => StatsDetail::Basic,
                Some("latency") => StatsDetail::Latency,
                _ => {
                    return Err(format!(
                        "capabilities.statistics: {value} is not one of basic, latency"
                    ))
                }
            };
        }
        if next.vpath_max_ios_per_sec != 0
            && next.vpath_min_ios_per_sec > next.vpath_max_ios_per_sec
        {
            return Err(
                "capabilities.vpath_min_ios_per_sec: larger than vpath_max_ios_per_sec".into(),
            );
        }
        if next.qos.rw_ios_per_sec != 0 && next.vpath_min_ios_per_sec > next.qos.rw_ios_per_sec {
            return Err(
                "capabilities.vpath_min_ios_per_sec: larger than the domain's rw_ios_per_sec"
                    .into(),
            );
        }
        *self = next;
        Ok(())
    }

    pub fn to_json(&self) -> Value {
        let mut object = match self.qos.to_json() {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        object.insert(
            "vpath_min_ios_per_sec".into(),
            self.vpath_min_ios_per_sec.into(),
        );
        object.insert(
            "vpath_max_ios_per_sec".into(),
            self.vpath_max_ios_per_sec.into(),
        );
        object.insert("priority".into(), self.priority.as_str().into());
        object.insert("allowed_ops".into(), self.allowed_ops.to_json());
        object.insert("statistics".into(), self.statistics.as_str().into());
        Value::Object(object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_sets_only_what_is_given_and_names_bad_keys() {
        let mut caps = Capabilities::default();
        caps.merge(&json!({"rw_ios_per_sec": 2000, "allowed_ops": ["read", "write"]}))
            .expect("merge");
        assert_eq!(caps.qos.rw_ios_per_sec, 2000);
        assert!(caps.allowed_ops.read && !caps.allowed_ops.trim);
        caps.merge(&json!({"priority": "high"})).expect("merge");
        assert_eq!(caps.qos.rw_ios_per_sec, 2000, "kept");
        assert_eq!(caps.priority, Priority::High);
        caps.merge(&json!({"qos": {"w_mbytes_per_sec": 5}}))
            .expect("nested");
        assert_eq!(caps.qos.w_mbytes_per_sec, 5);
        for (bad, key) in [
            (json!({"rw_ios_per_sec": -1}), "capabilities.rw_ios_per_sec"),
            (json!({"iops": 5}), "capabilities.iops"),
            (json!({"priority": "urgent"}), "capabilities.priority"),
            (
                json!({"allowed_ops": ["read", "erase"]}),
                "capabilities.allowed_ops",
            ),
            (json!({"statistics": 3}), "capabilities.statistics"),
            (
                json!({"vpath_min_ios_per_sec": 5000}),
                "capabilities.vpath_min_ios_per_sec",
            ),
        ] {
            let before = caps;
            let error = caps.merge(&bad).expect_err("must fail");
            assert!(error.starts_with(key), "{error}");
            assert_eq!(caps, before, "a failed merge changes nothing");
        }
        let round: Capabilities =
            serde_json::from_value(serde_json::to_value(caps).expect("ser")).expect("de");
        assert_eq!(round, caps);
    }
}
