//! `cargo xtask man`: builds `homerd` and has it write its man pages (clap_mangen, from the
//! same definitions as `--help`) into `target/man/man1`: `homerd.1` and `homerd-<command>.1`.

use std::path::PathBuf;
use std::process::Command;

use crate::{cargo, root, run};

pub fn man() -> Result<(), String> {
    run(cargo().args(["build", "--quiet", "-p", "homerd"]))?;
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"));
    let out = root().join("target/man/man1");
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    run(Command::new(target.join("debug/homerd")).arg("man-pages").arg(&out))?;
    let mut pages: Vec<String> = std::fs::read_dir(&out)
        .map_err(|e| format!("{}: {e}", out.display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    pages.sort();
    println!("{} pages in {}: {}", pages.len(), out.display(), pages.join(", "));
    println!("read one with `man -l {}/homerd.1`; install: copy them to ~/.local/share/man/man1", out.display());
    Ok(())
}
