//! CHAP (RFC 1994, as iSCSI uses it in RFC 7143 §12.1.3) with MD5 (`CHAP_A=5`), the only
//! algorithm this target offers.
//!
//! The target sends an identifier `CHAP_I` and a random challenge `CHAP_C`; the initiator
//! answers with its user name `CHAP_N` and `CHAP_R = MD5(I ‖ secret ‖ C)`. For mutual CHAP the
//! initiator sends its own `CHAP_I`/`CHAP_C` with that answer, and the target proves itself
//! the same way with the host's mutual secret. Binary values are `0x` hex or `0b` base64
//! (§6.1); this target sends hex. A challenge an initiator sends back equal to the target's
//! own is refused (it would let a peer reflect the target's challenge to learn the answer).

use md5::{Digest, Md5};
use std::io::Read;

/// Bytes of the challenge this target sends (RFC 7143 §12.1.3 asks for at least as long as
/// the MD5 hash).
pub const CHAP_CHALLENGE_BYTES: usize = 16;
/// The longest challenge accepted from an initiator for mutual CHAP.
pub const MAX_CHAP_CHALLENGE_BYTES: usize = 1024;
/// CHAP_A's value for MD5.
pub const CHAP_MD5: &str = "5";
/// Bytes of an MD5 response.
pub const CHAP_RESPONSE_BYTES: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ChapError {
    #[error("cannot read random bytes for a CHAP challenge")]
    Random(#[source] std::io::Error),
    #[error("a CHAP binary value that is neither 0x hex nor 0b base64")]
    BadEncoding,
    #[error("a CHAP binary value longer than {MAX_CHAP_CHALLENGE_BYTES} bytes")]
    TooLong,
}

/// The challenge this target sent.
#[derive(Clone, Debug)]
pub struct Challenge {
    pub id: u8,
    pub bytes: [u8; CHAP_CHALLENGE_BYTES],
}

impl Challenge {
    /// A fresh random identifier and challenge.
    pub fn new() -> Result<Self, ChapError> {
        let mut random = [0u8; CHAP_CHALLENGE_BYTES + 1];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut file| file.read_exact(&mut random))
            .map_err(ChapError::Random)?;
        let mut bytes = [0u8; CHAP_CHALLENGE_BYTES];
        bytes.copy_from_slice(&random[1..]);
        Ok(Self {
            id: random[0],
            bytes,
        })
    }

    /// Whether `response` (as received, encoded) is the answer to this challenge with
    /// `secret`.
    pub fn verify(&self, secret: &[u8], response: &str) -> bool {
        let Ok(received) = decode_binary(response) else {
            return false;
        };
        let expected = answer(self.id, secret, &self.bytes);
        // Compared in constant time: the time taken says nothing about how much matched.
        received.len() == expected.len()
            && received
                .iter()
                .zip(expected.iter())
                .fold(0u8, |diff, (a, b)| diff | (a ^ b))
                == 0
    }
}

/// `MD5(id ‖ secret ‖ challenge)`.
pub fn answer(id: u8, secret: &[u8], challenge: &[u8]) -> [u8; CHAP_RESPONSE_BYTES] {
    let mut md5 = Md5::new();
    md5.update([id]);
    md5.update(secret);
    md5.update(challenge);
    md5.finalize().into()
}

/// `0x` followed by the bytes in lower-case hex.
pub fn encode_hex(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(2 + bytes.len() * 2);
    text.push_str("0x");
    for byte in bytes {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

/// Decodes a `0x` hex or `0b` base64 binary value (§6.1), at most
/// [`MAX_CHAP_CHALLENGE_BYTES`].
pub fn decode_binary(value: &str) -> Result<Vec<u8>, ChapError> {
    if let Some(hex) = value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        if hex.len() > MAX_CHAP_CHALLENGE_BYTES * 2 {
            return Err(ChapError::TooLong);
        }
        // An odd number of digits has an implied leading zero.
        let padded;
        let hex = if hex.len() % 2 == 1 {
            padded = format!("0{hex}");
            padded.as_str()
        } else {
            hex
        };
        if hex.is_empty() {
            return Err(ChapError::BadEncoding);
        }
        return (0..hex.len())
            .step_by(2)
            .map(|at| {
                hex.get(at..at + 2)
                    .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                    .ok_or(ChapError::BadEncoding)
            })
            .collect();
    }
    if let Some(base64) = value
        .strip_prefix("0b")
        .or_else(|| value.strip_prefix("0B"))
    {
        if base64.len() > MAX_CHAP_CHALLENGE_BYTES * 4 / 3 + 4 {
            return Err(ChapError::TooLong);
        }
        return decode_base64(base64);
    }
    Err(ChapError::BadEncoding)
}

fn decode_base64(text: &str) -> Result<Vec<u8>, ChapError> {
    let digits = text.trim_end_matches('=');
    if digits.is_empty() || digits.len() % 4 == 1 || text.len() - digits.len() > 2 {
        return Err(ChapError::BadEncoding);
    }
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    let mut bits = 0u32;
    let mut count = 0;
    for byte in digits.bytes() {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return Err(ChapError::BadEncoding),
        };
        bits = bits << 6 | u32::from(value);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_is_md5_of_id_secret_challenge() {
        // MD5 of the 1 + 12 + 4 bytes below, computed independently (Python's hashlib).
        let answer = answer(0x01, b"secretsecret", &[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(encode_hex(&answer), "0x113a578a5e83443d8b27feb98e8ddb59",);
        let challenge = Challenge {
            id: 1,
            bytes: [7u8; CHAP_CHALLENGE_BYTES],
        };
        let good = encode_hex(&super::answer(1, b"s3cret-s3cret", &[7u8; 16]));
        assert!(challenge.verify(b"s3cret-s3cret", &good));
        assert!(!challenge.verify(b"wrong-secret!", &good));
        assert!(!challenge.verify(b"s3cret-s3cret", "0x00"));
        assert!(!challenge.verify(b"s3cret-s3cret", "nonsense"));
    }

    #[test]
    fn binary_values_decode_from_hex_and_base64() {
        assert_eq!(decode_binary("0x0a0B").unwrap(), vec![0x0a, 0x0b]);
        assert_eq!(decode_binary("0xabc").unwrap(), vec![0x0a, 0xbc]);
        assert_eq!(decode_binary("0bAQID").unwrap(), vec![1, 2, 3]);
        assert_eq!(decode_binary("0bAQI=").unwrap(), vec![1, 2]);
        assert!(decode_binary("0x").is_err());
        assert!(decode_binary("0xzz").is_err());
        assert!(decode_binary("0b*").is_err());
        assert!(decode_binary("1234").is_err());
        assert!(matches!(
            decode_binary(&format!("0x{}", "00".repeat(MAX_CHAP_CHALLENGE_BYTES + 1))),
            Err(ChapError::TooLong)
        ));
    }

    #[test]
    fn challenges_are_random() {
        let a = Challenge::new().unwrap();
        let b = Challenge::new().unwrap();
        assert_ne!(a.bytes, b.bytes);
    }
}
