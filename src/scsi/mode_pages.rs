//! MODE SENSE and MODE SELECT (SPC-4 6.11-6.14, 7.5; SBC-3 6.4): the caching page (08h),
//! the control page (0Ah) and the informational exceptions control page (1Ch), with their
//! current, changeable and default values (saved values are not implemented).
//!
//! Only WCE is changeable: with it cleared, the logical unit sends every write with FUA, so
//! a write is durable when it completes. Everything else a MODE SELECT sends must equal
//! the current value, or it is refused with INVALID FIELD IN PARAMETER LIST pointing at the
//! byte.
//!
//! Adding a page: its code in [`PAGES`], its bytes in `page`, its changeable bits in the
//! same function with `PageControl::Changeable`.

use super::geometry::Geometry;
use super::sense::{self, Sense};

pub const PAGE_CACHING: u8 = 0x08;
pub const PAGE_CONTROL: u8 = 0x0A;
pub const PAGE_INFORMATIONAL_EXCEPTIONS: u8 = 0x1C;
pub const PAGE_ALL: u8 = 0x3F;
/// The pages in the order "all pages" returns them.
pub const PAGES: [u8; 3] = [PAGE_CACHING, PAGE_CONTROL, PAGE_INFORMATIONAL_EXCEPTIONS];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageControl {
    Current,
    Changeable,
    Default,
}

/// What the mode pages say of the unit as this nexus sees it.
#[derive(Clone, Copy, Debug)]
pub struct ModeState {
    pub write_cache: bool,
    /// The path is read-only: the header's WP bit.
    pub write_protected: bool,
}

/// Appends page `code` (with its header) to `out`.
fn page(code: u8, control: PageControl, state: &ModeState, out: &mut Vec<u8>) {
    let changeable = control == PageControl::Changeable;
    let start = out.len();
    match code {
        PAGE_CACHING => {
            out.resize(start + 20, 0);
            out[start] = PAGE_CACHING;
            out[start + 1] = 18;
            let wce = match control {
                PageControl::Current => state.write_cache,
                PageControl::Changeable | PageControl::Default => true,
            };
            if wce {
                out[start + 2] = 0x04;
            }
        }
        PAGE_CONTROL => {
            out.resize(start + 12, 0);
            out[start] = PAGE_CONTROL;
            out[start + 1] = 10;
            if !changeable {
                // QUEUE ALGORITHM MODIFIER 1: unrestricted reordering.
                out[start + 3] = 0x10;
                // BUSY TIMEOUT PERIOD: unlimited.
                out[start + 8] = 0xFF;
                out[start + 9] = 0xFF;
            }
        }
        _ => {
            out.resize(start + 12, 0);
            out[start] = PAGE_INFORMATIONAL_EXCEPTIONS;
            out[start + 1] = 10;
            if !changeable {
                // DEXCPT: sds reports no informational exceptions.
                out[start + 2] = 0x08;
            }
        }
    }
}

