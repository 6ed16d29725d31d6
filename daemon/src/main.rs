fn main() {
    // First, before any SQLite connection opens: with HOMERD_POWERLOSS_LOG set, every
    // connection of the process must go through the recording VFS.
    homerd::powerloss::install_from_env();
    std::process::exit(homerd::cli::main());
}
