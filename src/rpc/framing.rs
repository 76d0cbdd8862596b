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

/// Splits a byte stream into JSON values. An object or array (every JSON-RPC request is one)
/// is delimited by a scanner that keeps its place between reads (nesting depth, inside a
/// string, after a backslash), so each byte is looked at once however the value is cut into
/// reads; only a complete value is handed to the parser. Anything else at the top level is
/// parsed as it stands.
#[derive(Default)]
pub struct Decoder {
    buffer: Vec<u8>,
    /// Bytes of `buffer` the scanner has already looked at for the current value.
    scanned: usize,
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// Buffer length at the last early syntax check of an unfinished value.
    checked: usize,
}

impl Decoder {
    /// Appends bytes read from the stream.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete value, `Ok(None)` if more bytes are needed. After an error the
    /// stream cannot be resynchronised: the caller answers and closes the connection.
    pub fn next_value(&mut self) -> Result<Option<Value>, FramingError> {
        if self.scanned == 0 {
            let start = self
                .buffer
                .iter()
                .position(|b| !b.is_ascii_whitespace())
                .unwrap_or(self.buffer.len());
            self.buffer.drain(..start);
        }
        let Some(&first) = self.buffer.first() else {
            return Ok(None);
        };
        if first != b'{' && first != b'[' {
            return self.parse_scalar();
        }
        match self.scan() {
            Some(end) => {
                let parsed = serde_json::from_slice::<Value>(&self.buffer[..end]);
                self.buffer.drain(..end);
                self.scanned = 0;
                self.checked = 0;
                parsed
                    .map(Some)
                    .map_err(|error| FramingError::Syntax(error.to_string()))
            }
            None if self.buffer.len() > MAX_RPC_REQUEST_BYTES => Err(FramingError::TooLarge),
            None => {
                // Garbage should not wait for a closing bracket that may never come: parse
                // what has arrived whenever it has doubled since the last look (so the
                // looks add up to linear work), and refuse at once what can never be JSON.
                if self.buffer.len() >= 2 * self.checked.max(1) {
                    self.checked = self.buffer.len();
                    if let Err(error) = serde_json::from_slice::<Value>(&self.buffer) {
                        if !error.is_eof() {
                            return Err(FramingError::Syntax(error.to_string()));
                        }
                    }
                }
                Ok(None)
            }
        }
    }

    /// Scans on from where the last call stopped; returns the length of the value once its
    /// closing bracket is in.
    fn scan(&mut self) -> Option<usize> {
        let limit = self.buffer.len().min(MAX_RPC_REQUEST_BYTES + 1);
        while self.scanned < limit {
            let byte = self.buffer[self.scanned];
            self.scanned += 1;
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if byte == b'\\' {
                    self.escaped = true;
                } else if byte == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match byte {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        return (self.scanned <= MAX_RPC_REQUEST_BYTES).then_some(self.scanned);
                    }
                }
                _ => {}
            }
        }
        None
    }

    /// A top-level value that is not an object or an array (never a valid request).
    fn parse_scalar(&mut self) -> Result<Option<Value>, FramingError> {
        let mut stream = serde_json::Deserializer::from_slice(&self.buffer).into_iter::<Value>();
        match stream.next() {
            Some(Ok(value)) => {
                let used = stream.byte_offset();
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

    #[test]
    fn brackets_in_strings_and_byte_at_a_time() {
        let stream = br#"{"a":"}{\"]\\","b":[1,{"c":2}]} [3] {"d":1}"#;
        let mut decoder = Decoder::default();
        let mut values = Vec::new();
        for byte in stream {
            decoder.feed(&[*byte]);
            while let Ok(Some(value)) = decoder.next_value() {
                values.push(value);
            }
        }
        assert_eq!(
            values,
            vec![
                json!({"a": "}{\"]\\", "b": [1, {"c": 2}]}),
                json!([3]),
                json!({"d": 1})
            ]
        );
        // A long value fed a byte at a time is scanned once and parsed early only as it
        // doubles, not re-parsed per byte (that would be some 20 GB of parsing here).
        let mut decoder = Decoder::default();
        decoder.feed(b"{\"x\":\"");
        for _ in 0..200_000 {
            decoder.feed(b"y");
            assert_eq!(decoder.next_value(), Ok(None));
        }
        decoder.feed(b"\"}");
        assert!(matches!(decoder.next_value(), Ok(Some(_))));
    }

    #[test]
    fn unfinished_garbage_is_refused_without_waiting_for_more() {
        let mut decoder = Decoder::default();
        decoder.feed(b"{this is not json");
        assert!(matches!(decoder.next_value(), Err(FramingError::Syntax(_))));
        let mut decoder = Decoder::default();
        decoder.feed(b"{\"jsonrpc\": \"2.0\", \"id\": ");
        assert_eq!(
            decoder.next_value(),
            Ok(None),
            "valid so far: wait for the rest"
        );
    }
}
