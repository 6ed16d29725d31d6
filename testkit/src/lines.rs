//! Reading a child's output a line at a time on a thread per stream. Each line is kept as
//! read (for dumps and byte-exact logs), stamped when it was read, and — as asked — its
//! JSON event parsed. Lines go to a [`LineSink`]: [`Events`] (a channel, with waits that
//! have deadlines) or the caller's own (the harness records every process into one shared
//! history).

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::proc::Pipes;

/// Lines kept for error messages.
const TAIL: usize = 40;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// How much of each line the reader parses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parse {
    /// Nothing: raw output.
    None,
    /// Only the `event` name, found without parsing the line (a throughput run reads a
    /// few hundred thousand lines while the daemon shares the CPU).
    Name,
    /// The whole line as JSON, when it is a JSON object.
    Json,
}

/// One line a child wrote.
#[derive(Clone, Debug)]
pub struct Line {
    /// When the reader read it.
    pub at: Instant,
    pub stream: Stream,
    /// As read, with its newline (the last line of a stream may have none).
    pub bytes: Vec<u8>,
    /// The `event` field; empty for a line that is not an event (or was not parsed).
    pub name: String,
    /// The line as a JSON object ([`Parse::Json`] only).
    pub json: Option<Value>,
}

impl Line {
    pub fn new(stream: Stream, bytes: Vec<u8>, parse: Parse) -> Line {
        let at = Instant::now();
        let (name, json) = match parse {
            Parse::None => (String::new(), None),
            Parse::Name => (std::str::from_utf8(&bytes).ok().and_then(event_name).unwrap_or_default().to_owned(), None),
            Parse::Json => {
                let json = serde_json::from_slice::<Value>(&bytes).ok().filter(Value::is_object);
                let name = json.as_ref().and_then(|v| v.get("event")?.as_str()).unwrap_or_default().to_owned();
                (name, json)
            }
        };
        Line { at, stream, bytes, name, json }
    }

    /// The line as text, without its line ending.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).trim_end_matches(['\n', '\r']).to_owned()
    }

    /// An integer field of the line's JSON (parsed now if the reader did not).
    pub fn field_i64(&self, key: &str) -> Option<i64> {
        match &self.json {
            Some(v) => v.get(key)?.as_i64(),
            None => serde_json::from_slice::<Value>(&self.bytes).ok()?.get(key)?.as_i64(),
        }
    }
}

/// The event name of a JSON line, found without parsing the whole line.
fn event_name(line: &str) -> Option<&str> {
    const KEY: &str = "\"event\":\"";
    let start = line.find(KEY)? + KEY.len();
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

/// Where a reader thread delivers.
pub trait LineSink: Send + 'static {
    /// One line; false stops the reader.
    fn line(&mut self, line: Line) -> bool;
    /// The stream reached its end (or failed).
    fn closed(&mut self, stream: Stream);
}

/// Reads `source` a line at a time on a new thread until it ends, delivering to `sink`.
pub fn read_lines<R: Read + Send + 'static>(
    source: R,
    stream: Stream,
    parse: Parse,
    mut sink: impl LineSink,
) -> io::Result<JoinHandle<()>> {
    let name = match stream {
        Stream::Stdout => "stdout",
        Stream::Stderr => "stderr",
    };
    std::thread::Builder::new().name(format!("read-{name}")).spawn(move || {
        let mut reader = BufReader::with_capacity(1 << 16, source);
        loop {
            let mut bytes = Vec::new();
            match reader.read_until(b'\n', &mut bytes) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if !sink.line(Line::new(stream, bytes, parse)) {
                break;
            }
        }
        sink.closed(stream);
    })
}

enum Msg {
    Line(Line),
    Closed,
}

struct ChannelSink(Sender<Msg>);

impl LineSink for ChannelSink {
    fn line(&mut self, line: Line) -> bool {
        self.0.send(Msg::Line(line)).is_ok()
    }
    fn closed(&mut self, _: Stream) {
        let _ = self.0.send(Msg::Closed);
    }
}

/// A child's output as a channel of lines, read on threads; waits with deadlines.
pub struct Events {
    rx: Receiver<Msg>,
    tx: Sender<Msg>,
    /// Streams not yet at their end.
    open: usize,
    tail: VecDeque<String>,
    keep_in_tail: fn(&Line) -> bool,
}

