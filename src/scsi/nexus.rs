//! Who is asking: the I_T nexus of a command (SAM-5 4.7), named as the transport names its
//! ports, and what a logical unit says about itself (its identity for INQUIRY).

/// An I_T nexus: initiator port and target port names as the transport forms them (for
/// iSCSI `"<iqn>,i,0x<isid>"` and `"<target iqn>,t,0x0001"`), and the sds host the
/// initiator is. Reservations and unit attentions are kept per nexus.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Nexus {
    pub initiator_port: String,
    pub target_port: String,
    pub host: String,
}

/// What INQUIRY reports of a logical unit, and the transport-specific parts of its device
/// identification page (which the layer copies, never interprets).
#[derive(Clone, Debug)]
pub struct LunIdentity {
    /// 8 ASCII characters at most (padded with spaces).
    pub vendor: String,
    /// 16 ASCII characters at most.
    pub product: String,
    /// 4 ASCII characters at most.
    pub revision: String,
    /// The SCSI target device's name (the iSCSI target name), for VPD 0x83.
    pub target_name: String,
    /// The transport's protocol identifier (SPC-4 7.6.1: 5 for iSCSI), for VPD 0x83
    /// designators with PIV set.
    pub protocol_identifier: u8,
    /// The relative port identifier of the target port (1 for a single-port target).
    pub relative_target_port: u16,
    /// The volume's UUID: the unit serial number and the NAA identifier are made from it, so
    /// they are stable across restarts and the same on every path to the volume.
    pub volume_uuid: [u8; 16],
}

impl LunIdentity {
    /// The identity of an sds volume served under `target_name` with `protocol_identifier`.
    pub fn new(volume_uuid: [u8; 16], target_name: &str, protocol_identifier: u8) -> Self {
        Self {
            vendor: "SDS".to_string(),
            product: "VOLUME".to_string(),
            revision: crate::version::VERSION
                .chars()
                .filter(|c| c.is_ascii_graphic())
                .take(4)
                .collect(),
            target_name: target_name.to_string(),
            protocol_identifier,
            relative_target_port: 1,
            volume_uuid,
        }
    }

    /// The unit serial number (VPD 0x80): the volume UUID in 32 lowercase hex digits.
    pub fn serial(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, b) in self.volume_uuid.iter().enumerate() {
            out[2 * i] = HEX[(b >> 4) as usize];
            out[2 * i + 1] = HEX[(b & 0x0F) as usize];
        }
        out
    }

    /// The NAA locally assigned identifier (NAA 3, SPC-4 7.8.6.6.3): 60 bits of the UUID.
    pub fn naa(&self) -> [u8; 8] {
        let mut naa = [0u8; 8];
        naa.copy_from_slice(&self.volume_uuid[..8]);
        naa[0] = 0x30 | (naa[0] & 0x0F);
        naa
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";
