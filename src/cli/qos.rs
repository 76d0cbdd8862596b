//! QoS limit options shared by `sds volume qos` and the capabilities of `sds domain create`
//! and `sds domain set`, with SPDK's names and units.

use clap::Args;
use serde_json::{Map, Value};

/// Limits on a stream of I/O, with SPDK's names and units. Only the options given are sent.
#[derive(Args)]
pub struct QosArgs {
    /// I/Os per second, reads and writes together (0: no limit)
    #[arg(long, value_name = "N")]
    rw_ios_per_sec: Option<u64>,
    /// Megabytes (MiB, as SPDK counts them) read and written per second, all together
    /// (0: no limit)
    #[arg(long, value_name = "N")]
    rw_mbytes_per_sec: Option<u64>,
    /// Megabytes (MiB) read per second (0: no limit)
    #[arg(long, value_name = "N")]
    r_mbytes_per_sec: Option<u64>,
    /// Megabytes (MiB) written per second (0: no limit)
    #[arg(long, value_name = "N")]
    w_mbytes_per_sec: Option<u64>,
}

impl QosArgs {
    /// The limits given, by their JSON-RPC names.
    pub fn to_json(&self) -> Map<String, Value> {
        let mut object = Map::new();
        for (key, value) in [
            ("rw_ios_per_sec", self.rw_ios_per_sec),
            ("rw_mbytes_per_sec", self.rw_mbytes_per_sec),
            ("r_mbytes_per_sec", self.r_mbytes_per_sec),
            ("w_mbytes_per_sec", self.w_mbytes_per_sec),
        ] {
            if let Some(value) = value {
                object.insert(key.into(), value.into());
            }
        }
        object
    }
}