/// Lines added to a child's stream by the caller (e.g. the bench's own markers).
#[derive(Clone)]
pub struct Injector(Sender<Msg>);

impl Injector {
    pub fn send(&self, line: Line) {
        let _ = self.0.send(Msg::Line(line));
    }
}

impl Events {
    /// Starts a reader for each pipe the child was given.
    pub fn read(pipes: Pipes, parse: Parse) -> io::Result<Events> {
        let (tx, rx) = mpsc::channel();
        let mut open = 0;
        if let Some(out) = pipes.stdout {
            read_lines(out, Stream::Stdout, parse, ChannelSink(tx.clone()))?;
            open += 1;
        }
        if let Some(err) = pipes.stderr {
            read_lines(err, Stream::Stderr, parse, ChannelSink(tx.clone()))?;
            open += 1;
        }
        Ok(Events { rx, tx, open, tail: VecDeque::with_capacity(TAIL), keep_in_tail: |_| true })
    }

    /// Keeps only the lines `keep` accepts in the tail error messages show (e.g. not
    /// the thousands of routine events of a throughput run).
    pub fn tail_filter(mut self, keep: fn(&Line) -> bool) -> Events {
        self.keep_in_tail = keep;
        self
    }

    pub fn injector(&self) -> Injector {
        Injector(self.tx.clone())
    }

    /// Every stream has ended and every line was taken.
    pub fn is_closed(&self) -> bool {
        self.open == 0
    }

    /// The next line; `Err(true)` once every stream has ended, `Err(false)` at the deadline.
    fn next(&mut self, deadline: Instant) -> Result<Line, bool> {
        loop {
            if self.open == 0 {
                // Injected lines may still be queued.
                return match self.rx.try_recv() {
                    Ok(Msg::Line(l)) => Ok(self.note(l)),
                    _ => Err(true),
                };
            }
            match self.rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(Msg::Line(l)) => return Ok(self.note(l)),
                Ok(Msg::Closed) => self.open -= 1,
                Err(RecvTimeoutError::Timeout) => return Err(false),
                Err(RecvTimeoutError::Disconnected) => unreachable!("Events holds a sender"),
            }
        }
    }

    fn note(&mut self, line: Line) -> Line {
        if (self.keep_in_tail)(&line) {
            if self.tail.len() == TAIL {
                self.tail.pop_front();
            }
            self.tail.push_back(line.text());
        }
        line
    }

    fn error(&self, what: &str, since: Instant, closed: bool) -> WaitError {
        WaitError { what: what.to_owned(), closed, waited: since.elapsed(), tail: self.tail.iter().cloned().collect() }
    }

    /// The next line `pred` accepts (lines before it are passed to `pred` and dropped).
    pub fn wait_for(
        &mut self,
        what: &str,
        deadline: Instant,
        mut pred: impl FnMut(&Line) -> bool,
    ) -> Result<Line, WaitError> {
        let since = Instant::now();
        loop {
            match self.next(deadline) {
                Ok(line) if pred(&line) => return Ok(line),
                Ok(_) => {}
                Err(closed) => return Err(self.error(what, since, closed)),
            }
        }
    }

    /// Every line until every stream has ended.
    pub fn drain(&mut self, deadline: Instant) -> Result<Vec<Line>, WaitError> {
        let since = Instant::now();
        let mut lines = Vec::new();
        loop {
            match self.next(deadline) {
                Ok(line) => lines.push(line),
                Err(true) => return Ok(lines),
                Err(false) => return Err(self.error("the end of its output", since, false)),
            }
        }
    }

    /// The last lines taken (those the tail filter keeps).
    pub fn tail(&self) -> Vec<String> {
        self.tail.iter().cloned().collect()
    }
}

/// A wait that ended without its line: what it waited for, why, and the last lines.
#[derive(Debug)]
pub struct WaitError {
    pub what: String,
    /// The output ended (the process exited) rather than the deadline passing.
    pub closed: bool,
    pub waited: Duration,
    pub tail: Vec<String>,
}

