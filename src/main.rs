fn main() {
    std::process::exit(sds::cli::main());
}
