//! `homerd run` on a real terminal: Ctrl-C (SIGINT from the terminal driver to the
//! foreground process group) drains, logs `Daemon lock released` and exits 0.
#![allow(clippy::disallowed_methods)] // tests build fixtures and inspect the database directly

mod common;

use common::*;

#[test]
fn ctrl_c_on_a_terminal_releases_the_lock_and_exits_0() {
    let sb = Sandbox::new();
    let mut cmd = sb.cmd();
    // Human lines, as a person at a terminal sees them; no colour (NO_COLOR is set).
    cmd.env("HOMER_LOG_FORMAT", "human").arg("run").args(FAST);
    let mut session = spawn_on_pty(cmd);
    session.exp_string("Daemon active").expect("daemon became active");
    session.send_control('c').expect("send ^C");
    session.exp_string("Shutting down").expect("shutdown began");
    session.exp_string("Daemon lock released").expect("lock released");
    expect_exit_0(session);
    let log = String::from_utf8(bytes(&sb.log())).unwrap();
    assert!(log.contains("Daemon lock released") && log.contains("signal=\"SIGINT\""), "{log}");
}

/// On a terminal, human lines are coloured unless NO_COLOR is set.
#[test]
fn colour_on_a_terminal_unless_no_color() {
    for no_color in [false, true] {
        let sb = Sandbox::new();
        let mut cmd = sb.cmd();
        cmd.env("HOMER_LOG_FORMAT", "human").arg("run").args(FAST);
        if !no_color {
            cmd.env_remove("NO_COLOR");
        }
        let mut session = spawn_on_pty(cmd);
        let before = session.exp_string("Daemon active").expect("daemon became active");
        assert_eq!(before.contains('\x1b'), !no_color, "NO_COLOR={no_color}: {before:?}");
        session.send_control('c').expect("send ^C");
        session.exp_eof().expect("exited");
    }
}

/// `status --watch` on a terminal refreshes in place: each report starts by moving the
/// cursor home and clearing the screen; Ctrl-C ends it.
#[test]
fn status_watch_on_a_terminal_refreshes_in_place() {
    let (sb, _d) = active_sandbox();
    let mut cmd = sb.cmd();
    cmd.args(["status", "--watch", "--interval", "100ms"]);
    let mut session = spawn_on_pty(cmd);
    for _ in 0..3 {
        session.exp_string("\x1b[H\x1b[2J").expect("a refresh clears the screen");
        session.exp_string("daemon:   active").expect("then the report");
    }
    session.send_control('c').expect("send ^C");
    session.exp_eof().expect("Ctrl-C ends it");
}
