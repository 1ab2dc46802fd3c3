//! Rendering the solver's progress events (`--progress=auto|tty|plain|json|quiet`).
//!
//! - `plain`: BuildKit's plain lines, `#N [stage i/n] INSTRUCTION`, `#N <output>`,
//!   `#N CACHED`, `#N DONE 1.2s`, `#N ERROR: ...`, `#N CANCELED`, and a step's
//!   phases (`#N exporting layers`, `#N exporting layers 0.3s done`); steps are
//!   numbered in the order they start, a blank line separates blocks and a step's
//!   name is repeated when its output resumes after another step's.
//! - `tty`: an indicatif view, one line per running step with its elapsed time and
//!   the last lines of its output; finished steps scroll up as plain-like lines.
//! - `json`: each event as one line of JSON ([`Event::to_json`]).
//! - `quiet`: nothing.
//!
//! Whatever the mode, the renderer keeps each step's name, location and last
//! [`KEEP_LINES`] lines of output for the failure report.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::io::Write;
use std::time::Duration;

use rbuild_ops::SourceLocation;
use rbuild_ops::VertexId;
use rbuild_solver::progress::Event;

/// Lines of output kept per step for error reports.
pub const KEEP_LINES: usize = 20;
/// Lines of output shown under a running step in the tty view.
const TTY_LINES: usize = 5;

/// `--progress`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ProgressMode {
    /// tty when stderr is a terminal, plain otherwise
    #[default]
    Auto,
    Tty,
    Plain,
    Json,
    Quiet,
}

impl ProgressMode {
    /// `Auto` made concrete: `Tty` when `stderr_is_tty`, else `Plain`.
    pub fn resolve(self, stderr_is_tty: bool) -> Self {
        match self {
            ProgressMode::Auto if stderr_is_tty => ProgressMode::Tty,
            ProgressMode::Auto => ProgressMode::Plain,
            m => m,
        }
    }
}

/// What is known of one step.
#[derive(Clone, Debug, Default)]
pub struct StepInfo {
    /// `#N`, in order of start.
    pub number: usize,
    pub name: String,
    pub location: Option<SourceLocation>,
    /// The last [`KEEP_LINES`] lines of output.
    pub last_lines: VecDeque<String>,
}

/// Renders events to a writer (stderr in the binary).
pub struct Renderer {
    mode: ProgressMode,
    out: Box<dyn Write + Send>,
    steps: HashMap<VertexId, StepInfo>,
    next_number: usize,
    /// The step whose block was printed last (plain).
    current: Option<VertexId>,
    printed_any: bool,
    tty: Option<TtyView>,
    /// When each running phase (vertex status) started.
    phases: HashMap<(VertexId, String), std::time::Instant>,
}

struct TtyView {
    multi: indicatif::MultiProgress,
    bars: HashMap<VertexId, indicatif::ProgressBar>,
}

impl Renderer {
    /// A renderer in `mode` (already resolved; `Auto` is treated as plain).
    pub fn new(mode: ProgressMode, out: Box<dyn Write + Send>) -> Self {
        let tty = (mode == ProgressMode::Tty).then(|| TtyView {
            multi: indicatif::MultiProgress::with_draw_target(
                indicatif::ProgressDrawTarget::stderr(),
            ),
            bars: HashMap::new(),
        });
        Self {
            mode,
            out,
            steps: HashMap::new(),
            next_number: 1,
            current: None,
            printed_any: false,
            tty,
            phases: HashMap::new(),
        }
    }

    /// What is known of a step.
    pub fn step(&self, id: VertexId) -> Option<&StepInfo> {
        self.steps.get(&id)
    }

