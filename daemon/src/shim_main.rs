//! `homerd-shim`: the job shim as a program of its own, installed beside `homerd` (see
//! `shim.rs` for what it does, `platform::job_shim_program` for how the daemon finds it).
//! Its command line is `homerd job-shim`'s, so either runs a held job the same way; this
//! one only links what the shim uses, so its `exec` — one per job — is cheaper.
//!
//! `no_main`: the C `main` below is the program's, without std's start-up around it —
//! which, on Linux, reads `/proc/self/maps` to place a guard page for the main thread's
//! stack, installs a stack-overflow handler on an alternate signal stack of its own and
//! polls the standard descriptors, every job paying for what the shim never needs (its
//! stack use is a few frames). std works without it: `args_os` reads what the C library
//! was given, `exit` flushes nothing the shim left buffered (it writes `eprintln!` only).
//! SIGPIPE keeps the disposition the daemon's spawn gave it (the default); the shim's
//! only writes are to its stderr, whose reader outlives it.
//!
//! Under `cargo test` the harness's own `main` runs (this binary has no tests; its code is
//! `shim.rs`'s, tested there): with this one, the test run would be a shim refusing its
//! command line.
#![cfg_attr(not(test), no_main)]

#[cfg(not(test))]
#[no_mangle]
extern "C" fn main(_argc: std::ffi::c_int, _argv: *const *const std::ffi::c_char) -> std::ffi::c_int {
    // Kept in the image for the daemon to find (`homerd::shim::MARK`): referenced, so the
    // linker cannot drop it.
    std::hint::black_box(homerd::shim::MARK);
    homerd::platform::name_job_shim();
    let code = homerd::shim::dispatch(std::env::args_os()).unwrap_or_else(|| {
        eprintln!("homerd-shim: started by the daemon for each job (`homerd-shim job-shim ...`); not for people");
        homerd::shim::EXIT_NOT_RELEASED
    });
    std::process::exit(code);
}
