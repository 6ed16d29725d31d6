fn main() {
    std::process::exit(homerd::cli::main());
}