/// MODE SENSE parameter data into `out`.
#[allow(clippy::too_many_arguments)]
pub fn mode_sense(
    ten: bool,
    disable_block_descriptors: bool,
    long_lba: bool,
    page_control: u8,
    code: u8,
    subpage: u8,
    geometry: &Geometry,
    state: &ModeState,
    out: &mut Vec<u8>,
) -> Result<(), Sense> {
    let control = match page_control {
        0 => PageControl::Current,
        1 => PageControl::Changeable,
        2 => PageControl::Default,
        _ => return Err(sense::SAVING_PARAMETERS_NOT_SUPPORTED),
    };
    let pages: &[u8] = match (code, subpage) {
        (PAGE_ALL, 0x00 | 0xFF) => &PAGES,
        (c, 0x00) if PAGES.contains(&c) => match c {
            PAGE_CACHING => &PAGES[0..1],
            PAGE_CONTROL => &PAGES[1..2],
            _ => &PAGES[2..3],
        },
        (c, _) if c == PAGE_ALL || PAGES.contains(&c) => {
            return Err(Sense::invalid_field_in_cdb(3, None))
        }
        _ => return Err(Sense::invalid_field_in_cdb(2, Some(5))),
    };
    out.clear();
    let header = if ten { 8 } else { 4 };
    out.resize(header, 0);
    // Device-specific parameter: WP, DPOFUA.
    let device_specific = if state.write_protected { 0x80 } else { 0 } | 0x10;
    if ten {
        out[3] = device_specific;
    } else {
        out[2] = device_specific;
    }
    if !disable_block_descriptors {
        if ten && long_lba {
            out[4] = 0x01; // LONGLBA
            out[7] = 16;
            out.extend_from_slice(&geometry.capacity_blocks.to_be_bytes());
            out.extend_from_slice(&[0; 4]);
            out.extend_from_slice(&geometry.block_bytes.to_be_bytes());
        } else {
            if ten {
                out[7] = 8;
            } else {
                out[3] = 8;
            }
            let blocks = u32::try_from(geometry.capacity_blocks).unwrap_or(u32::MAX);
            out.extend_from_slice(&blocks.to_be_bytes());
            out.push(0);
            out.extend_from_slice(&geometry.block_bytes.to_be_bytes()[1..]);
        }
    }
    for &code in pages {
        page(code, control, state, out);
    }
    if ten {
        let len = (out.len() - 2) as u16;
        out[0..2].copy_from_slice(&len.to_be_bytes());
    } else {
        out[0] = (out.len() - 1).min(255) as u8;
    }
    Ok(())
}

/// A MODE SELECT parameter list checked against the current values; what it changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Selected {
    pub write_cache: Option<bool>,
}

