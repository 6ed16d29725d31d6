//! `homerd service launchd|systemd` and doctor's check of installed units: the units the
//! real binary prints are parsed (the plist by the `plist` crate, the unit by the INI
//! reader below and by `systemd-analyze verify` where it exists), every key homerd needs
//! is checked, paths with spaces round-trip, and doctor warns on a unit that
//! contradicts them (a plist in XML or binary) without changing its exit code.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use homerd::error::exit;

/// The codes systemd must not restart on, as README "Service install" lists them
/// (not copied from the lib).
const NO_RESTART: [i32; 7] = [64, 65, 66, 69, 73, 77, 78];

/// `homerd ARGS` from `program` in this sandbox, with `env` changes (`None` removes);
/// retried while a just-copied binary is still open for writing in a sibling's fork.
fn run_with(sb: &Sandbox, program: &Path, args: &[&str], env: &[(&str, Option<&str>)]) -> Output {
    let end = Instant::now() + deadline(10.0);
    loop {
        let mut c = sb.cmd_with(program);
        c.args(args);
        for (k, v) in env {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        match c.output() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("spawn {}: {e}", program.display()),
            Ok(out) => {
                return Output {
                    code: out.status.code(),
                    stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                    stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                    elapsed: Duration::ZERO,
                }
            }
        }
    }
}

/// `homerd [global...] service MANAGER`: its stdout (the unit), asserting exit 0.
fn generate(sb: &Sandbox, program: &Path, global: &[&str], manager: &str) -> String {
    let mut args = global.to_vec();
    args.extend(["service", manager]);
    let out = run_with(sb, program, &args, &[]);
    assert_eq!(out.code, Some(0), "service {manager}: {}", out.stderr);
    out.stdout
}

fn canonical_bin() -> String {
    bin().canonicalize().unwrap().to_str().unwrap().to_owned()
}

fn parse_plist(text: &str) -> plist::Dictionary {
    plist::Value::from_reader_xml(text.as_bytes())
        .unwrap_or_else(|e| panic!("not a plist: {e}\n{text}"))
        .into_dictionary()
        .expect("the plist's root is a dictionary")
}

fn plist_strings(v: &plist::Value) -> Vec<String> {
    v.as_array().expect("an array").iter().map(|s| s.as_string().expect("a string").to_owned()).collect()
}

/// Checks every launchd key homerd relies on; returns ProgramArguments.
fn check_plist(text: &str, home: &str, exit_timeout: u64) -> Vec<String> {
    let d = parse_plist(text);
    assert_eq!(d.get("Label").and_then(|v| v.as_string()), Some("dev.homer.homerd"));
    let keep = d.get("KeepAlive").and_then(|v| v.as_dictionary()).expect("KeepAlive is a dictionary");
    assert_eq!(keep.get("SuccessfulExit").and_then(|v| v.as_boolean()), Some(false), "restart on failure only");
    assert_eq!(keep.len(), 1, "no other KeepAlive condition: {keep:?}");
    assert_eq!(d.get("ThrottleInterval").and_then(|v| v.as_signed_integer()), Some(10));
    assert_eq!(d.get("ExitTimeOut").and_then(|v| v.as_signed_integer()), Some(exit_timeout as i64));
    assert_eq!(d.get("AbandonProcessGroup").and_then(|v| v.as_boolean()), Some(false));
    assert_eq!(d.get("RunAtLoad").and_then(|v| v.as_boolean()), Some(true));
    assert_eq!(d.get("ProcessType").and_then(|v| v.as_string()), Some("Standard"));
    assert_eq!(
        d.get("StandardOutPath").and_then(|v| v.as_string()),
        Some(format!("{home}/logs/launchd.out.log").as_str())
    );
    assert_eq!(
        d.get("StandardErrorPath").and_then(|v| v.as_string()),
        Some(format!("{home}/logs/launchd.err.log").as_str())
    );
    let env = d.get("EnvironmentVariables").and_then(|v| v.as_dictionary()).expect("EnvironmentVariables");
    assert_eq!(env.get("HOMER_HOME").and_then(|v| v.as_string()), Some(home));
    plist_strings(d.get("ProgramArguments").expect("ProgramArguments"))
}

