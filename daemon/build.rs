//! Embeds `../migrations/NNN_name.sql` (SQLite) and `../migrations/postgres/NNN_name.sql`
//! (PostgreSQL) into the binary, each set in name order.
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../migrations");
    embed(&root, "migrations.rs");
    embed(&root.join("postgres"), "pg_migrations.rs");
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
