//! Prometheus metrics: `sds serve --metrics-listen HOST:PORT` serves `/metrics`.
//!
//! ```text
//!  reactors ──(atomic counters they already keep)──▶ control cycle ──every
//!  METRICS_GATHER_INTERVAL_MS──▶ MetricsSnapshot (plain numbers) ──ArcSwap──▶ HTTP thread
//!  ──prometheus-client encoder──▶ /metrics (OpenMetrics text)
//! ```
//!
//! Scraping never touches the I/O path: the control thread gathers the same counters it reads
//! for `bdev_get_iostat` and the QoS cycle into a [`MetricsSnapshot`] of plain numbers and
//! swaps it into [`MetricsShared`]; the HTTP thread ([`http`]) only encodes the last snapshot
//! ([`encode`]). A scrape costs the control loop nothing; a server that is not scraped pays one
//! gather per interval (only when `--metrics-listen` is given).
//!
//! Adding a metric: add its numbers to the row it belongs to in [`snapshot`], fill them in
//! `control::metrics`, and encode one family in [`encode`] (the name, help and type live
//! there only).

pub mod encode;
pub mod http;
pub mod snapshot;

pub use snapshot::{MetricsShared, MetricsSnapshot};
