//! The `sds` binary: the command line (`cli`), the end-to-end demo (`demo`) and the
//! in-process load generator (`perf`), built on the `sds` library, which holds the server
//! itself.

mod cli;
mod demo;
mod perf;

fn main() {
    std::process::exit(cli::main());
}
