fn main() {
    // A job's held start (`homerd job-shim`, once per job): before anything else.
    if let Some(code) = homerd::shim::dispatch(std::env::args_os()) {
        std::process::exit(code);
    }
    // First, before any SQLite connection opens: with HOMERD_POWERLOSS_LOG set, every
    // connection of the process must go through the recording VFS.
    homerd::powerloss::install_from_env();
    std::process::exit(homerd::cli::main());
}
