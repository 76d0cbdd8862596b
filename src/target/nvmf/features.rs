//! Get Features and Set Features (NVMe base 2.0 §5.27) for the features an NVMe/TCP
//! controller has: Number of Queues (07h), Keep Alive Timer (0Fh), Asynchronous Event
//! Configuration (0Bh), and Volatile Write Cache (06h), which is reported enabled and cannot
//! be turned off: a pool's LUNs may hold a write in a volatile cache (a file's page cache, a
//! disk's own) until a Flush reaches them, so the host must send Flush when it needs
//! durability, as over NBD and iSCSI.
//!
//! The values the I/O queues' Connect and the admin thread's timer read live in the
//! controller's [`ControllerShared`]; the rest is here.

use super::controller::ControllerShared;
use crate::constants::{NVMF_KEEP_ALIVE_GRANULARITY_MS, NVMF_MAX_IO_QUEUES};
use crate::nvmf::command::Command;
use crate::nvmf::status::{self, Status};
use std::sync::atomic::Ordering;

pub const FID_VOLATILE_WRITE_CACHE: u8 = 0x06;
pub const FID_NUMBER_OF_QUEUES: u8 = 0x07;
pub const FID_ASYNC_EVENT_CONFIG: u8 = 0x0b;
pub const FID_KEEP_ALIVE_TIMER: u8 = 0x0f;

/// Asynchronous Event Configuration bit 8: namespace attribute notices.
pub const AEC_NAMESPACE_ATTRIBUTE: u32 = 1 << 8;
/// Get Features SEL 11b: the feature's capabilities (bit 2: changeable).
const SELECT_CAPABILITIES: u32 = 0b11;
const CAPABILITY_CHANGEABLE: u32 = 1 << 2;

/// The features the admin thread keeps for its controller.
#[derive(Clone, Debug, Default)]
pub struct Features {
    /// The Asynchronous Event Configuration the host set (notices are off until it does).
    pub async_event_config: u32,
}

impl Features {
    /// Get Features: the result dword 0.
    pub fn get(&self, command: &Command, controller: &ControllerShared) -> Result<u32, Status> {
        let cdw10 = command.cdw(10);
        let fid = (cdw10 & 0xff) as u8;
        let select = (cdw10 >> 8) & 0b111;
        if select == SELECT_CAPABILITIES {
            return match fid {
                FID_NUMBER_OF_QUEUES | FID_ASYNC_EVENT_CONFIG | FID_KEEP_ALIVE_TIMER => {
                    Ok(CAPABILITY_CHANGEABLE)
                }
                FID_VOLATILE_WRITE_CACHE => Ok(0),
                _ => Err(status::INVALID_FIELD),
            };
        }
        match fid {
            FID_NUMBER_OF_QUEUES => {
                let granted = controller.io_queue_limit.load(Ordering::Acquire);
                Ok(both_halves(granted))
            }
            FID_KEEP_ALIVE_TIMER => Ok(controller.kato_ms.load(Ordering::Acquire)),
            FID_ASYNC_EVENT_CONFIG => Ok(self.async_event_config),
            FID_VOLATILE_WRITE_CACHE => Ok(1),
            _ => Err(status::INVALID_FIELD),
        }
    }

    /// Set Features: the result dword 0.
    pub fn set(&mut self, command: &Command, controller: &ControllerShared) -> Result<u32, Status> {
        let cdw10 = command.cdw(10);
        let cdw11 = command.cdw(11);
        let fid = (cdw10 & 0xff) as u8;
        let save = cdw10 & (1 << 31) != 0;
        if save
            && matches!(
                fid,
                FID_NUMBER_OF_QUEUES
                    | FID_KEEP_ALIVE_TIMER
                    | FID_ASYNC_EVENT_CONFIG
                    | FID_VOLATILE_WRITE_CACHE
            )
        {
            return Err(status::FEATURE_NOT_SAVEABLE);
        }
        match fid {
            FID_NUMBER_OF_QUEUES => {
                // NSQR and NCQR are 0's based; 65535 (65536 queues) is invalid.
                let submission = cdw11 & 0xffff;
                let completion = cdw11 >> 16;
                if submission == 0xffff || completion == 0xffff {
                    return Err(status::INVALID_FIELD);
                }
                let wanted = submission.min(completion) as usize + 1;
                let granted = wanted.min(NVMF_MAX_IO_QUEUES);
                controller.io_queue_limit.store(granted, Ordering::Release);
                Ok(both_halves(granted))
            }
            FID_KEEP_ALIVE_TIMER => {
                controller
                    .kato_ms
                    .store(round_keep_alive(cdw11), Ordering::Release);
                Ok(0)
            }
            FID_ASYNC_EVENT_CONFIG => {
                self.async_event_config = cdw11;
                Ok(0)
            }
            FID_VOLATILE_WRITE_CACHE if cdw11 & 1 == 1 => Ok(0),
            FID_VOLATILE_WRITE_CACHE => Err(status::FEATURE_NOT_CHANGEABLE),
            _ => Err(status::INVALID_FIELD),
        }
    }

