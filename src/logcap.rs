//! The log's writer: every line goes to stderr whole, and none is longer than [`MAX_LINE`] — a
//! longer one (a field that holds something huge) is cut, and says how much was left out.

use std::io::Write;

/// The longest line written to the log, newline included.
pub const MAX_LINE: usize = 4096;

/// Makes one [`CappedLine`] per event (tracing-subscriber's `MakeWriter`).
#[derive(Clone, Copy, Debug, Default)]
pub struct CappedStderr {
    /// JSON lines: a cut line is replaced by a JSON object holding its start, so it still parses.
    pub json: bool,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CappedStderr {
    type Writer = CappedLine;
    fn make_writer(&'a self) -> CappedLine {
        CappedLine { json: self.json, buf: Vec::new(), dropped: 0 }
    }
}

/// One event's text, kept up to the cap and written to stderr in one piece when it is dropped.
pub struct CappedLine {
    json: bool,
    buf: Vec<u8>,
    dropped: usize,
}

impl Write for CappedLine {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let room = MAX_LINE.saturating_sub(self.buf.len());
        let take = data.len().min(room);
        self.buf.extend_from_slice(&data[..take]);
        self.dropped += data.len() - take;
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for CappedLine {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let out = if self.dropped == 0 { std::mem::take(&mut self.buf) } else { self.cut() };
        let _ = std::io::stderr().lock().write_all(&out);
    }
}

impl CappedLine {
    /// The line cut to fit [`MAX_LINE`] with a note of the bytes left out, ending in a newline.
    fn cut(&self) -> Vec<u8> {
        let total = self.buf.len() + self.dropped;
        let note = format!("… [log line cut: {total} bytes]");
        // Escaping can lengthen a JSON head: the head is halved until the line fits.
        let mut keep = MAX_LINE / 2;
        loop {
            let mut end = keep.min(self.buf.len());
            while end > 0 && (self.buf[end - 1] & 0xC0) == 0x80 {
                end -= 1; // not inside a UTF-8 sequence
            }
            let head = String::from_utf8_lossy(&self.buf[..end]);
            let head: String = head.chars().filter(|c| *c != '\n').collect();
            let mut line = if self.json {
                serde_json::json!({"log_line_cut_bytes": total, "head": format!("{head}{note}")}).to_string()
            } else {
                format!("{head}{note}")
            };
            if line.len() < MAX_LINE || keep == 0 {
                line.push('\n');
                return line.into_bytes();
            }
            keep /= 2;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_line_is_cut_and_a_short_one_kept() {
        let mut w = CappedLine { json: false, buf: Vec::new(), dropped: 0 };
        w.write_all(&vec![b'a'; 10 * MAX_LINE]).unwrap();
        let cut = w.cut();
        assert!(cut.len() <= MAX_LINE, "{}", cut.len());
        assert!(String::from_utf8_lossy(&cut).contains(&format!("cut: {} bytes", 10 * MAX_LINE)));
        w.buf.clear();
        w.dropped = 0;
        let mut j = CappedLine { json: true, buf: Vec::new(), dropped: 0 };
        j.write_all(format!("{{\"fields\":\"{}\"}}\n", "\"".repeat(3 * MAX_LINE)).as_bytes()).unwrap();
        let cut = j.cut();
        assert!(cut.len() <= MAX_LINE);
        let v: serde_json::Value = serde_json::from_slice(&cut).unwrap();
        assert!(v["log_line_cut_bytes"].as_u64().unwrap() > MAX_LINE as u64);
        j.buf.clear(); // nothing for its drop to write
    }
}