/// A unit file as `section -> [(key, value)]`, in order (the test's own INI reader).
fn parse_ini(text: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut out: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            out.push((name.to_owned(), Vec::new()));
            continue;
        }
        let (k, v) = line.split_once('=').unwrap_or_else(|| panic!("not key=value: {line:?}"));
        assert!(!line.ends_with('\\'), "no continuation lines expected: {line:?}");
        out.last_mut().expect("a key before any section").1.push((k.to_owned(), v.to_owned()));
    }
    out
}

fn ini_get<'a>(ini: &'a [(String, Vec<(String, String)>)], section: &str, key: &str) -> Vec<&'a str> {
    ini.iter()
        .filter(|(s, _)| s == section)
        .flat_map(|(_, kv)| kv.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()))
        .collect()
}

fn one<'a>(ini: &'a [(String, Vec<(String, String)>)], section: &str, key: &str) -> &'a str {
    match ini_get(ini, section, key).as_slice() {
        [v] => v,
        other => panic!("[{section}] {key}: expected one value, found {other:?}"),
    }
}

/// Splits a systemd command line / assignment value into words: double quotes, C
/// escapes (`\\`, `\"`, `\xNN` — one byte, as systemd reads it), `%%` for `%`, and
/// `$$` for `$` after the first word (systemd takes the executable path literally).
fn systemd_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let Some(first) = chars.next() else { break };
        let quoted = first == '"';
        let mut w = Vec::new();
        let push = |w: &mut Vec<u8>, c: char| w.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
        if !quoted {
            push(&mut w, first);
        }
        while let Some(c) = chars.next() {
            match c {
                '"' if quoted => break,
                c if c.is_whitespace() && !quoted => break,
                '\\' => match chars.next().expect("escape") {
                    'x' => {
                        let hex: String = [chars.next().unwrap(), chars.next().unwrap()].iter().collect();
                        w.push(u8::from_str_radix(&hex, 16).unwrap());
                    }
                    'n' => w.push(b'\n'),
                    't' => w.push(b'\t'),
                    other => push(&mut w, other),
                },
                c => push(&mut w, c),
            }
        }
        let w = String::from_utf8(w).expect("the escapes spell UTF-8").replace("%%", "%");
        words.push(if words.is_empty() { w } else { w.replace("$$", "$") });
    }
    words
}

/// Checks every systemd key homerd relies on; returns ExecStart's words.
fn check_unit(text: &str, home: &str, timeout_secs: u64) -> Vec<String> {
    let ini = parse_ini(text);
    let sections: Vec<&str> = ini.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(sections, ["Unit", "Service", "Install"]);
    assert!(!one(&ini, "Unit", "Description").is_empty());
    assert_eq!(one(&ini, "Unit", "After"), "basic.target");
    assert_eq!(one(&ini, "Service", "Type"), "simple");
    assert_eq!(one(&ini, "Service", "Restart"), "on-failure");
    assert_eq!(one(&ini, "Service", "RestartSec"), "10s");
    let prevent: BTreeSet<i32> =
        one(&ini, "Service", "RestartPreventExitStatus").split_whitespace().map(|c| c.parse().unwrap()).collect();
    assert_eq!(prevent, NO_RESTART.into_iter().collect::<BTreeSet<_>>());
    assert!(!prevent.contains(&exit::OK) && !prevent.contains(&exit::IN_USE) && !prevent.contains(&exit::FENCED));
    assert_eq!(one(&ini, "Service", "KillMode"), "mixed");
    assert_eq!(one(&ini, "Service", "KillSignal"), "SIGTERM");
    assert_eq!(one(&ini, "Service", "TimeoutStopSec"), format!("{timeout_secs}s"));
    assert_eq!(one(&ini, "Install", "WantedBy"), "default.target");
    let env = systemd_words(one(&ini, "Service", "Environment"));
    // `$` is literal in Environment=: undo only the quoting and `%%`.
    assert_eq!(env, [format!("HOMER_HOME={home}")], "Environment=");
    systemd_words(one(&ini, "Service", "ExecStart"))
}

/// `systemd-analyze` on PATH, if any.
fn systemd_analyze() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("systemd-analyze")).find(|p| p.is_file())
}

