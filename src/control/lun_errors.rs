//! LUN I/O errors in the log, rate-limited and written by the control thread.
//!
//! A reactor that meets a failed I/O only counts it in the LUN's [`LunHealth`] (atomic adds,
//! with the errno): a line to stderr per failed request would be a locked, blocking write on
//! the data path, and a LUN failing every I/O would stall its reactor and flood the log. Every
//! control cycle, [`report`] compares each LUN's error counters with what it has logged and,
//! per LUN and per cause (the I/O type: read, write, flush), writes at most one line per
//! [`LUN_ERROR_LOG_INTERVAL_MS`]: the first error of a burst is logged at the next cycle (as
//! soon as one interval has passed since the last line of its cause), the rest of the burst
//! as one line an interval with the count of errors it stands for, so no error goes unaccounted.

use crate::backend::Lun;
use crate::blockio::BlockOp;
use crate::constants::LUN_ERROR_LOG_INTERVAL_MS;
use std::sync::OnceLock;
use std::time::Instant;

/// The control thread's clock for the report times, in milliseconds since its first use.
/// Starts at 1, so 0 can mean "never reported".
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Logs the errors of `luns` not logged yet, at most one line per LUN and I/O type per
/// interval. Called by the control thread once a cycle.
pub fn report<'a>(luns: impl Iterator<Item = (&'a str, &'a dyn Lun)>) {
    let now = now_ms();
    for (name, lun) in luns {
        let Some(health) = lun.health() else {
            continue;
        };
        let counts = health.errors();
        for io_type in BlockOp::LUN_CLASSES {
            let total = match io_type {
                BlockOp::Read => counts.read,
                BlockOp::Flush => counts.flush,
                BlockOp::Write | BlockOp::Trim | BlockOp::WriteZeroes => counts.write,
            };
            let (reported, reported_at_ms) = health.reported(io_type);
            if total <= reported
                || (reported_at_ms != 0
                    && now.saturating_sub(reported_at_ms) < LUN_ERROR_LOG_INTERVAL_MS)
            {
                continue;
            }
            let new = total - reported;
            let latest = health.last_errno(io_type).map_or_else(
                || "its cause was logged where it happened".to_string(),
                |errno| std::io::Error::from_raw_os_error(errno).to_string(),
            );
            let plural = if new == 1 { "" } else { "s" };
            let over = if reported_at_ms == 0 {
                String::new()
            } else {
                format!(
                    " in the last {:.1} s",
                    now.saturating_sub(reported_at_ms) as f64 / 1000.0
                )
            };
            log::warn!(
                "LUN {name}: {new} {} error{plural}{over} (latest: {latest}); I/O errors of a LUN are logged at most once a second per type",
                io_type.as_str()
            );
            health.set_reported(io_type, total, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{open_lun, LunKind, LunSpec};

    #[test]
    fn a_burst_is_one_line_an_interval_and_every_error_is_counted() {
        let lun = open_lun(&LunSpec {
            name: "n".into(),
            kind: LunKind::Null,
            path: None,
            size_bytes: Some(1 << 20),
            block_size_bytes: 512,
            remote: None,
        })
        .expect("null LUN");
        let health = lun.health().expect("health");
        for _ in 0..1000 {
            lun.note_error(BlockOp::Read, libc::EIO);
        }
        report(std::iter::once(("n", lun.as_ref())));
        assert_eq!(
            health.reported(BlockOp::Read).0,
            1000,
            "the first burst is logged"
        );
        let at = health.reported(BlockOp::Read).1;
        assert_ne!(at, 0);
        lun.note_error(BlockOp::Read, libc::EIO);
        report(std::iter::once(("n", lun.as_ref())));
        assert_eq!(
            health.reported(BlockOp::Read),
            (1000, at),
            "not again within the interval"
        );
        assert_eq!(health.reported(BlockOp::Write), (0, 0), "nothing to say");
    }
}