    /// Records and renders one event.
    pub fn handle(&mut self, ev: &Event) {
        if let Event::VertexKey { .. } = ev {
            // Keys are for machines (JSON), not for the display.
            if self.mode == ProgressMode::Json {
                let _ = writeln!(self.out, "{}", ev.to_json());
            }
            return;
        }
        self.record(ev);
        match self.mode {
            ProgressMode::Quiet => {}
            ProgressMode::Json => {
                let _ = writeln!(self.out, "{}", ev.to_json());
            }
            ProgressMode::Tty => self.render_tty(ev),
            ProgressMode::Plain | ProgressMode::Auto => self.render_plain(ev),
        }
    }

    /// A line of a base image's pull during planning: printed as is, as a
    /// JSON object (`{"pull":REF,"line":...}`) with `--progress json`, not at
    /// all when quiet.
    pub fn pull_line(&mut self, reference: &str, line: &str) {
        match self.mode {
            ProgressMode::Quiet => {}
            ProgressMode::Json => {
                let _ = writeln!(
                    self.out,
                    "{}",
                    serde_json::json!({ "pull": reference, "line": line })
                );
            }
            _ => self.println(line),
        }
    }

    /// Prints a line outside the progress display (above the tty view).
    pub fn println(&mut self, line: &str) {
        match &self.tty {
            Some(t) => {
                let _ = t.multi.println(line);
            }
            None => {
                let _ = writeln!(self.out, "{line}");
            }
        }
    }

    /// Ends the display: running tty lines are cleared.
    pub fn finish(&mut self) {
        if let Some(t) = &mut self.tty {
            for (_, bar) in t.bars.drain() {
                bar.finish_and_clear();
            }
            let _ = t.multi.clear();
        }
        let _ = self.out.flush();
    }

    fn record(&mut self, ev: &Event) {
        let id = ev.vertex();
        if !self.steps.contains_key(&id) {
            let number = self.next_number;
            self.next_number += 1;
            self.steps.insert(
                id,
                StepInfo {
                    number,
                    ..StepInfo::default()
                },
            );
        }
        let step = self.steps.get_mut(&id).expect("inserted above");
        match ev {
            Event::VertexStarted { name, location, .. } => {
                step.name.clone_from(name);
                step.location.clone_from(location);
            }
            Event::VertexCached { name, .. } if step.name.is_empty() => {
                step.name.clone_from(name);
            }
            Event::VertexLog { line, .. } => {
                if step.last_lines.len() == KEEP_LINES {
                    step.last_lines.pop_front();
                }
                step.last_lines.push_back(line.clone());
            }
            _ => {}
        }
    }

    fn render_plain(&mut self, ev: &Event) {
        let id = ev.vertex();
        let step = &self.steps[&id];
        let n = step.number;
        let mut text = String::new();
        if self.current != Some(id) {
            if self.printed_any {
                text.push('\n');
            }
            let _ = writeln!(text, "#{n} {}", step.name);
            self.current = Some(id);
        }
        match ev {
            Event::VertexStarted { .. }
            | Event::VertexProgress { .. }
            | Event::VertexKey { .. } => {}
            Event::VertexCached { .. } => {
                let _ = writeln!(text, "#{n} CACHED");
            }
            Event::VertexLog { line, .. } => {
                let _ = writeln!(text, "#{n} {line}");
            }
            Event::VertexStatus {
                name, completed, ..
            } => {
                let key = (id, name.clone());
                if *completed {
                    let took = self
                        .phases
                        .remove(&key)
                        .map(|t| format!("{} ", seconds(t.elapsed())))
                        .unwrap_or_default();
                    let _ = writeln!(text, "#{n} {name} {took}done");
                } else {
                    self.phases.insert(key, std::time::Instant::now());
                    let _ = writeln!(text, "#{n} {name}");
                }
            }
            Event::VertexDone { duration, .. } => {
                let _ = writeln!(text, "#{n} DONE {}", seconds(*duration));
            }
            Event::VertexFailed { error, .. } => {
                let _ = writeln!(text, "#{n} ERROR: {error}");
            }
            Event::VertexCanceled { .. } => {
                let _ = writeln!(text, "#{n} CANCELED");
            }
        }
        if !text.is_empty() {
            self.printed_any = true;
            let _ = self.out.write_all(text.as_bytes());
        }
    }