/// `systemd-analyze --user verify` on the unit (it also checks that ExecStart's
/// executable exists), or a visible note that it was skipped.
fn verify_with_systemd(sb: &Sandbox, unit: &str) {
    let Some(tool) = systemd_analyze() else {
        eprintln!("NOTE: systemd-analyze not found; skipped `systemd-analyze verify` (parsed keys still checked)");
        return;
    };
    let dir = sb.dir.path().join("verify");
    let runtime = sb.dir.path().join("runtime");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::create_dir_all(&runtime).unwrap();
    std::fs::set_permissions(&runtime, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let file = dir.join("homerd.service");
    std::fs::write(&file, unit).unwrap();
    let out =
        Command::new(tool).args(["--user", "verify"]).arg(&file).env("XDG_RUNTIME_DIR", &runtime).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify failed:\n{stderr}\n{unit}");
    // Unknown keys and bad values are only warned about: any line about the file fails.
    let about_unit: Vec<&str> = stderr.lines().filter(|l| l.contains("homerd.service")).collect();
    assert!(about_unit.is_empty(), "systemd-analyze verify complained:\n{}\n{unit}", about_unit.join("\n"));
}

/// A fresh sandbox and `manager`'s file for it with the default settings, `check`ed (every
/// key, the 60 s stop timeout): it runs this binary with `--home HOME run`, and writing it
/// created no home.
fn default_service(manager: &str, check: fn(&str, &str, u64) -> Vec<String>) -> (Sandbox, String) {
    let sb = Sandbox::new();
    let home = sb.home().to_str().unwrap().to_owned();
    let text = generate(&sb, &bin(), &[], manager);
    let command = check(&text, &home, 60);
    assert_eq!(command, [canonical_bin(), String::from("--home"), home, String::from("run")]);
    assert!(!sb.home().exists(), "service created the home directory");
    (sb, text)
}

#[test]
fn launchd_plist_has_every_key_and_runs_this_binary_with_the_home() {
    let (sb, _) = default_service("launchd", check_plist);
    let home = sb.home().to_str().unwrap().to_owned();

    // The timeout follows the graces: 2m + 2 x 7s + 10s drain slack + 10s margin.
    let plist = generate(&sb, &bin(), &["--set", "shutdown_grace=2m", "--set", "kill_grace=7s"], "launchd");
    let args = check_plist(&plist, &home, 154);
    assert_eq!(args[3..], ["--set", "shutdown_grace=2m", "--set", "kill_grace=7s", "run"], "--set passed on");
}

#[test]
fn systemd_unit_has_every_key_and_passes_systemd_analyze_verify() {
    let (sb, unit) = default_service("systemd", check_unit);
    verify_with_systemd(&sb, &unit);
    assert!(!sb.home().exists(), "systemd-analyze created the home directory");

    let unit = generate(&sb, &bin(), &["--set", "shutdown_grace=2m", "--set", "kill_grace=7s"], "systemd");
    check_unit(&unit, sb.home().to_str().unwrap(), 154);
}

/// A binary and a home whose paths hold a space and every character either format
/// escapes come back unchanged from both; `systemd-analyze verify` finds the executable.
#[test]
fn paths_with_spaces_and_special_characters_round_trip() {
    let sb = Sandbox::new();
    let bin_dir = sb.dir.path().join("bin dir %h $USER");
    std::fs::create_dir(&bin_dir).unwrap();
    let copy = bin_dir.join("homerd");
    std::fs::copy(bin(), &copy).unwrap();
    let exe = copy.canonicalize().unwrap().to_str().unwrap().to_owned();
    let home = sb.dir.path().join(r#"my home & <co> "q" 'a' \b %i $HOME ${X}"#);
    let home = home.to_str().unwrap();
    let lock = sb.dir.path().join("locks dir/homer lock");
    let config = sb.dir.path().join("conf dir/homerd.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(&config, "").unwrap();
    let global = ["--home", home, "--lock-file", lock.to_str().unwrap(), "--config", config.to_str().unwrap()];
    let expected = [
        exe.as_str(),
        "--home",
        home,
        "--lock-file",
        lock.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "run",
    ];

    let plist = generate(&sb, &copy, &global, "launchd");
    assert_eq!(check_plist(&plist, home, 60), expected);

    let unit = generate(&sb, &copy, &global, "systemd");
    assert_eq!(check_unit(&unit, home, 60), expected);
    verify_with_systemd(&sb, &unit);
}

/// Control characters in a systemd unit come back as they were, C1 ones (two bytes in
/// UTF-8, each escaped) included.
#[test]
fn control_characters_round_trip_through_the_systemd_unit() {
    let sb = Sandbox::new();
    let home = sb.dir.path().join("a\u{1}b\u{85}c\u{9f}d\te");
    let home = home.to_str().unwrap();
    let unit = generate(&sb, &bin(), &["--home", home], "systemd");
    assert!(unit.contains(r"\xc2\x85"), "{unit}");
    assert_eq!(check_unit(&unit, home, 60), [canonical_bin().as_str(), "--home", home, "run"]);
}

/// `--config` given relative is made absolute (the supervisor's working directory is
/// not the operator's); paths a unit cannot carry are refused with the usage code.
#[test]
fn relative_config_becomes_absolute_and_unrepresentable_paths_are_refused() {
    let sb = Sandbox::new();
    std::fs::write(sb.dir.path().join("rel.toml"), "").unwrap();
    let mut c = sb.cmd();
    c.current_dir(sb.dir.path()).args(["--config", "rel.toml", "service", "systemd"]);
    let out = run_bounded(c, deadline(30.0));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let config = sb.dir.path().join("rel.toml");
    assert!(check_unit(&out.stdout, sb.home().to_str().unwrap(), 60).contains(&config.to_str().unwrap().to_owned()));

    let out = sb.run(&["--home", "/tmp/a\u{1}b", "service", "launchd"]);
    assert_eq!(out.code, Some(exit::USAGE), "{out:?}");
    assert!(out.stderr.contains("control character"), "{}", out.stderr);
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::ffi::OsStrExt;
        let mut c = sb.cmd();
        c.arg("--home").arg(std::ffi::OsStr::from_bytes(b"/tmp/\xff")).args(["service", "systemd"]);
        let out = run_bounded(c, deadline(30.0));
        assert_eq!(out.code, Some(exit::USAGE), "{out:?}");
        assert!(out.stderr.contains("not valid UTF-8"), "{}", out.stderr);
    }
}

/// `--database` reaches the unit; a URL with a password does not (a unit file and the
/// process list would show it): refused with the usage code, the password not echoed.
#[test]
fn a_database_url_is_passed_on_but_never_a_password() {
    let sb = Sandbox::new();
    let out = sb.run(&["--database", "postgres://homer@db.example:5432/homer", "service", "systemd"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains(r#""--database" "postgres://homer@db.example:5432/homer""#), "{}", out.stdout);
    let out = sb.run(&["--database", "postgres://homer:sekret@db.example/homer", "service", "launchd"]);
    assert_eq!(out.code, Some(exit::USAGE), "{out:?}");
    assert!(out.stderr.contains("configuration file"), "{}", out.stderr);
    assert!(!out.stderr.contains("sekret") && out.stdout.is_empty(), "{out:?}");
    // Nor by way of `--set database=…`.
    for set in ["database=postgres://homer:sekret@db.example/homer", " database = postgres://homer:sekret@db/q"] {
        for manager in ["systemd", "launchd"] {
            let out = sb.run(&["--set", set, "service", manager]);
            assert_eq!(out.code, Some(exit::USAGE), "{set:?}: {out:?}");
            assert!(out.stderr.contains("--set database carries a password"), "{}", out.stderr);
            assert!(!out.stderr.contains("sekret") && out.stdout.is_empty(), "{out:?}");
        }
    }
}

/// `HOMER_<KEY>` variables are not carried into the unit (its supervisor does not have
/// this shell's environment), so they do not size its stop timeout either: the graces
/// are the ones the unit's daemon will have. Each variable set is named on stderr.
#[test]
fn homer_variables_are_not_carried_and_do_not_size_the_stop_timeout() {
    let sb = Sandbox::new();
    let home = sb.home().to_str().unwrap().to_owned();
    let env = [
        ("HOMER_SHUTDOWN_GRACE", Some("5s")),
        ("HOMER_KILL_GRACE", Some("1s")),
        ("HOMER_DATABASE", Some("postgres://homer:sekret@db.example/homer")),
    ];
    let out = run_with(&sb, &bin(), &["service", "systemd"], &env);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(check_unit(&out.stdout, &home, 60), [canonical_bin().as_str(), "--home", &home, "run"]);
    for var in ["HOMER_SHUTDOWN_GRACE", "HOMER_KILL_GRACE", "HOMER_DATABASE"] {
        let named = out.stderr.lines().any(|l| l.contains(r#""event":"service.not_carried""#) && l.contains(var));
        assert!(named, "{var} named on stderr: {}", out.stderr);
    }
    assert!(!out.stderr.contains("sekret") && !out.stdout.contains("sekret"), "{out:?}");
    // A `--set` is carried, and counts: 2m + 2 x 5s (the default kill grace) + 10 s + 10 s.
    let out = run_with(&sb, &bin(), &["--set", "shutdown_grace=2m", "service", "launchd"], &env);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let args = check_plist(&out.stdout, &home, 150);
    assert_eq!(args[3..], ["--set", "shutdown_grace=2m", "run"]);
}

#[test]
fn service_help_and_usage() {
    let sb = Sandbox::new();
    let out = sb.run(&["service", "--help"]);
    assert_eq!(out.code, Some(0));
    assert!(out.stdout.contains("launchd") && out.stdout.contains("systemd"), "{}", out.stdout);
    assert_eq!(sb.run(&["service"]).code, Some(exit::USAGE));
    assert_eq!(sb.run(&["service", "upstart"]).code, Some(exit::USAGE));
}

#[test]
fn snapshots_of_both_units() {
    let sb = Sandbox::new();
    let redact = |s: String| {
        s.replace(&canonical_bin(), "[HOMERD]")
            .replace(sb.dir.path().canonicalize().unwrap().to_str().unwrap(), "[SANDBOX]")
            .replace(sb.dir.path().to_str().unwrap(), "[SANDBOX]")
    };
    insta::assert_snapshot!("launchd", redact(generate(&sb, &bin(), &[], "launchd")));
    insta::assert_snapshot!("systemd", redact(generate(&sb, &bin(), &[], "systemd")));
}

fn launch_agent(sb: &Sandbox) -> PathBuf {
    sb.dir.path().join("Library/LaunchAgents/dev.homer.homerd.plist")
}

fn install(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn warn_lines(stdout: &str) -> Vec<&str> {
    stdout.lines().filter(|l| l.starts_with("WARN ")).collect()
}

const BAD_PLIST: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<plist version="1.0">
<dict>
	<key>Label</key><string>dev.homer.homerd</string>
	<key>ProgramArguments</key><array><string>/usr/local/bin/homerd</string><string>run</string></array>
	<key>KeepAlive</key><true/>
	<key>ExitTimeOut</key><integer>30</integer>
	<key>AbandonProcessGroup</key><true/>
</dict>
</plist>
"#;

const BAD_UNIT: &str = "[Unit]\nDescription=homerd\n\n[Service]\nExecStart=/usr/local/bin/homerd run\n\
Restart=always\nTimeoutStopSec=35s\nRestartPreventExitStatus=78\n\n[Install]\nWantedBy=default.target\n";

/// With a daemon running (doctor exits 0), generated units add no line; contradicting
/// ones add one WARN line per contradiction and leave the exit code at 0.
#[test]
fn doctor_accepts_generated_units_and_warns_on_contradicting_ones() {
    let (sb, _d) = active_sandbox();
    let doctor = |json: bool| {
        let args: &[&str] = if json { &["doctor", "--json"] } else { &["doctor"] };
        run_with(&sb, &bin(), args, &[("XDG_CONFIG_HOME", None)])
    };
    let systemd_path = sb.dir.path().join(".config/systemd/user/homerd.service");

    let bare = doctor(false);
    assert_eq!(bare.code, Some(0), "{}", bare.stdout);
    assert!(warn_lines(&bare.stdout).is_empty(), "{}", bare.stdout);

    install(&launch_agent(&sb), &generate(&sb, &bin(), &[], "launchd"));
    install(&systemd_path, &generate(&sb, &bin(), &[], "systemd"));
    let good = doctor(false);
    assert_eq!(good.code, Some(0), "{}", good.stdout);
    assert_eq!(good.stdout.lines().count(), bare.stdout.lines().count(), "{}", good.stdout);
    assert!(warn_lines(&good.stdout).is_empty(), "{}", good.stdout);
    assert!(good.stdout.ends_with("all 8 checks passed\n"), "{}", good.stdout);

    install(&launch_agent(&sb), BAD_PLIST);
    install(&systemd_path, BAD_UNIT);
    let bad = doctor(false);
    assert_eq!(bad.code, Some(0), "a warning never fails doctor: {}", bad.stdout);
    let warns = warn_lines(&bad.stdout);
    let plist_path = launch_agent(&sb).display().to_string();
    let unit_path = systemd_path.display().to_string();
    let expect = [
        (&plist_path, "KeepAlive is true"),
        (&plist_path, "ExitTimeOut 30s is not above homerd's drain bound 50s"),
        (&plist_path, "AbandonProcessGroup is true"),
        (&unit_path, "Restart=always"),
        (&unit_path, "KillMode=control-group (the default when unset) sends SIGTERM"),
        (&unit_path, "TimeoutStopSec 35s is not above homerd's drain bound 50s"),
        (&unit_path, "RestartPreventExitStatus lacks 64 65 66 69 73 77"),
    ];
    assert_eq!(warns.len(), expect.len(), "{}", bad.stdout);
    for (line, (path, text)) in warns.iter().zip(expect) {
        assert!(line.starts_with(&format!("WARN service unit       {path}: {text}")), "{line:?} vs {text:?}");
    }
    assert!(bad.stdout.ends_with("all 8 checks passed, 7 warnings\n"), "{}", bad.stdout);

    let json = doctor(true);
    assert_eq!(json.code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["ok"], true);
    let warnings = v["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 7, "{}", json.stdout);
    assert_eq!(warnings[0]["path"], plist_path.as_str());
    assert_eq!(warnings[0]["check"], "service unit");
    assert!(warnings[6]["detail"].as_str().unwrap().starts_with("RestartPreventExitStatus lacks"));

    // The same plist converted to binary (`plutil -convert binary1`) reads the same.
    let mut binary = Vec::new();
    plist::Value::from_reader_xml(BAD_PLIST.as_bytes()).unwrap().to_writer_binary(&mut binary).unwrap();
    std::fs::write(launch_agent(&sb), &binary).unwrap();
    let from_binary = doctor(false);
    assert_eq!(from_binary.code, Some(0), "{}", from_binary.stdout);
    assert_eq!(warn_lines(&from_binary.stdout), warns, "{}", from_binary.stdout);
}

/// `$XDG_CONFIG_HOME` wins over `~/.config` (as for systemd), and a drop-in that
/// overrides a generated unit's KillMode is caught.
#[test]
fn doctor_reads_units_under_xdg_config_home_with_their_drop_ins() {
    let sb = Sandbox::new();
    let xdg = sb.dir.path().join("xdg");
    install(&sb.dir.path().join(".config/systemd/user/homerd.service"), BAD_UNIT);
    let unit = xdg.join("systemd/user/homerd.service");
    install(&unit, &generate(&sb, &bin(), &[], "systemd"));
    let doctor = || run_with(&sb, &bin(), &["doctor"], &[("XDG_CONFIG_HOME", Some(xdg.to_str().unwrap()))]);
    let out = doctor();
    assert!(warn_lines(&out.stdout).is_empty(), "~/.config is not read when XDG_CONFIG_HOME is set:\n{}", out.stdout);

    install(&xdg.join("systemd/user/homerd.service.d/override.conf"), "[Service]\nKillMode=control-group\n");
    let out = doctor();
    let warns = warn_lines(&out.stdout);
    assert_eq!(warns.len(), 1, "{}", out.stdout);
    assert!(warns[0].contains(&format!("{}: KillMode=control-group sends SIGTERM", unit.display())), "{}", warns[0]);
    assert_eq!(out.code, Some(1), "no daemon: the checks fail, as without the warning");
    assert!(out.stdout.ends_with("checks failed, 1 warning\n"), "{}", out.stdout);
}
