//! Embeds `../migrations/NNN_name.sql` (SQLite) and `../migrations/postgres/NNN_name.sql`
//! (PostgreSQL) into the binary, each set in name order; on Linux with glibc, links the
//! job shim (`homerd-shim`) statically where the toolchain can ([`static_job_shim`]).
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../migrations");
    embed(&root, "migrations.rs");
    embed(&root.join("postgres"), "pg_migrations.rs");
    static_job_shim();
}

/// Links `homerd-shim` as a static PIE on Linux/glibc, so the `exec` every job pays before
/// its own loads no shared library: measured here, a static shim's start costs what
/// `/bin/true`'s does, a dynamic one's about 0.3 ms more (the dynamic loader mapping and
/// relocating libc and libgcc_s). Only the shim: `homerd` itself stays dynamic (glibc's
/// NSS, which resolving a PostgreSQL host name uses, needs it).
///
/// Cargo passes a binary its own link arguments only *after* rustc's, and rustc names the
/// system libraries as shared ones (`-Bdynamic -lgcc_s -lutil -lrt -lpthread -lm -ldl
/// -lc`), so `-static-pie` alone links a broken program (shared libraries, no
/// interpreter). A directory searched before the system's, given to this binary alone,
/// holds a `lib<name>.so` for each of them as a linker script naming glibc's or libgcc's
/// static archive: those `-l`s then find the archives. glibc's own `libc.so` is such a
/// script too.
///
/// Done only when it is known to work: building for the machine it builds on (the
/// archives are the host compiler's), every archive found (`cc -print-file-name`; a
/// system without glibc's static archives, e.g. Fedora without `glibc-static`, has none),
/// and a probe linked with the same libraries the same way runs (a library the scripts
/// missed would leave it dynamic without an interpreter, and it would crash). Otherwise,
/// or with `HOMERD_SHIM_LINK=dynamic`, the shim is linked as before. The shim resolves no
/// user or host names (no NSS) and loads nothing.
fn static_job_shim() {
    println!("cargo:rerun-if-env-changed=HOMERD_SHIM_LINK");
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    if var("CARGO_CFG_TARGET_OS") != "linux"
        || var("CARGO_CFG_TARGET_ENV") != "gnu"
        || var("TARGET") != var("HOST")
        || var("HOMERD_SHIM_LINK") == "dynamic"
    {
        return;
    }
    let out = PathBuf::from(var("OUT_DIR"));
    let dir = out.join("static-shim");
    match static_link_dir(&dir) {
        Some(()) if probe_runs(&out, &dir) => {
            println!("cargo:rustc-link-arg-bin=homerd-shim=-static-pie");
            println!("cargo:rustc-link-arg-bin=homerd-shim=-L{}", dir.display());
        }
        _ => println!(
            "cargo:warning=homerd-shim is linked dynamically: no static glibc here (each job's start costs more)"
        ),
    }
}

/// The libraries rustc links a Linux/glibc program with, all named as shared ones.
const SYSTEM_LIBS: [&str; 7] = ["gcc_s", "util", "rt", "pthread", "m", "dl", "c"];

/// The C compiler rustc links with on Linux by default (it does not read `CC`).
fn cc() -> Command {
    Command::new("cc")
}

/// Writes the linker scripts into `dir`; `None` if an archive is missing.
fn static_link_dir(dir: &Path) -> Option<()> {
    let archive = |name: &str| -> Option<String> {
        let found = cc().arg(format!("-print-file-name={name}")).stderr(Stdio::null()).output().ok()?;
        let path = String::from_utf8(found.stdout).ok()?.trim().to_owned();
        // Not found, the compiler prints the bare name back.
        (Path::new(&path).is_absolute() && Path::new(&path).is_file()).then_some(path)
    };
    let (libgcc, libgcc_eh) = (archive("libgcc.a")?, archive("libgcc_eh.a")?);
    std::fs::create_dir_all(dir).ok()?;
    for name in SYSTEM_LIBS {
        let script = match name {
            // libgcc_s is the shared unwinder; statically it is libgcc_eh (with libgcc).
            "gcc_s" => format!("INPUT ( {libgcc_eh} {libgcc} )\n"),
            "c" => format!("GROUP ( {} {libgcc} {libgcc_eh} )\n", archive("libc.a")?),
            _ => format!("INPUT ( {} )\n", archive(&format!("lib{name}.a"))?),
        };
        std::fs::write(dir.join(format!("lib{name}.so")), script).ok()?;
    }
    Some(())
}

/// Links a small C program the way rustc links the shim (the system libraries asked for
/// as shared ones, the scripts' directory searched) and runs it.
fn probe_runs(out: &Path, dir: &Path) -> bool {
    let (source, program) = (out.join("static-shim-probe.c"), out.join("static-shim-probe"));
    if std::fs::write(&source, "#include <unistd.h>\nint main(void) { return getppid() > 0 ? 0 : 1; }\n").is_err() {
        return false;
    }
    let linked = cc()
        .arg(&source)
        .arg("-o")
        .arg(&program)
        .args(["-nodefaultlibs", "-static-pie", "-Wl,-Bdynamic"])
        .args(SYSTEM_LIBS.map(|name| format!("-l{name}")))
        .arg(format!("-L{}", dir.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    matches!(linked, Ok(s) if s.success()) && matches!(Command::new(&program).status(), Ok(s) if s.success())
}

fn embed(dir: &Path, file: &str) {
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("migrations directory")
        .map(|e| e.unwrap().file_name().into_string().expect("UTF-8 migration name"))
        .filter(|n| n.ends_with(".sql"))
        .collect();
    names.sort();
    let mut out =
        String::from("/// (file name, SQL) in application order.\npub static MIGRATIONS: &[(&str, &str)] = &[\n");
    for (i, name) in names.iter().enumerate() {
        let expected = format!("{:03}_", i + 1);
        assert!(
            name.starts_with(&expected),
            "migration {name} is out of sequence: expected a name starting {expected}"
        );
        let path = dir.join(name).canonicalize().unwrap();
        println!("cargo:rerun-if-changed={}", path.display());
        writeln!(out, "    ({name:?}, include_str!({:?})),", path.display().to_string()).unwrap();
    }
    out.push_str("];\n");
    let dest = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join(file);
    std::fs::write(dest, out).unwrap();
}
