fn main() {
    std::process::exit(advlens::cli::main());
}
