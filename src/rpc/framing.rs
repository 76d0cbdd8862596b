//! SPDK's framing: JSON values back to back on a stream, with no length prefix or delimiter,
//! split across reads anywhere. [`Decoder`] takes bytes as they arrive and yields each value
//! once it is complete.

use crate::constants::MAX_RPC_REQUEST_BYTES;
use serde_json::Value;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FramingError {
    #[error("invalid JSON: {0}")]
    Syntax(String),
    #[error("request larger than {MAX_RPC_REQUEST_BYTES} bytes")]
    TooLarge,
}

#[derive(Default)]
pub struct Decoder {
    buffer: Vec<u8>,
}

impl Decoder {
    /// Appends bytes read from the stream.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete value, `Ok(None)` if more bytes are needed. After an error the
    /// stream cannot be resynchronised: the caller answers and closes the connection.
    pub fn next_value(&mut self) -> Result<Option<Value>, FramingError> {
        let start = self
            .buffer
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(self.buffer.len());
        self.buffer.drain(..start);
        if self.buffer.is_empty() {
            return Ok(None);
        }
        let mut stream = serde_json::Deserializer::from_slice(&self.buffer).into_iter::<Value>();
        match stream.next() {
            Some(Ok(value)) => {
                let used = stream.byte_offset();
                // A request that arrived whole in one read is as oversized as one still
                // arriving: refuse both alike.
                if used > MAX_RPC_REQUEST_BYTES {
                    return Err(FramingError::TooLarge);
                }
                self.buffer.drain(..used);
                Ok(Some(value))
            }
            Some(Err(error)) if error.is_eof() => {
                if self.buffer.len() > MAX_RPC_REQUEST_BYTES {
                    Err(FramingError::TooLarge)
                } else {
                    Ok(None)
                }
            }
            Some(Err(error)) => Err(FramingError::Syntax(error.to_string())),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn split_and_concatenated_values() {
        let mut decoder = Decoder::default();
        decoder.feed(b"{\n  \"a\": ");
        assert_eq!(decoder.next_value(), Ok(None));
        decoder.feed(b"1\n}{\"b\":2}  {\"c\"");
        assert_eq!(decoder.next_value(), Ok(Some(json!({"a": 1}))));
        assert_eq!(decoder.next_value(), Ok(Some(json!({"b": 2}))));
        assert_eq!(decoder.next_value(), Ok(None));
        decoder.feed(b":3}");
        assert_eq!(decoder.next_value(), Ok(Some(json!({"c": 3}))));
    }

    #[test]
    fn garbage_and_oversize() {
        let mut decoder = Decoder::default();
        decoder.feed(b"{]");
        assert!(matches!(decoder.next_value(), Err(FramingError::Syntax(_))));
        let mut decoder = Decoder::default();
        decoder.feed(b"[\"");
        decoder.feed(&vec![b'x'; MAX_RPC_REQUEST_BYTES]);
        assert_eq!(decoder.next_value(), Err(FramingError::TooLarge));
    }

    /// A complete value past the limit used to pass when its last byte came in the same read
    /// that crossed the limit: only an incomplete one was measured.
    #[test]
    fn complete_oversize_value_is_refused() {
        let mut decoder = Decoder::default();
        let mut request = b"{\"a\":\"".to_vec();
        request.resize(request.len() + MAX_RPC_REQUEST_BYTES, b'x');
        request.extend_from_slice(b"\"}{}");
        decoder.feed(&request);
        assert_eq!(decoder.next_value(), Err(FramingError::TooLarge));

        let mut decoder = Decoder::default();
        let mut request = b"[\"".to_vec();
        request.resize(MAX_RPC_REQUEST_BYTES - 2, b'x');
        request.extend_from_slice(b"\"]");
        assert_eq!(request.len(), MAX_RPC_REQUEST_BYTES);
        decoder.feed(&request);
        assert!(matches!(decoder.next_value(), Ok(Some(Value::Array(_)))));
    }
}