impl std::fmt::Display for WaitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.closed {
            write!(f, "the output ended (the process exited?) before {}", self.what)?;
        } else {
            write!(f, "no {} within {:?}", self.what, self.waited)?;
        }
        if !self.tail.is_empty() {
            write!(f, "; the last lines:\n  {}", self.tail.join("\n  "))?;
        }
        Ok(())
    }
}

impl std::error::Error for WaitError {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proc::Proc;
    use std::process::{Command, Stdio};

    #[test]
    fn event_names_are_found_without_parsing() {
        let line = r#"{"event":"job.claimed","job_id":7,"level":"info","msg":"Job claimed atomically"}"#;
        assert_eq!(event_name(line), Some("job.claimed"));
        assert_eq!(event_name("thread 'main' panicked"), None);
        let l = Line::new(Stream::Stderr, format!("{line}\n").into_bytes(), Parse::Name);
        assert_eq!((l.name.as_str(), l.json.is_none(), l.field_i64("job_id")), ("job.claimed", true, Some(7)));
        let l = Line::new(Stream::Stderr, format!("{line}\n").into_bytes(), Parse::Json);
        assert_eq!((l.name.as_str(), l.json.is_some(), l.text().as_str()), ("job.claimed", true, line));
        assert!(Line::new(Stream::Stdout, b"42\n".to_vec(), Parse::Json).json.is_none(), "objects only");
    }

    fn sh(script: &str) -> (Proc, Events) {
        Proc::spawn_with_events(Command::new("sh").args(["-c", script]), Parse::Json).unwrap()
    }

    #[test]
    fn a_wait_finds_its_event_and_a_failed_one_says_what_and_shows_the_tail() {
        let (_p, mut ev) =
            sh(r#"echo 'not json' >&2; echo '{"event":"a"}' >&2; echo '{"event":"b","n":2}' >&2; exec sleep 600"#);
        let far = Instant::now() + crate::deadline(30.0);
        assert_eq!(ev.wait_for("b", far, |l| l.name == "b").unwrap().field_i64("n"), Some(2));
        let err = ev.wait_for("c", Instant::now() + Duration::from_millis(100), |l| l.name == "c").unwrap_err();
        assert!(!err.closed);
        assert!(err.to_string().starts_with("no c within"), "{err}");
        assert!(err.to_string().contains("not json"), "{err}");
    }

    #[test]
    fn the_end_of_the_output_ends_a_wait_at_once() {
        let (mut p, mut ev) = sh(r#"echo '{"event":"a"}' >&2"#);
        let err = ev.wait_for("b", Instant::now() + crate::deadline(60.0), |l| l.name == "b").unwrap_err();
        assert!(err.closed && err.waited < crate::deadline(30.0), "{err}");
        assert!(ev.is_closed());
        assert!(p.wait_exit(crate::deadline(30.0)).unwrap().success());
    }

    #[test]
    fn injected_lines_arrive_with_the_childs() {
        let (_p, mut ev) = sh("exec sleep 600");
        let inject = ev.injector();
        std::thread::spawn(move || {
            inject.send(Line { name: String::from("marker"), ..Line::new(Stream::Stdout, b"7".to_vec(), Parse::None) })
        });
        let got = ev.wait_for("the marker", Instant::now() + crate::deadline(30.0), |l| l.name == "marker").unwrap();
        assert_eq!(got.text(), "7");
    }

    #[test]
    fn both_streams_are_read_when_piped() {
        let (mut p, pipes) = Proc::spawn(
            Command::new("sh").args(["-c", "echo out; echo err >&2"]).stdout(Stdio::piped()).stderr(Stdio::piped()),
        )
        .unwrap();
        let mut ev = Events::read(pipes, Parse::None).unwrap();
        let mut lines = ev.drain(Instant::now() + crate::deadline(30.0)).unwrap();
        lines.sort_by_key(|l| l.stream == Stream::Stderr);
        let got: Vec<(Stream, String)> = lines.iter().map(|l| (l.stream, l.text())).collect();
        assert_eq!(got, [(Stream::Stdout, String::from("out")), (Stream::Stderr, String::from("err"))]);
        assert!(p.wait_exit(crate::deadline(30.0)).is_some());
    }
}