/// Checks a MODE SELECT parameter list: every field equal to the current value except the
/// changeable ones.
pub fn mode_select(
    ten: bool,
    params: &[u8],
    geometry: &Geometry,
    state: &ModeState,
) -> Result<Selected, Sense> {
    let header = if ten { 8 } else { 4 };
    if params.len() < header {
        return Err(sense::PARAMETER_LIST_LENGTH_ERROR);
    }
    let descriptor_len = if ten {
        usize::from(u16::from_be_bytes([params[6], params[7]]))
    } else {
        usize::from(params[3])
    };
    let long_lba = ten && params[4] & 0x01 != 0;
    let pages_at = header + descriptor_len;
    if params.len() < pages_at {
        return Err(sense::PARAMETER_LIST_LENGTH_ERROR);
    }
    match (descriptor_len, long_lba) {
        (0, _) => {}
        (8, false) => {
            // The block length must stay what it is (the number of blocks is ignored).
            let d = &params[header..pages_at];
            let block = u32::from_be_bytes([0, d[5], d[6], d[7]]);
            if block != geometry.block_bytes {
                return Err(Sense::invalid_field_in_parameter_list(
                    (header + 5) as u16,
                    None,
                ));
            }
        }
        (16, true) => {
            let d = &params[header..pages_at];
            let block = u32::from_be_bytes([d[12], d[13], d[14], d[15]]);
            if block != geometry.block_bytes {
                return Err(Sense::invalid_field_in_parameter_list(
                    (header + 12) as u16,
                    None,
                ));
            }
        }
        _ => {
            return Err(Sense::invalid_field_in_parameter_list(
                if ten { 6 } else { 3 },
                None,
            ))
        }
    }
    let mut selected = Selected { write_cache: None };
    let mut at = pages_at;
    let mut current = Vec::with_capacity(32);
    let mut changeable = Vec::with_capacity(32);
    while at < params.len() {
        if params.len() - at < 2 {
            return Err(sense::PARAMETER_LIST_LENGTH_ERROR);
        }
        let code = params[at] & 0x3F;
        if params[at] & 0x40 != 0 {
            // SPF: no subpages here.
            return Err(Sense::invalid_field_in_parameter_list(at as u16, Some(6)));
        }
        if !PAGES.contains(&code) {
            return Err(Sense::invalid_field_in_parameter_list(at as u16, Some(5)));
        }
        current.clear();
        changeable.clear();
        page(code, PageControl::Current, state, &mut current);
        page(code, PageControl::Changeable, state, &mut changeable);
        let len = usize::from(params[at + 1]) + 2;
        if len != current.len() {
            return Err(Sense::invalid_field_in_parameter_list(
                (at + 1) as u16,
                None,
            ));
        }
        if params.len() - at < len {
            return Err(sense::PARAMETER_LIST_LENGTH_ERROR);
        }
        let sent = &params[at..at + len];
        // Byte 0's PS bit is reserved in MODE SELECT; byte 1 is the length checked above.
        for i in 2..len {
            let differs = (sent[i] ^ current[i]) & !changeable[i];
            if differs != 0 {
                return Err(Sense::invalid_field_in_parameter_list(
                    (at + i) as u16,
                    Some(7 - differs.leading_zeros() as u8),
                ));
            }
        }
        if code == PAGE_CACHING {
            selected.write_cache = Some(sent[2] & 0x04 != 0);
        }
        at += len;
    }
    Ok(selected)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GEOMETRY: Geometry = Geometry {
        block_bytes: 512,
        capacity_blocks: 8192,
        physical_exponent: 0,
        thin: true,
        extent_blocks: 2048,
    };
    const STATE: ModeState = ModeState {
        write_cache: true,
        write_protected: false,
    };

    #[test]
    fn all_pages_with_a_block_descriptor() {
        let mut out = Vec::new();
        mode_sense(
            false, false, false, 0, PAGE_ALL, 0, &GEOMETRY, &STATE, &mut out,
        )
        .expect("mode sense");
        assert_eq!(out.len(), 4 + 8 + 20 + 12 + 12);
        assert_eq!(out[0] as usize, out.len() - 1);
        assert_eq!(out[2], 0x10, "DPOFUA, not write protected");
        assert_eq!(&out[4..12], &[0, 0, 0x20, 0, 0, 0, 2, 0]);
        assert_eq!(&out[12..15], &[0x08, 18, 0x04], "caching page, WCE");
        assert_eq!(out[32], 0x0A);
        assert_eq!(out[44], 0x1C);
        // Saved values: not implemented; an unknown page: refused.
        assert_eq!(
            mode_sense(false, true, false, 3, PAGE_ALL, 0, &GEOMETRY, &STATE, &mut out),
            Err(sense::SAVING_PARAMETERS_NOT_SUPPORTED)
        );
        assert_eq!(
            mode_sense(true, true, false, 0, 0x19, 0, &GEOMETRY, &STATE, &mut out),
            Err(Sense::invalid_field_in_cdb(2, Some(5)))
        );
    }

    #[test]
    fn mode_select_takes_wce_and_refuses_the_rest() {
        let mut sensed = Vec::new();
        mode_sense(
            true,
            true,
            false,
            0,
            PAGE_CACHING,
            0,
            &GEOMETRY,
            &STATE,
            &mut sensed,
        )
        .expect("mode sense");
        let mut list = sensed.clone();
        list[0] = 0;
        list[1] = 0;
        list[8 + 2] &= !0x04;
        assert_eq!(
            mode_select(true, &list, &GEOMETRY, &STATE),
            Ok(Selected {
                write_cache: Some(false)
            })
        );
        list[8 + 3] = 0x01;
        assert_eq!(
            mode_select(true, &list, &GEOMETRY, &STATE),
            Err(Sense::invalid_field_in_parameter_list(11, Some(0)))
        );
        assert_eq!(
            mode_select(true, &list[..5], &GEOMETRY, &STATE),
            Err(sense::PARAMETER_LIST_LENGTH_ERROR)
        );
    }
}
