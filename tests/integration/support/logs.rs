//! One daemon's log lines, kept in memory as JSON values: what it wrote to stderr
//! when it ran as a child, or what its own dispatcher formatted when it runs in-process.

use std::io::Write;
use std::sync::{Arc, Mutex};
use tracing_subscriber::fmt::MakeWriter;

#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<serde_json::Value>>>);

impl Logs {
    /// A line that is not JSON (a panic message, a usage error) is kept as a string.
    pub fn push_line(&self, line: &str) {
        if line.trim().is_empty() {
            return;
        }
        let v = serde_json::from_str(line).unwrap_or_else(|_| serde_json::Value::String(line.to_string()));
        self.0.lock().unwrap().push(v);
    }

    pub fn all(&self) -> Vec<serde_json::Value> {
        self.0.lock().unwrap().clone()
    }

    pub fn find(&self, pred: impl Fn(&serde_json::Value) -> bool) -> Option<serde_json::Value> {
        self.0.lock().unwrap().iter().find(|l| pred(l)).cloned()
    }
}

/// The formatter writes each event through a writer of its own; the lines are kept
/// when it is done.
pub struct Line {
    buf: Vec<u8>,
    logs: Logs,
}

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        for line in String::from_utf8_lossy(&self.buf).lines() {
            self.logs.push_line(line);
        }
    }
}

impl<'a> MakeWriter<'a> for Logs {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line {
            buf: Vec::new(),
            logs: self.clone(),
        }
    }
}
