//! A Server-Sent Events decoder for the providers' streamed answers: bytes in (any
//! chunking), whole events out. Lines end in LF, CRLF or CR; `data:` lines of one event are
//! joined with LF; comments (`:`) and unknown fields are skipped; an empty line ends an
//! event. Bounded: an event larger than [`MAX_EVENT_BYTES`] is an error, not a buffer
//! that grows without end.

/// Largest event accepted (providers send small JSON chunks).
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Event {
    /// The `event:` field ("" when absent).
    pub event: String,
    pub data: String,
}

#[derive(Default)]
pub struct Decoder {
    /// Bytes of the line being read.
    line: Vec<u8>,
    /// The previous byte was a CR (a following LF belongs to the same line end).
    after_cr: bool,
    event: String,
    data: String,
    has_data: bool,
    size: usize,
}

#[derive(Debug)]
pub struct TooLarge;

impl Decoder {
    /// Feed bytes; complete events are appended to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<Event>) -> Result<(), TooLarge> {
        for &b in bytes {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\n' => self.end_line(out),
                b'\r' => {
                    self.after_cr = true;
                    self.end_line(out);
                }
                _ => {
                    self.line.push(b);
                    self.size += 1;
                    if self.size > MAX_EVENT_BYTES {
                        return Err(TooLarge);
                    }
                }
            }
        }
        Ok(())
    }

    /// The end of the stream: an event still open (no closing blank line) is delivered.
    pub fn finish(&mut self, out: &mut Vec<Event>) {
        if !self.line.is_empty() {
            self.end_line(out);
        }
        self.dispatch(out);
    }

    fn end_line(&mut self, out: &mut Vec<Event>) {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if line[0] == b':' {
            return;
        }
        let line = String::from_utf8_lossy(&line);
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line.as_ref(), ""),
        };
        match field {
            "event" => self.event = value.to_string(),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<Event>) {
        let event = std::mem::take(&mut self.event);
        let data = std::mem::take(&mut self.data);
        self.size = 0;
        if std::mem::take(&mut self.has_data) {
            out.push(Event { event, data });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_pieces(input: &[u8], piece: usize) -> Vec<Event> {
        let mut d = Decoder::default();
        let mut out = vec![];
        for c in input.chunks(piece) {
            d.feed(c, &mut out).unwrap();
        }
        d.finish(&mut out);
        out
    }

    #[test]
    fn events_survive_any_chunking_and_line_ending() {
        let lf = b": comment\nevent: message_start\ndata: {\"a\":1}\n\ndata: x\ndata: y\n\nid: 3\ndata:[DONE]\n\n";
        let crlf = String::from_utf8_lossy(lf).replace('\n', "\r\n");
        let cr = String::from_utf8_lossy(lf).replace('\n', "\r");
        let want = vec![
            Event {
                event: "message_start".into(),
                data: "{\"a\":1}".into(),
            },
            Event {
                event: String::new(),
                data: "x\ny".into(),
            },
            Event {
                event: String::new(),
                data: "[DONE]".into(),
            },
        ];
        for input in [lf.to_vec(), crlf.into_bytes(), cr.into_bytes()] {
            for piece in [1, 2, 3, 7, 1000] {
                assert_eq!(decode_in_pieces(&input, piece), want, "piece {piece}");
            }
        }
    }

    #[test]
    fn unterminated_last_event_and_no_data() {
        assert_eq!(
            decode_in_pieces(b"event: ping\n\ndata: tail", 4),
            vec![Event {
                event: String::new(),
                data: "tail".into()
            }]
        );
    }

    #[test]
    fn oversized_event_is_refused() {
        let mut d = Decoder::default();
        let big = vec![b'a'; MAX_EVENT_BYTES + 1];
        assert!(d.feed(&big, &mut vec![]).is_err());
    }
}