    /// Whether namespace attribute notices are enabled.
    pub fn namespace_notices(&self) -> bool {
        self.async_event_config & AEC_NAMESPACE_ATTRIBUTE != 0
    }
}

/// A 0's based queue count in both halves of a dword (NSQA and NCQA).
fn both_halves(queues: usize) -> u32 {
    let zero_based = (queues.max(1) - 1) as u32;
    zero_based | (zero_based << 16)
}

/// A keep-alive timeout rounded up to the timer's granularity (KAS).
pub fn round_keep_alive(kato_ms: u32) -> u32 {
    kato_ms
        .div_ceil(NVMF_KEEP_ALIVE_GRANULARITY_MS)
        .saturating_mul(NVMF_KEEP_ALIVE_GRANULARITY_MS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nvmf::command::{CommandBuilder, ADMIN_GET_FEATURES, ADMIN_SET_FEATURES};
    use crate::target::nvmf::controller::ControllerKind;

    fn set(fid: u8, value: u32) -> Command {
        CommandBuilder::new(ADMIN_SET_FEATURES, 1)
            .cdw(10, u32::from(fid))
            .cdw(11, value)
            .build()
    }

    fn get(fid: u8) -> Command {
        CommandBuilder::new(ADMIN_GET_FEATURES, 1)
            .cdw(10, u32::from(fid))
            .build()
    }

    #[test]
    fn queues_are_granted_up_to_the_limit() {
        let controller = ControllerShared::new(1, ControllerKind::Nvm, "h", "s");
        let mut features = Features::default();
        let granted = features
            .set(&set(FID_NUMBER_OF_QUEUES, 3 | (3 << 16)), &controller)
            .unwrap();
        assert_eq!(granted, 3 | (3 << 16));
        assert_eq!(controller.io_queue_limit.load(Ordering::Acquire), 4);
        let granted = features
            .set(&set(FID_NUMBER_OF_QUEUES, 63 | (63 << 16)), &controller)
            .unwrap();
        let max = (NVMF_MAX_IO_QUEUES - 1) as u32;
        assert_eq!(granted, max | (max << 16));
        assert_eq!(
            features.get(&get(FID_NUMBER_OF_QUEUES), &controller),
            Ok(granted)
        );
        assert_eq!(
            features.set(&set(FID_NUMBER_OF_QUEUES, 0xffff), &controller),
            Err(status::INVALID_FIELD)
        );
    }

    #[test]
    fn keep_alive_and_event_configuration_are_kept() {
        let controller = ControllerShared::new(1, ControllerKind::Nvm, "h", "s");
        let mut features = Features::default();
        features
            .set(&set(FID_KEEP_ALIVE_TIMER, 4950), &controller)
            .unwrap();
        assert_eq!(
            features.get(&get(FID_KEEP_ALIVE_TIMER), &controller),
            Ok(5000)
        );
        assert!(!features.namespace_notices());
        features
            .set(
                &set(FID_ASYNC_EVENT_CONFIG, AEC_NAMESPACE_ATTRIBUTE),
                &controller,
            )
            .unwrap();
        assert!(features.namespace_notices());
        assert_eq!(
            features.get(&get(FID_VOLATILE_WRITE_CACHE), &controller),
            Ok(1)
        );
        assert_eq!(
            features.set(&set(FID_VOLATILE_WRITE_CACHE, 0), &controller),
            Err(status::FEATURE_NOT_CHANGEABLE)
        );
        assert_eq!(
            features.get(&get(0x0e), &controller),
            Err(status::INVALID_FIELD)
        );
        let saved = CommandBuilder::new(ADMIN_SET_FEATURES, 1)
            .cdw(10, u32::from(FID_KEEP_ALIVE_TIMER) | (1 << 31))
            .build();
        assert_eq!(
            features.set(&saved, &controller),
            Err(status::FEATURE_NOT_SAVEABLE)
        );
    }
}