    fn render_tty(&mut self, ev: &Event) {
        let id = ev.vertex();
        let step = &self.steps[&id];
        let n = step.number;
        let name = step.name.clone();
        let tail: Vec<String> = step
            .last_lines
            .iter()
            .skip(step.last_lines.len().saturating_sub(TTY_LINES))
            .cloned()
            .collect();
        let Some(t) = &mut self.tty else { return };
        let finished = |t: &mut TtyView, line: String| {
            if let Some(bar) = t.bars.remove(&id) {
                bar.finish_and_clear();
            }
            let _ = t.multi.println(line);
        };
        match ev {
            Event::VertexStarted { .. } => {
                let bar = t.multi.add(indicatif::ProgressBar::new_spinner());
                bar.set_style(
                    indicatif::ProgressStyle::with_template("{spinner} {prefix} {elapsed}{msg}")
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
                );
                bar.set_prefix(format!("#{n} {name}"));
                bar.enable_steady_tick(Duration::from_millis(100));
                t.bars.insert(id, bar);
            }
            Event::VertexLog { .. } => {
                if let Some(bar) = t.bars.get(&id) {
                    let mut msg = String::new();
                    for l in &tail {
                        msg.push_str("\n    ");
                        msg.push_str(l);
                    }
                    bar.set_message(msg);
                }
            }
            Event::VertexStatus {
                name, completed, ..
            } => {
                if let Some(bar) = t.bars.get(&id) {
                    bar.set_message(if *completed {
                        String::new()
                    } else {
                        format!(" {name}")
                    });
                }
            }
            Event::VertexProgress { current, total, .. } => {
                if let Some(bar) = t.bars.get(&id) {
                    bar.set_message(match total {
                        Some(total) => format!("{current}/{total} bytes"),
                        None => format!("{current} bytes"),
                    });
                }
            }
            Event::VertexCached { .. } => finished(t, format!("#{n} {name} CACHED")),
            Event::VertexDone { duration, .. } => {
                finished(t, format!("#{n} {name} DONE {}", seconds(*duration)));
            }
            Event::VertexFailed { error, .. } => {
                finished(t, format!("#{n} {name} ERROR: {error}"));
            }
            Event::VertexCanceled { .. } => finished(t, format!("#{n} {name} CANCELED")),
            Event::VertexKey { .. } => {}
        }
    }
}

