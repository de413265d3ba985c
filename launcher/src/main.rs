//! `rankforge-launch`: see the library's documentation (`launcher/src/lib.rs`) and the README.

use clap::Parser;
use rankforge_launcher::node;
use rankforge_launcher::plan::{Args, Plan};

fn main() {
    let args = Args::parse();
    let code = match Plan::resolve(&args) {
        Err(e) => {
            eprintln!("rankforge-launch: error: {e:#}");
            rankforge_proto::EXIT_BAD_INPUT
        }
        Ok(plan) => {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
            // The node runs on this (main) thread: ranks are spawned from it, so their
            // parent-death signal fires only when the launcher itself exits.
            match rt.block_on(node::run(&args, plan)) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("rankforge-launch: error: {e:#}");
                    rankforge_launcher::exit_code_of(&e)
                }
            }
        }
    };
    std::process::exit(code);
}
