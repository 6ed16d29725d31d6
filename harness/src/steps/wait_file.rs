//! `wait_file`: block until a path in the sandbox exists (optionally as a file of at least
//! `min_size` bytes), or fail at `timeout`. Ground truth from the filesystem, for what a
//! daemon says it did to a file (a lock file it re-created, a log it opened).

use std::path::Path;
use std::time::Duration;

use super::Verb;
use crate::exec::ctx::{fail, Ctx, StepError};
use crate::scenario::kit::{Cx, Field, Res, Tbl};

/// Wait until `path` exists (and, with `min_size`, is a regular file of that many bytes).
#[derive(Clone, Debug)]
pub struct WaitFile {
    /// Placeholders allowed; relative paths are relative to the sandbox.
    pub path: String,
    pub min_size: Option<u64>,
    /// Default 10 s, scaled.
    pub timeout: Duration,
}

impl Verb for WaitFile {
    const KEY: &'static str = "wait_file";
    const OPTIONS: &'static [&'static str] = &["min_size", "timeout"];

    fn parse(cx: &mut Cx<'_>, t: &Tbl<'_>, v: &Field<'_>) -> Res<WaitFile> {
        Self::only_its_options(cx, t)?;
        Ok(WaitFile {
            path: cx.text(v)?,
            min_size: cx
                .opt(t, "min_size", |cx, f| cx.int(f, 0, i64::MAX, "a size in bytes (an integer >= 0)"))?
                .map(|n| n as u64),
            timeout: cx.opt(t, "timeout", Cx::duration)?.unwrap_or(Duration::from_secs(10)),
        })
    }

    fn summary(&self) -> String {
        match self.min_size {
            Some(min) => format!("wait for {} to hold at least {min} bytes", self.path),
            None => format!("wait for {} to exist", self.path),
        }
    }

    fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError> {
        let path = ctx.path(&self.path)?;
        // Files do not notify: `wait_for` re-polls the condition every 25 ms until the deadline.
        let deadline = ctx.deadline(self.timeout);
        if ctx.shared.wait_for(deadline, |_| present(&path, self.min_size).ok()).is_some() {
            return Ok(());
        }
        let expected = match self.min_size {
            Some(min) => format!("{} to be a file of at least {min} bytes", path.display()),
            None => format!("{} to exist", path.display()),
        };
        let found = present(&path, self.min_size).err().unwrap_or_default();
        fail(expected, format!("{found} after {:?}", ctx.scaled(self.timeout)))
    }
}

/// Whether `path` is there as asked; if not, what is there instead.
fn present(path: &Path, min_size: Option<u64>) -> Result<(), String> {
    match (path.symlink_metadata(), min_size) {
        (Err(_), _) => Err(String::from("absent")),
        (Ok(_), None) => Ok(()),
        (Ok(m), Some(min)) if m.is_file() && m.len() >= min => Ok(()),
        (Ok(m), Some(_)) if m.is_file() => Err(format!("{} bytes", m.len())),
        (Ok(_), Some(_)) => Err(String::from("not a regular file")),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::WaitFile;
    use crate::exec::ctx::Ctx;
    use crate::exec::Options;
    use crate::scenario::tests::{assert_rejections, HEADER};
    use crate::scenario::{Scenario, Step};
    use crate::steps::Verb;

    fn parse(body: &str) -> Result<Scenario, crate::scenario::ParseError> {
        crate::scenario::tests::parse(&format!("{HEADER}{body}"))
    }

    #[test]
    fn parses_with_defaults_and_options() {
        let s =
            parse("[[step]]\nwait_file = \"{lock}\"\n\n[[step]]\nwait_file = \"x\"\nmin_size = 1\ntimeout = \"2s\"\n")
                .unwrap_or_else(|e| panic!("{e}"));
        let Step::WaitFile(a) = &s.steps[0].step else { panic!("wait_file") };
        assert_eq!((a.path.as_str(), a.min_size, a.timeout), ("{lock}", None, Duration::from_secs(10)));
        let Step::WaitFile(b) = &s.steps[1].step else { panic!("wait_file") };
        assert_eq!((b.min_size, b.timeout), (Some(1), Duration::from_secs(2)));
        assert_eq!(s.steps[1].step.summary(), "wait for x to hold at least 1 bytes");
    }

    #[test]
    fn rejections_name_the_key() {
        let cases: &[(&str, usize, usize, &str, &str)] = &[
            ("[[step]]\nwait_file = \"\"\n", 5, 13, "step[1].wait_file", "a non-empty string"),
            ("[[step]]\nwait_file = \"x\"\nmin_size = -1\n", 6, 12, "step[1].min_size", "bytes"),
            ("[[step]]\nwait_file = \"x\"\ntimeout = \"soon\"\n", 6, 11, "step[1].timeout", "a duration"),
            (
                "[[step]]\nwait_file = \"x\"\nop = \"exists\"\n",
                6,
                1,
                "step[1].op",
                "unknown option `op` for `wait_file`",
            ),
            ("[[step]]\nwait_fil = \"x\"\n", 5, 1, "step[1].wait_fil", "did you mean `wait_file`?"),
        ];
        assert_rejections(HEADER, cases);
    }

    #[test]
    fn waits_for_the_file_and_fails_at_the_deadline() {
        let sc = parse("[[step]]\nwait_file = \"x\"\n").unwrap_or_else(|e| panic!("{e}"));
        let opts = Options::for_tests();
        let dir = tempfile::tempdir().unwrap();
        let mut ctx = Ctx::new(&sc, &opts, dir.path().to_path_buf(), String::from("test"), Instant::now());
        let step = |path: &str, min_size, timeout| WaitFile { path: path.into(), min_size, timeout };
        let short = Duration::from_millis(300);

        // Appears while the step waits (most likely: the write is 50 ms off, and however
        // late it lands on a loaded machine, the generous deadline only bounds a step that
        // never sees the file).
        let later = dir.path().join("later");
        let writer = std::thread::spawn(move || {
            #[allow(clippy::disallowed_methods)] // the fault's timing: the file should appear while the step waits
            std::thread::sleep(Duration::from_millis(50));
            std::fs::write(later, "x").unwrap();
        });
        step("later", Some(1), Duration::from_secs(60)).run(&mut ctx).unwrap_or_else(|e| panic!("{e:?}"));
        writer.join().unwrap();

        let e = step("{sandbox}/never", None, short).run(&mut ctx).expect_err("never appears");
        assert!(e.expected.ends_with("never to exist") && e.actual.starts_with("absent after"), "{e:?}");
        std::fs::write(dir.path().join("empty"), "").unwrap();
        let e = step("empty", Some(1), short).run(&mut ctx).expect_err("too small");
        assert!(e.expected.contains("at least 1 bytes") && e.actual.starts_with("0 bytes after"), "{e:?}");
    }
}