/// `1.2s`, BuildKit's way (tenths of seconds).
fn seconds(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use rbuild_solver::progress::Stream;

    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A build of three steps: a cached FROM, a RUN whose output interleaves
    /// with a COPY's, and a failing RUN that cancels another.
    fn script() -> Vec<Event> {
        let v = VertexId;
        let loc = |l| {
            Some(SourceLocation {
                file: "Dockerfile".into(),
                start_line: l,
                end_line: l,
            })
        };
        let log = |id, line: &str| Event::VertexLog {
            id: v(id),
            stream: Stream::Stdout,
            line: line.into(),
        };
        vec![
            Event::VertexStarted {
                id: v(0),
                name: "[stage-0 1/4] FROM busybox".into(),
                location: loc(1),
            },
            Event::VertexCached {
                id: v(0),
                name: "[stage-0 1/4] FROM busybox".into(),
            },
            Event::VertexStarted {
                id: v(1),
                name: "[stage-0 2/4] RUN echo one && echo two".into(),
                location: loc(2),
            },
            log(1, "one"),
            Event::VertexStarted {
                id: v(2),
                name: "[stage-0 3/4] COPY a /a".into(),
                location: loc(3),
            },
            Event::VertexProgress {
                id: v(2),
                current: 10,
                total: Some(10),
            },
            log(1, "two"),
            Event::VertexDone {
                id: v(1),
                duration: Duration::from_millis(1234),
            },
            Event::VertexDone {
                id: v(2),
                duration: Duration::from_millis(40),
            },
            Event::VertexStarted {
                id: v(3),
                name: "[stage-0 4/4] RUN exit 3".into(),
                location: loc(4),
            },
            Event::VertexStarted {
                id: v(4),
                name: "[other 1/1] RUN sleep 100".into(),
                location: loc(7),
            },
            Event::VertexFailed {
                id: v(3),
                error: "process \"/bin/sh -c exit 3\" did not complete successfully: exit code: 3"
                    .into(),
            },
            Event::VertexCanceled { id: v(4) },
        ]
    }

    fn render(mode: ProgressMode) -> (String, Renderer) {
        let buf = Buf::default();
        let mut r = Renderer::new(mode, Box::new(buf.clone()));
        for ev in script() {
            r.handle(&ev);
        }
        r.finish();
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        (text, r)
    }

    #[test]
    fn plain_renders_buildkit_lines() {
        insta::assert_snapshot!(render(ProgressMode::Plain).0);
    }

    #[test]
    fn json_renders_one_event_per_line() {
        let (text, _) = render(ProgressMode::Json);
        for line in text.lines() {
            let back: Event = serde_json::from_str(line).unwrap();
            assert!(script().contains(&back));
        }
        insta::assert_snapshot!(text);
    }

    #[test]
    fn phases_of_a_step_render_as_buildkit_statuses() {
        let id = VertexId(7);
        let events = [
            Event::VertexStarted {
                id,
                name: "exporting to image".into(),
                location: None,
            },
            Event::VertexStatus {
                id,
                name: "exporting layers".into(),
                completed: false,
            },
            Event::VertexStatus {
                id,
                name: "exporting layers".into(),
                completed: true,
            },
            Event::VertexDone {
                id,
                duration: Duration::from_millis(300),
            },
        ];
        let buf = Buf::default();
        let mut r = Renderer::new(ProgressMode::Plain, Box::new(buf.clone()));
        for ev in &events {
            r.handle(ev);
        }
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[..2], ["#1 exporting to image", "#1 exporting layers"]);
        assert!(
            lines[2].starts_with("#1 exporting layers ") && lines[2].ends_with("s done"),
            "{text}"
        );
        assert_eq!(lines[3], "#1 DONE 0.3s");
        let json = events[1].to_json();
        assert_eq!(
            json,
            r#"{"event":"vertex_status","id":7,"name":"exporting layers","completed":false}"#
        );
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), events[1]);
    }

    #[test]
    fn quiet_renders_nothing_but_keeps_the_steps() {
        let (text, r) = render(ProgressMode::Quiet);
        assert_eq!(text, "");
        let step = r.step(VertexId(1)).unwrap();
        assert_eq!(step.number, 2);
        assert_eq!(step.last_lines, ["one", "two"]);
        assert_eq!(step.location.as_ref().unwrap().start_line, 2);
    }

    #[test]
    fn only_the_last_lines_are_kept() {
        let mut r = Renderer::new(ProgressMode::Quiet, Box::new(std::io::sink()));
        for i in 0..50 {
            r.handle(&Event::VertexLog {
                id: VertexId(9),
                stream: Stream::Stderr,
                line: format!("line {i}"),
            });
        }
        let lines = &r.step(VertexId(9)).unwrap().last_lines;
        assert_eq!(lines.len(), KEEP_LINES);
        assert_eq!(lines.front().unwrap(), "line 30");
        assert_eq!(lines.back().unwrap(), "line 49");
    }

    #[test]
    fn auto_is_tty_only_on_a_terminal() {
        assert_eq!(ProgressMode::Auto.resolve(true), ProgressMode::Tty);
        assert_eq!(ProgressMode::Auto.resolve(false), ProgressMode::Plain);
        assert_eq!(ProgressMode::Json.resolve(true), ProgressMode::Json);
    }
}
