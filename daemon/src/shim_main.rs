//! `homerd-shim`: the job shim as a program of its own, installed beside `homerd` (see
//! `shim.rs` for what it does, `platform::job_shim_program` for how the daemon finds it).
//! Its command line is `homerd job-shim`'s, so either runs a held job the same way; this
//! one only links what the shim uses, so its `exec` — one per job — is cheaper.

fn main() {
    homerd::platform::name_job_shim();
    let code = homerd::shim::dispatch(std::env::args_os()).unwrap_or_else(|| {
        eprintln!("homerd-shim: started by the daemon for each job (`homerd-shim job-shim ...`); not for people");
        homerd::shim::EXIT_NOT_RELEASED
    });
    std::process::exit(code);
}
